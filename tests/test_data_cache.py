"""data.cache on real parts: PNG folders written here, the real decode path, maps built by
real processes at once, the map's resident pages read back from /proc, and a real resume
through the CLI."""

from __future__ import annotations

import multiprocessing
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, run_cli
from test_data import write_folder

from expkit.config.schema import FolderDataConfig
from expkit.data import build_data
from expkit.errors import ConfigError


def folder_cfg(root: Path, **kw) -> FolderDataConfig:
    opts = {"name": "folder", "root": str(root), "image_size": 12, "batch_size": 8, "num_workers": 0,
            "val_fraction": 0.2, **kw}
    return FolderDataConfig(**opts)


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    write_folder(root / "train", per_class=(30, 24, 26))
    write_folder(root / "test", per_class=(3, 3, 3))
    return root


def maps(root: Path) -> list[Path]:
    return sorted(p for p in root.parent.glob(f"{root.name}.expkit-cache/*.npy") if ".sha256" not in p.name)


def batches(data, split: str = "train", epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = getattr(data, split)
    loader.sampler.set_epoch(epoch)
    return list(loader.iterate())


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("channels,size,held", [(3, 12, "in memory"), (1, 12, "in memory"),
                                                 (3, 64, "streamed from the map")])
def test_cache_and_decode_paths_give_the_same_batches_bit_for_bit(images, channels, size, held):
    decoded = build_data(folder_cfg(images, channels=channels, image_size=size), seed=5)
    # 1 MiB holds the 89 images' floats at 12x12 (0.2 MiB), not at 64x64 (4.2 MiB)
    cached = build_data(folder_cfg(images, channels=channels, image_size=size, cache=True, max_memory=1), seed=5)
    assert cached.info["loader"] == "cache" and decoded.info["loader"] == "dataloader"
    assert cached.info["cache"] == held
    assert (cached.mean, cached.std, cached.info["sha256"]) == (decoded.mean, decoded.std, decoded.info["sha256"])
    assert cached.info["sizes"] == decoded.info["sizes"] == {"train": 64, "val": 16, "test": 9}
    state = torch.get_rng_state()
    for epoch in (0, 1):
        assert_same(batches(decoded, "train", epoch), batches(cached, "train", epoch))
    assert torch.equal(torch.get_rng_state(), state)  # neither path draws from the global RNG
    for split in ("val", "test"):
        assert_same(batches(decoded, split), batches(cached, split))
    # A resumed epoch starts at batch k with the batches it would have had.
    cached.train.sampler.set_epoch(1)
    assert_same(list(cached.train.iterate(start_batch=3)), batches(decoded, "train", 1)[3:])
    if held != "in memory":  # on an accelerator the bytes are scaled there, by the float ops the CPU's table holds
        loader = cached.train
        raw = torch.from_numpy(loader.images.take(loader.rows[:8].numpy()))
        assert torch.equal(loader.prepare(raw), loader._read(np.arange(8))[0])
    # The image grids' examples: the same, without augmentation.
    from expkit.training.tb import preview

    for a, b in zip(preview(decoded.train), preview(cached.train), strict=True):
        assert torch.equal(a, b)


def test_augmentation_on_the_cache_path_is_a_shifted_flipped_window_drawn_from_the_seed(images):
    plain = build_data(folder_cfg(images, cache=True), seed=1)
    augmented = build_data(folder_cfg(images, cache=True, augment=True), seed=1)
    torch.manual_seed(7)
    first = batches(augmented)
    torch.manual_seed(7)
    again = batches(augmented)
    assert_same(first, again)
    x_plain, x_aug = batches(plain)[0][0], first[0][0]
    assert x_aug.shape == x_plain.shape and not torch.equal(x_aug, x_plain)
    assert torch.equal(batches(augmented, "val")[0][0], batches(plain, "val")[0][0])  # val is never augmented


def test_the_map_is_reused_and_rebuilt_when_a_file_changes(images):
    build_data(folder_cfg(images, cache=True, test_fraction=0), seed=0)
    first = maps(images)
    assert [p.name.split("-")[0] for p in first] == ["images_test", "images_train"]
    stamp = [p.stat().st_mtime_ns for p in first]
    build_data(folder_cfg(images, cache=True), seed=0)
    assert maps(images) == first and [p.stat().st_mtime_ns for p in first] == stamp  # reused, not rewritten
    from PIL import Image

    changed = images / "train" / "cat" / "0.png"
    Image.fromarray(np.full((14, 20, 3), 200, np.uint8)).save(changed)
    cached = build_data(folder_cfg(images, cache=True), seed=0)
    now = maps(images)
    assert now[0] == first[0] and now[1] != first[1] and not first[1].exists()  # train rebuilt, old one gone
    assert_same(batches(build_data(folder_cfg(images), seed=0)), batches(cached))
    assert not [p for p in now[0].parent.iterdir() if p.name.endswith(".tmp")]


def _build_in_process(root: str, queue) -> None:
    try:
        torch.set_num_threads(1)
        data = build_data(folder_cfg(Path(root), cache=True, max_memory=1, image_size=64), seed=0)  # streamed
        queue.put((str(data.train.images.path), [x.sum().item() for x, _ in batches(data)]))
    except BaseException as e:  # said in the test, not a timeout
        queue.put(repr(e))


def test_a_run_folder_opened_again_reads_built_maps_and_writes_none(images, tmp_path):
    from expkit.data.sources import reading_only

    elsewhere = tmp_path / "their-cache"  # a received folder's data.cache_dir: made by nobody
    with reading_only():
        data = build_data(folder_cfg(images, cache=True, cache_dir=str(elsewhere)), seed=0)
    assert data.info["loader"] == "dataloader" and not elsewhere.exists()  # decoded, nothing made
    assert_same(batches(data), batches(build_data(folder_cfg(images), seed=0)))
    with reading_only(training=True), pytest.raises(ConfigError) as e:  # a resume: its own batches or none
        build_data(folder_cfg(images, cache=True, cache_dir=str(elsewhere)), seed=0)
    assert "no map of these images" in str(e.value) and "data.cache=true data.cache_dir=" in str(e.value)
    assert not elsewhere.exists()
    build_data(folder_cfg(images, cache=True), seed=0)  # a run that may write builds the maps
    built = {p: p.stat().st_mtime_ns for p in maps(images)[0].parent.iterdir()}
    with reading_only(training=True):
        again = build_data(folder_cfg(images, cache=True), seed=0)
    assert again.info["loader"] == "cache" and again.info["sha256"] == data.info["sha256"]
    assert {p: p.stat().st_mtime_ns for p in maps(images)[0].parent.iterdir()} == built  # read, not rewritten


def test_two_processes_building_the_same_map_at_once_share_one_complete_map(images):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(str(images), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert isinstance(results[0], tuple) and results[0] == results[1], results
    folder = images.parent / "images.expkit-cache"
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith("-lock")) == sorted(
        [m.name for m in maps(images)] + [m.name.replace(".npy", ".sha256.npy") for m in maps(images)])
    assert len(maps(images)) == 2  # train and test, each once


def resident_kib(path: Path) -> int:
    """This process's resident memory in the mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_a_map_larger_than_data_max_memory_is_read_without_being_mapped(tmp_path):
    root = tmp_path / "big"
    write_folder(root, classes=("a", "b"), per_class=(150, 150), size=(8, 8))
    # The map: 3.5 MiB; its floats 14 MiB, more than either cap, so both stream from the map.
    capped = build_data(folder_cfg(root, cache=True, image_size=64, max_memory=1), seed=0)
    path = capped.train.images.path
    assert path.stat().st_size > 3 * 2**20 and not capped.train.images.mapped
    assert_same(batches(build_data(folder_cfg(root, image_size=64), seed=0)), batches(capped))
    assert resident_kib(path) == 0  # no page of it in this process
    mapped = build_data(folder_cfg(root, cache=True, image_size=64, max_memory=4), seed=0)
    assert mapped.train.images.path == path and mapped.train.images.mapped
    batches(mapped)
    assert resident_kib(path) > 3 * 1024  # mapped, what was read stays in the process


def test_links_in_the_cache_are_refused_naming_the_key(images, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="data.cache_dir: .*link"):
        build_data(folder_cfg(images, cache=True, cache_dir=str(tmp_path / "link" / "cache")), seed=0)
    build_data(folder_cfg(images, cache=True), seed=0)
    target = maps(images)[1]
    os.replace(target, tmp_path / "moved.npy")
    target.symlink_to(tmp_path / "moved.npy")
    with pytest.raises(ConfigError, match="data.cache_dir: .*is a link or not a file"):
        build_data(folder_cfg(images, cache=True), seed=0)
    assert not list(elsewhere.iterdir())


def test_augmented_cache_training_resumed_mid_epoch_is_exact(tmp_path):
    """A real run stopped by trainer.max_steps in the middle of an epoch and resumed ends with
    the weights of the same run trained in one go, bit for bit: crops and flips included."""
    import torch as t

    root = tmp_path / "images"
    write_folder(root, per_class=(30, 24, 26))
    args = ["train", "data=folder", f"data.root={root}", "data.cache=true", "data.augment=true",
            "data.image_size=12", "data.batch_size=8", "model=cnn", "reg.dropout=0.2", "trainer.epochs=2",
            "trainer.num_threads=1", *FAST[2:]]
    runs = {}
    for name, extra in (("straight", []), ("cut", ["trainer.max_steps=11"])):
        cwd = tmp_path / name
        cwd.mkdir()
        run_cli([*args, *extra, f"name={name}"], cwd, check=True)
        (runs[name],) = cwd.glob(f"runs/*/*-{name}")
    assert "cache loader" in (runs["straight"] / "train.log").read_text()
    run_cli(["resume", str(runs["cut"]), "trainer.max_steps=null"], tmp_path / "cut", check=True)
    a, b = (t.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (runs["straight"], runs["cut"]))
    assert a["step"] == b["step"] > 11
    assert all(t.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_cpu_run_with_workers_measures_them_against_none_with_the_same_batches(images, caplog):
    """The first epoch's first batches are made in the training process, the next ones by the
    workers; the log says which was faster per batch (no timing asserted: that is the bench's)."""
    import logging

    cfg = folder_cfg(images, batch_size=2, val_fraction=0.1, test_fraction=0, num_workers=1)  # 36 batches
    with_workers = build_data(cfg, seed=2)
    with caplog.at_level(logging.INFO, logger="expkit"):
        probed = batches(with_workers)
    assert_same(probed, batches(build_data(folder_cfg(images, batch_size=2, val_fraction=0.1, test_fraction=0,
                                                      num_workers=0), seed=2)))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data.num_workers")]
    assert len(said) == 1 and "ms per training batch with data.num_workers=1 (batches 11-18" in said[0], said
    caplog.clear()
    assert_same(batches(with_workers), probed)  # later epochs: the workers alone, measured once
    assert not [r for r in caplog.records if r.getMessage().startswith("data.num_workers")]


def test_a_file_cut_off_after_its_header_is_refused_naming_it_and_leaves_no_map(images):
    broken = images / "train" / "dog" / "3.png"
    broken.write_bytes(broken.read_bytes()[:60])  # the header reads, the pixels do not
    with pytest.raises(ConfigError, match=r"data.root: .*dog/3.png could not be decoded"):
        build_data(folder_cfg(images, cache=True), seed=0)
    assert not [p for p in (images.parent / "images.expkit-cache").iterdir() if "train" in p.name and
                not p.name.endswith("-lock")]
