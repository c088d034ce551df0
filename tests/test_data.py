"""The data path on real parts: files in the real formats written here, the real loaders,
the real DataLoader. No mocks; new sources go through the real registry."""

from __future__ import annotations

import gzip
import logging
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from expkit.config.registry import DATASETS
from expkit.config.schema import DataConfig, FolderDataConfig, SyntheticDataConfig
from expkit.data import build_data
from expkit.data.loaders import EpochSampler, random_crop_flip
from expkit.data.sources import Source
from expkit.errors import ConfigError

# ------------------------------------------------------------------------ helpers


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """The IDX format: 0, 0, type code, number of dims, big-endian int32 dims, big-endian data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}[array.dtype]
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(root: Path, folder: str, n_train: int = 40, n_test: int = 12, gz: bool = False,
                seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3 % 10).astype(np.uint8),
    }
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        write_idx(raw / name, array, gz)
    return arrays


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(root: Path, per_batch: int = 6, n_test: int = 8, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        batches[name] = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in (np.arange(n) + i) % 10],
                         "filenames": [f"img_{i}_{j}.png" for j in range(n)]}
    batches["batches.meta"] = {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    for name, content in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return batches


def collect(loader, start_batch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader.iterate(start_batch), strict=True)
    return torch.cat(xs), torch.cat(ys)


def denormalize(x: torch.Tensor, data) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * torch.tensor(data.std).view(shape) + torch.tensor(data.mean).view(shape)


def rows(x: torch.Tensor) -> list[tuple[float, ...]]:
    return [tuple(r) for r in x.flatten(1).tolist()]


@pytest.fixture
def register_source():
    """Add a source through the real extension point; remove it afterwards."""
    added = []

    def add(name: str, make):
        DATASETS.register(name)(lambda cfg: make())
        added.append(name)

    yield add
    for name in added:
        DATASETS._builders.pop(name, None)


@pytest.fixture
def expkit_log(caplog):
    """The "expkit" logger may not propagate (the CLI sets it up so): listen on it directly."""
    logger = logging.getLogger("expkit")
    direct = not logger.propagate  # (when it propagates, caplog's handler on the root sees it already)
    if direct:
        logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="expkit"):
        yield caplog
    if direct:
        logger.removeHandler(caplog.handler)


# ------------------------------------------------------------------ real formats


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_family_reads_idx_files(tmp_path, name, folder, gz):
    import torchvision

    arrays = write_mnist(tmp_path, folder, gz=gz)
    cfg = DataConfig(name=name, root=str(tmp_path), download=False, val_fraction=0.25, batch_size=16)
    data = build_data(cfg, seed=0)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.classes == list(getattr(torchvision.datasets, folder).classes)
    assert data.info["sizes"] == {"train": 30, "val": 10, "test": 12}
    x, y = collect(data.train)
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    _, val_y = collect(data.val)
    labels = sorted(y.tolist() + val_y.tolist())
    assert labels == sorted(arrays["train-labels-idx1-ubyte"].tolist())
    # The test split, in file order: the pixels are the file's bytes / 255 (not transposed).
    test_x, test_y = collect(data.test)
    assert test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().div(255).unsqueeze(1)
    torch.testing.assert_close(denormalize(test_x, data), expected, atol=1e-5, rtol=0)


def test_cifar10_reads_pickled_batches(tmp_path):
    batches = write_cifar(tmp_path)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), download=False, val_fraction=0.2, batch_size=8)
    data = build_data(cfg, seed=0)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10 and data.classes == CIFAR_NAMES
    assert data.info["sizes"] == {"train": 24, "val": 6, "test": 8}
    x, y = collect(data.train)
    assert x.shape == (24, 3, 32, 32)
    _, val_y = collect(data.val)
    all_labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"]["labels"]]
    assert sorted(y.tolist() + val_y.tolist()) == sorted(all_labels)
    test_x, test_y = collect(data.test)
    assert test_y.tolist() == batches["test_batch"]["labels"]
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each 32 x 32 row-major.
    expected = torch.from_numpy(batches["test_batch"]["data"]).float().div(255).view(-1, 3, 32, 32)
    torch.testing.assert_close(denormalize(test_x, data), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,where,files", [
    ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    ("fashion_mnist", "FashionMNIST/raw", ["train-labels-idx1-ubyte"]),
    ("cifar10", "cifar-10-batches-py", ["data_batch_1", "test_batch", "batches.meta"]),
])
def test_missing_files_without_download_say_what_to_place_where(tmp_path, name, where, files):
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name=name, root=str(tmp_path), download=False), seed=0)
    message = str(e.value)
    assert repr(name) in message and str(tmp_path / where) in message
    for f in files:
        assert f in message
    assert "data.download=false" in message and f"data.root=DIR: they are then looked for in DIR/{where}" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_run_folder_opened_again_downloads_nothing(tmp_path, name):
    from expkit.data.sources import reading_only

    root = tmp_path / "their-root"  # a received folder's data.root, with data.download=true
    with reading_only(), pytest.raises(ConfigError) as e:
        build_data(DataConfig(name=name, root=str(root), download=True), seed=0)
    assert "opened again downloads and caches no data" in str(e.value) and "data.root=DIR" in str(e.value)
    assert not root.exists()


def test_only_the_missing_files_are_named(tmp_path):
    write_mnist(tmp_path, "MNIST", gz=True)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="mnist", root=str(tmp_path), download=False), seed=0)
    assert "files in" in str(e.value) and "t10k-labels-idx1-ubyte" in str(e.value)
    assert "train-images-idx3-ubyte" not in str(e.value)


@pytest.mark.parametrize("args,expected", [
    (["data=mnist", "data.root={tmp}/nowhere", "data.download=false"],
     ["train-images-idx3-ubyte", "{tmp}/nowhere/MNIST/raw"]),
    (["data=folder"], ["data.root: value None is not allowed for data=folder"]),
], ids=["mnist", "folder"])
def test_data_errors_through_the_cli_are_one_message_without_traceback(tmp_path, args, expected):
    proc = run_cli(["train", *(a.format(tmp=tmp_path) for a in args), "trainer.progress=off"], cwd=tmp_path,
                   timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout and "training failed" not in proc.stderr
    for e in expected:
        assert e.format(tmp=tmp_path) in proc.stderr, proc.stderr


def test_a_truncated_idx_file_is_a_config_error(tmp_path):
    write_mnist(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.*header says"):
        build_data(DataConfig(name="mnist", root=str(tmp_path), download=False), seed=0)


# --------------------------------------------------------------- folder, synthetic


def write_folder(root: Path, classes=("cat", "dog", "owl"), per_class=(7, 5, 6), size=(20, 14)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in zip(classes, per_class, strict=True):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


@pytest.mark.parametrize("channels", [3, 1])
def test_folder_tree_through_the_dataloader(tmp_path, channels):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "test", per_class=(2, 2, 2))
    cfg = FolderDataConfig(name="folder", root=str(tmp_path), image_size=12, channels=channels, batch_size=4,
                           num_workers=0, val_fraction=0.2, augment=True)
    data = build_data(cfg, seed=0)
    assert data.classes == ["cat", "dog", "owl"] and data.num_classes == 3
    assert data.input_shape == (channels, 12, 12) and len(data.mean) == channels
    assert data.info["sizes"] == {"train": 14, "val": 4, "test": 6}
    assert data.info["loader"] == "dataloader"
    batches = list(data.train.iterate())
    assert len(batches) == len(data.train) == 4
    for x, y in batches:
        assert x.shape[1:] == (channels, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    _, test_y = collect(data.test)
    assert test_y.tolist() == [0, 0, 1, 1, 2, 2]
    counts = data.info["class_counts"]
    assert [a + b for a, b in zip(counts["train"], counts["val"], strict=True)] == [7, 5, 6]
    # The training split without augmentation, for image grids: same every time, no RNG drawn.
    plain = data.train.preview_dataset
    state = torch.get_rng_state()
    first = torch.stack([plain[i][0] for i in range(len(plain))])
    assert torch.equal(torch.get_rng_state(), state) and len(plain) == 14
    assert torch.equal(first, torch.stack([plain[i][0] for i in range(len(plain))]))


def test_folder_files_without_an_image_extension_are_skipped_and_named(tmp_path, caplog):
    write_folder(tmp_path, per_class=(3, 3, 3))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0\1")
    cfg = FolderDataConfig(name="folder", root=str(tmp_path), image_size=8, num_workers=0, val_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="expkit"):
        data = build_data(cfg, seed=0)
    assert sum(data.info["sizes"].values()) == 9  # the nine images, the two other files left out
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 2 file(s) without an image extension" in skipped[0]
    assert "notes.txt" in skipped[0] and ".DS_Store" in skipped[0]


def test_folder_root_that_is_not_a_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.root: value .* is not a folder"):
        build_data(FolderDataConfig(name="folder", root=str(tmp_path / "missing")), seed=0)
    with pytest.raises(ConfigError, match="data.root: value None is not allowed"):
        build_data(FolderDataConfig(name="folder"), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no class folders"):
        build_data(FolderDataConfig(name="folder", root=str(tmp_path / "empty")), seed=0)


@pytest.mark.parametrize("shape", [[3, 8, 8], [5], [1, 4, 6]])
def test_synthetic_any_shape_and_class_count(shape):
    cfg = SyntheticDataConfig(name="synthetic", shape=shape, num_classes=4, size=90, batch_size=32)
    data = build_data(cfg, seed=0)
    assert data.input_shape == tuple(shape) and data.num_classes == 4 and len(data.mean) == shape[0]
    assert data.info["sizes"] == {"train": 90, "val": 10, "test": 25} and data.info["test_split"] == "generated"
    x, y = collect(data.train)
    assert x.shape == (90, *shape) and set(y.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("size", [1, 2, 3, 7, 10, 99, 2048])
@pytest.mark.parametrize("val_fraction", [0.01, 0.1, 0.5, 0.9])
def test_synthetic_size_is_the_exact_training_size(size, val_fraction):
    cfg = SyntheticDataConfig(name="synthetic", shape=[2], size=size, val_fraction=val_fraction)
    data = build_data(cfg, seed=0)
    assert data.info["sizes"]["train"] == size
    n_val = data.info["sizes"]["val"]
    assert n_val >= 1
    if size >= 99:
        assert abs(n_val / (size + n_val) - val_fraction) < 0.01


# -------------------------------------------------------- split, sample, checks


def test_split_is_the_same_across_builds_and_run_seeds_but_follows_split_seed():
    builds = [build_data(DataConfig(name="digits", val_fraction=0.2), seed=s) for s in (1, 1, 2)]
    vals = [collect(d.val)[0] for d in builds]
    trains = [collect(d.train)[0] for d in builds]
    assert torch.equal(vals[0], vals[1]) and torch.equal(vals[0], vals[2])
    assert torch.equal(trains[0], trains[1])  # same run seed: same order too
    assert not torch.equal(trains[0], trains[2])  # the run seed changes the order ...
    assert sorted(rows(trains[0])) == sorted(rows(trains[2]))  # ... not the examples
    other = build_data(DataConfig(name="digits", val_fraction=0.2, split_seed=1), seed=1)
    assert not torch.equal(collect(other.val)[0], vals[0])
    # The test split first (20% of 1797), then 20% of the rest for validation.
    assert builds[0].info["sizes"] == {"train": 1150, "val": 288, "test": 359}


def test_a_test_split_is_carved_first_and_never_seen_by_training_or_validation():
    builds = [build_data(DataConfig(name="digits", val_fraction=v), seed=s) for v, s in ((0.2, 0), (0.2, 3), (0.5, 0))]
    raw = [{split: set(rows(denormalize(collect(getattr(d, split))[0], d).mul(16).round()))
            for split in ("train", "val", "test")} for d in builds]
    assert builds[0].info["test_split"] == "carved" and builds[0].info["test_fraction"] == 0.2
    # The same test examples whatever the run's seed or val_fraction: it is carved before the train/val split.
    assert raw[0]["test"] == raw[1]["test"] == raw[2]["test"] and len(raw[0]["test"]) > 300
    for r in raw:
        assert not r["test"] & (r["train"] | r["val"])
    other = build_data(DataConfig(name="digits", split_seed=1), seed=0)
    assert set(rows(denormalize(collect(other.test)[0], other).mul(16).round())) != raw[0]["test"]
    none = build_data(DataConfig(name="digits", test_fraction=0.0), seed=0)
    assert none.test is None and none.info["sizes"] == {"train": 1617, "val": 180}
    assert none.info["test_split"] is None


def test_an_official_test_split_is_kept_and_stats_can_be_given(tmp_path):
    write_mnist(tmp_path, "MNIST")
    data = build_data(DataConfig(name="mnist", root=str(tmp_path), download=False), seed=0)
    assert data.info["test_split"] == "official" and data.info["test_fraction"] is None
    assert data.info["sizes"] == {"train": 36, "val": 4, "test": 12}
    given = build_data(DataConfig(name="mnist", root=str(tmp_path), download=False), seed=0, stats=([0.5], [0.25]))
    assert given.mean == [0.5] and given.std == [0.25]
    torch.testing.assert_close(collect(given.test)[0] * 0.25 + 0.5, denormalize(collect(data.test)[0], data))


def test_a_folder_without_test_gets_a_carved_test_split(tmp_path):
    write_folder(tmp_path, per_class=(10, 10, 10))
    cfg = FolderDataConfig(name="folder", root=str(tmp_path), image_size=8, batch_size=4, num_workers=0,
                           val_fraction=0.2)
    data = build_data(cfg, seed=0)
    assert data.info["sizes"] == {"train": 19, "val": 5, "test": 6} and data.info["test_split"] == "carved"
    used = [set(getattr(data, split).loader.dataset.indices) for split in ("train", "val", "test")]
    assert not (used[0] & used[2]) and not (used[1] & used[2]) and len(used[0] | used[1] | used[2]) == 30


def test_sample_mode_sizes_are_proportional_and_stable():
    full = build_data(DataConfig(name="digits", val_fraction=0.2), seed=0)
    n_train, n_val = full.info["sizes"]["train"], full.info["sizes"]["val"]
    samples = [build_data(DataConfig(name="digits", val_fraction=0.2, sample=100), seed=s) for s in (0, 5)]
    for d in samples:
        n_sample_val = round(100 * n_val / n_train)
        assert d.info["sizes"] == {"train": 100, "val": n_sample_val, "test": n_sample_val}
        assert d.info["mode"] == "sample 100" and len(d.train) == 2  # batch_size 64
    a, b = (collect(d.train)[0] for d in samples)
    assert sorted(rows(a)) == sorted(rows(b))
    assert torch.equal(collect(samples[0].val)[0], collect(samples[1].val)[0])
    # The sample is part of the full training split, never of its validation split.
    # (Each build normalizes with its own training statistics: compare raw pixels.)
    full_train = set(rows(denormalize(collect(full.train)[0], full).mul(16).round()))
    sample_rows = rows(denormalize(a, samples[0]).mul(16).round())
    assert set(sample_rows) <= full_train
    # A sample at least as big as the split is full mode's split.
    big = build_data(DataConfig(name="digits", val_fraction=0.2, sample=5000), seed=0)
    assert big.info["sizes"] == full.info["sizes"]


def test_digits_does_not_import_sklearn_datasets():
    code = ("import sys; import expkit.data.sources as s; from expkit.config.schema import DataConfig; "
            "src = s.load_digits(DataConfig()); "
            "assert tuple(src.train_x.shape) == (1797, 1, 8, 8), src.train_x.shape; "
            "assert sorted(set(src.train_y.tolist())) == list(range(10)); "
            "assert float(src.train_x.max()) == 1.0 and float(src.train_x.min()) == 0.0; "
            "assert 'sklearn.datasets' not in sys.modules and 'sklearn' not in sys.modules, 'sklearn imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_refuses_to_train_naming_the_data_set(register_source, bad):
    def make():
        x = torch.rand(20, 1, 4, 4)
        x[13, 0, 2, 1] = bad
        return Source(x, torch.arange(20) % 2, classes=["a", "b"], location="test")

    register_source("nan_test", make)
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="nan_test"), seed=0)
    assert "'nan_test'" in str(e.value) and "train" in str(e.value) and "index 13" in str(e.value)


def test_nan_in_a_float_idx_file_is_refused(tmp_path):
    arrays = write_mnist(tmp_path, "MNIST")
    floats = (arrays["t10k-images-idx3-ubyte"] / 255).astype(">f4")
    floats[3, 5, 5] = np.nan
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", floats, gz=False)
    with pytest.raises(ConfigError, match="'mnist' has NaN or Inf values in its test split"):
        build_data(DataConfig(name="mnist", root=str(tmp_path), download=False), seed=0)


def test_no_validation_split_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.val_fraction: value 0.0 leaves data set 'digits' without"):
        build_data(DataConfig(name="digits", val_fraction=0.0), seed=0)
    write_folder(tmp_path)
    with pytest.raises(ConfigError, match="data.val_fraction: value 0.0 leaves data set 'folder' without"):
        build_data(FolderDataConfig(name="folder", root=str(tmp_path), val_fraction=0.0), seed=0)


def test_labels_outside_the_classes_are_refused(register_source):
    register_source("label_test", lambda: Source(torch.rand(10, 3), torch.arange(10), classes=["a", "b"]))
    with pytest.raises(ConfigError, match="'label_test' has labels in \\[0, 9\\]"):
        build_data(DataConfig(name="label_test"), seed=0)


def test_missing_or_unbalanced_classes_warn(register_source, expkit_log):
    y = torch.tensor([0] * 200 + [1] * 10)  # class "c" missing, "a" 20x "b"
    register_source("unbalanced_test", lambda: Source(torch.rand(210, 4), y, classes=["a", "b", "c"]))
    data = build_data(DataConfig(name="unbalanced_test", val_fraction=0.1), seed=0)
    counts = data.info["class_counts"]
    assert [sum(c) for c in zip(counts["train"], counts["val"], counts["test"], strict=True)] == [200, 10, 0]
    warnings = [r.getMessage() for r in expkit_log.records if r.levelno == logging.WARNING]
    assert any("unbalanced_test" in w and "no example of class c" in w for w in warnings), warnings
    assert any("unbalanced_test" in w and "train split is badly unbalanced" in w for w in warnings), warnings
    assert len(warnings) == len(set(warnings))

    expkit_log.clear()
    build_data(DataConfig(name="digits"), seed=0)
    assert not [r for r in expkit_log.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------------------- distributed shards


def test_two_ranks_get_disjoint_shards_reshuffled_per_epoch():
    cfg = SyntheticDataConfig(name="synthetic", shape=[3], size=101, val_fraction=0.1, batch_size=8)
    full = build_data(cfg, seed=7)
    all_train = set(rows(collect(full.train)[0]))
    all_val = rows(collect(full.val)[0])
    assert len(all_train) == 101
    ranks = [build_data(cfg, seed=7, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0].train) == len(ranks[1].train)
    for epoch in (0, 1):
        shards = []
        for d in ranks:
            d.train.sampler.set_epoch(epoch)
            shards.append(rows(collect(d.train)[0]))
        assert len(shards[0]) == len(shards[1]) == 51  # 101 padded to 102
        assert set(shards[0]) | set(shards[1]) == all_train
        assert len(set(shards[0]) & set(shards[1])) <= 1  # only the padding repeats
        if epoch == 0:
            first = shards
    assert first[0] != shards[0] and first[1] != shards[1]
    # Validation shards: not padded, disjoint, and together exactly the validation split.
    val_shards = [rows(collect(d.val)[0]) for d in ranks]
    assert sorted(val_shards[0] + val_shards[1]) == sorted(all_val)


@pytest.mark.parametrize("n,world_size", [(10, 2), (11, 3), (1, 4), (3, 4), (0, 2)])
def test_epoch_sampler_shards(n, world_size):
    for epoch in range(3):
        shards = []
        for rank in range(world_size):
            s = EpochSampler(n, shuffle=True, seed=3, rank=rank, world_size=world_size)
            s.set_epoch(epoch)
            shards.append(s.indices().tolist())
            assert len(shards[-1]) == len(s)
        assert len({len(sh) for sh in shards}) == 1
        assert set().union(*map(set, shards)) == set(range(n))
        unpadded = [EpochSampler(n, False, 0, r, world_size, pad=False).indices().tolist() for r in range(world_size)]
        assert sorted(sum(unpadded, [])) == list(range(n))


# ------------------------------------------------------------ the two batching paths


@pytest.fixture(params=["digits", "cifar10"])
def image_cfg(request, tmp_path):
    if request.param == "cifar10":
        write_cifar(tmp_path)
        return dict(name="cifar10", root=str(tmp_path), download=False, batch_size=7)
    return dict(name="digits", batch_size=64, sample=300)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_both_paths_give_the_same_batches(image_cfg, augment, num_workers):
    fast = build_data(DataConfig(**image_cfg, augment=augment, loader="tensor"), seed=3)
    slow = build_data(DataConfig(**image_cfg, augment=augment, loader="dataloader", num_workers=num_workers),
                      seed=3)
    assert fast.info["loader"] == "tensor" and slow.info["loader"] == "dataloader"
    assert len(fast.train) == len(slow.train)
    for epoch in (0, 1):
        got = []
        for d in (fast, slow):
            d.train.sampler.set_epoch(epoch)
            torch.manual_seed(100 + epoch)
            got.append(list(d.train.iterate()) + [torch.rand(3)])  # and the RNG is left in the same state
        assert len(got[0]) == len(got[1])
        for a, b in zip(*got, strict=True):
            if isinstance(a, tuple):
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            else:
                assert torch.equal(a, b)
    # A resumed epoch starts at batch k on both paths, with the same batches as before.
    for d in (fast, slow):
        d.train.sampler.set_epoch(1)
    if not augment:
        tail = collect(fast.train, start_batch=2)
        assert torch.equal(tail[0], collect(slow.train, start_batch=2)[0])
        assert torch.equal(tail[0], collect(fast.train)[0][2 * fast.train.batch_size:])
    assert torch.equal(collect(fast.val)[0], collect(slow.val)[0])


def test_augmentation_is_for_training_only(tmp_path):
    write_cifar(tmp_path)
    common = dict(name="cifar10", root=str(tmp_path), download=False, batch_size=8)
    plain = build_data(DataConfig(**common), seed=0)
    aug = build_data(DataConfig(**common, augment=True), seed=0)
    torch.manual_seed(0)
    val_a = collect(aug.val)[0]
    torch.manual_seed(1)
    assert torch.equal(val_a, collect(aug.val)[0]) and torch.equal(val_a, collect(plain.val)[0])
    assert torch.equal(collect(aug.test)[0], collect(plain.test)[0])
    torch.manual_seed(0)
    x_aug = collect(aug.train)[0]
    x_plain = collect(plain.train)[0]
    assert x_aug.shape == x_plain.shape and not torch.equal(x_aug, x_plain)


@pytest.mark.parametrize("shape,flip", [((6, 3, 32, 32), True), ((5, 1, 8, 12), False), ((4, 2, 16, 16), False)])
def test_random_crop_flip_keeps_shape_and_is_a_shifted_window(shape, flip):
    torch.manual_seed(0)
    x = torch.rand(shape)
    out = random_crop_flip(x, flip=flip)
    assert out.shape == x.shape and out.dtype == x.dtype
    pad = max(1, shape[2] // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    h, w = shape[2:]
    for i in range(shape[0]):
        windows = [padded[i, :, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        candidates = windows + ([win.flip(2) for win in windows] if flip else [])
        assert any(torch.equal(out[i], c) for c in candidates), f"example {i} is no crop of its input"


def test_normalization_uses_training_statistics():
    cfg = SyntheticDataConfig(name="synthetic", shape=[3, 6, 6], size=500, batch_size=64)
    data = build_data(cfg, seed=0)
    x, _ = collect(data.train)
    dims = (0, 2, 3)
    torch.testing.assert_close(x.mean(dims), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dims, correction=0), torch.ones(3), atol=1e-4, rtol=0)
    assert len(data.mean) == len(data.std) == 3 and min(data.std) > 0
    # Features (F,) are normalized per feature.
    flat = build_data(SyntheticDataConfig(name="synthetic", shape=[4], size=300), seed=0)
    fx, _ = collect(flat.train)
    torch.testing.assert_close(fx.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(fx.std(0, correction=0), torch.ones(4), atol=1e-4, rtol=0)


# ------------------------------------------------------------ from the real conf/ files


def composed(overrides: list[str]):
    from hydra import compose, initialize_config_module

    from expkit.config.schema import validate

    with initialize_config_module("expkit.conf", version_base="1.3"):
        return validate(compose("config", overrides=overrides))


def test_every_data_choice_in_conf_composes_validates_and_builds(tmp_path):
    write_mnist(tmp_path, "MNIST", gz=True)
    write_mnist(tmp_path, "FashionMNIST")
    write_cifar(tmp_path)
    write_folder(tmp_path / "images")
    offline = [f"data.root={tmp_path}", "data.download=false"]
    cases = {
        "digits": ([], (1, 8, 8)),
        "mnist": (offline, (1, 28, 28)),
        "fashion_mnist": (offline, (1, 28, 28)),
        "cifar10": (offline, (3, 32, 32)),
        "folder": ([f"data.root={tmp_path / 'images'}", "data.num_workers=0"], (3, 32, 32)),
        "synthetic": ([], (1, 28, 28)),
    }
    for name, (overrides, shape) in cases.items():
        typed = composed([f"data={name}", *overrides])
        data = build_data(typed["data"], typed["seed"])
        assert data.input_shape == shape, name
        x, y = next(data.train.iterate())
        assert x.shape[1:] == shape and len(x) == len(y) > 0, name


def test_debug_preset_is_sample_mode():
    typed = composed(["+debug=fast"])
    data = build_data(typed["data"], typed["seed"])
    assert data.info["mode"] == "sample 256" and data.info["sizes"]["train"] == 256
    assert typed["trainer"].epochs == 1 and not typed["trainer"].checkpoint
