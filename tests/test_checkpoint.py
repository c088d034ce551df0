"""expkit.checkpoint: atomic writes, retention, verification, fallback, safe loading, and
SIGKILL at many points of a write (real forked writer processes, real SIGKILL)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from expkit.run.checkpoint import (
    FORMAT,
    BackgroundSaver,
    Checkpoint,
    CheckpointError,
    UnsafeCheckpoint,
    load_file,
    load_latest,
    numbered,
    save,
    to_bytes,
)
from expkit.run.provenance import sha256_file


def state(step: int, size: int = 1000) -> Checkpoint:
    return Checkpoint(model={"w": torch.full((size,), float(step))}, optimizer={"state": {}, "param_groups": []},
                      epoch=0, batch=step, step=step, rng={"torch": torch.get_rng_state()},
                      config={"model": {"width": 32}, "name": None}, best_acc=-float("inf"))


def write_steps(folder: Path, steps, best=(), keep_last: int = 2) -> None:
    for s in steps:
        save(folder, state(s), s in best, keep_last)


def test_save_writes_checksums_links_and_plain_data(tmp_path):
    folder = tmp_path / "checkpoints"
    write_steps(folder, [1, 2], best=[1])
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["best.pt", "best.pt.sha256", "last.pt", "last.pt.sha256", "step-000000001.pt",
                     "step-000000001.pt.sha256", "step-000000002.pt", "step-000000002.pt.sha256"]
    assert os.path.samefile(folder / "last.pt", folder / "step-000000002.pt")
    assert os.path.samefile(folder / "best.pt", folder / "step-000000001.pt")
    # Loadable with plain torch.load(weights_only=True), as the contract promises.
    loaded = torch.load(folder / "last.pt", weights_only=True)
    assert loaded["step"] == 2 and torch.equal(loaded["model"]["w"], state(2).model["w"])
    assert loaded["format"] == FORMAT
    assert load_file(folder / "best.pt").step == 1
    # Checkpoints skip the zip records' CRC-32s where torch can (torch.load never reads them;
    # the sidecar's SHA-256 is checked), but torch.save in the user's own code keeps them.
    if hasattr(torch.serialization, "get_crc32_options"):
        records = zipfile.ZipFile(folder / "last.pt").infolist()
        assert all(r.CRC == 0 for r in records if r.file_size)
        assert torch.serialization.get_crc32_options() is True


def write_raw(folder: Path, name: str, blob: dict) -> Path:
    """A file written by hand as another version of expkit would write it, with its checksum."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(blob, path)
    Path(f"{path}.sha256").write_text(sha256_file(path))
    return path


def test_a_checkpoint_of_a_newer_format_is_refused_saying_so(tmp_path):
    path = write_raw(tmp_path, "last.pt", dict(state(3).to_state(), format=FORMAT + 1))
    with pytest.raises(CheckpointError, match=rf"format {FORMAT + 1}, newer than this expkit reads .*upgrade"):
        load_file(path)


def test_a_checkpoint_from_before_the_format_version_still_loads(tmp_path):
    old = state(3).to_state()
    del old["format"], old["train_tally"]
    path = write_raw(tmp_path, "last.pt", dict(old, train_sums=[1.5, 3, 4]))
    loaded = load_file(path)
    assert loaded.format == 0 and loaded.step == 3 and loaded.path == path
    assert loaded.train_tally == {"terms": [1.5], "correct": 3, "count": 4}


def test_rng_state_restores_every_stream_also_from_an_older_checkpoints_list():
    import random

    import numpy as np

    from expkit.training.trainer import rng_state, set_rng_state

    def draws():
        return random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()), \
            float(torch.rand(1))

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    # Both keep the second of a pair of normals: the saved state holds a cached value.
    random.gauss(0, 1)
    np.random.randn()
    blob = to_bytes(Checkpoint(model={}, optimizer={}, epoch=0, batch=0, step=0, rng=rng_state()))
    saved = torch.load(io.BytesIO(blob), weights_only=True)["rng"]
    expected = draws()
    set_rng_state(saved)
    assert draws() == expected
    version, mt, gauss = saved["python"]
    set_rng_state(dict(saved, python=[version, mt.tolist(), gauss]))  # as checkpoints before held it
    assert draws() == expected


def test_keep_last_retention_keeps_only_k_numbered_plus_links(tmp_path):
    folder = tmp_path / "checkpoints"
    write_steps(folder, range(1, 8), best=[2], keep_last=3)
    assert [p.name for p in numbered(folder)] == ["step-000000007.pt", "step-000000006.pt", "step-000000005.pt"]
    sidecars = sorted(p.name for p in folder.glob("step-*.sha256"))
    assert sidecars == [f"{p.name}.sha256" for p in reversed(numbered(folder))]
    # best.pt is a hard link: its data outlives the numbered file it was made from.
    assert load_file(folder / "best.pt").step == 2
    assert load_file(folder / "last.pt").step == 7


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "no checksum"])
def test_damaged_newest_falls_back_with_a_warning_naming_it(tmp_path, caplog, damage):
    folder = tmp_path / "checkpoints"
    write_steps(folder, [1, 2])
    newest = folder / "step-000000002.pt"
    if damage == "truncated":
        os.truncate(newest, newest.stat().st_size // 2)
    elif damage == "bit-flipped":
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0x10
        newest.write_bytes(bytes(data))  # same inode: last.pt is damaged too
    else:
        Path(f"{newest}.sha256").unlink()
    problems: list[str] = []
    with caplog.at_level(logging.WARNING, logger="expkit"):
        loaded = load_latest(folder, problems=problems)
    assert loaded.step == 1 and loaded.path.name in ("step-000000001.pt", "last.pt")
    assert "step-000000002.pt" in caplog.text and "resuming from" in caplog.text
    assert problems and "step-000000002.pt" in problems[0]
    # Under torchrun every rank resumes; ranks other than 0 choose the same file silently.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="expkit"):
        assert load_latest(folder, warn=False).step == 1
    assert caplog.text == ""


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    folder = tmp_path / "checkpoints"
    write_steps(folder, [1, 2])
    for p in folder.glob("*.pt"):
        os.truncate(p, 10)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_latest(folder)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_latest(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_latest(tmp_path / "empty")


def test_a_file_that_is_not_an_expkit_checkpoint_is_skipped(tmp_path):
    folder = tmp_path / "checkpoints"
    write_steps(folder, [1])
    other = folder / "step-000000005.pt"
    torch.save({"weight": torch.zeros(3)}, other)  # a bare state_dict, with a valid checksum
    Path(f"{other}.sha256").write_text(sha256_file(other))
    assert load_latest(folder).step == 1


def test_background_saves_write_the_state_as_submitted_one_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPKIT_TEST_SLOW_WRITE", "0.05")  # a write of ~0.3 s: pauses between its steps
    folder, saver = tmp_path / "checkpoints", BackgroundSaver()
    first = state(1)
    saver.submit(folder, first, True, 2)
    assert saver.thread.is_alive()  # submit returned while the write goes on
    first.model["w"].fill_(99.0)  # training changes the weights in place meanwhile
    saver.submit(folder, state(2), False, 2)  # waits for the first: never two in flight
    assert load_file(folder / "best.pt").model["w"].eq(1.0).all()
    saver.wait()
    assert saver.thread is None and load_file(folder / "last.pt").step == 2
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_background_save_is_raised_on_the_training_thread(tmp_path):
    blocked = tmp_path / "checkpoints"
    blocked.write_text("a file where the folder should be")
    saver = BackgroundSaver()
    saver.submit(blocked, state(1), False, 2)
    with pytest.raises(OSError):
        saver.wait()
    saver.wait()  # raised once; the saver is usable again
    saver.submit(tmp_path / "elsewhere", state(2), False, 2)
    saver.wait()
    assert load_file(tmp_path / "elsewhere" / "last.pt").step == 2


def test_leftovers_of_a_killed_save_are_ignored_then_cleaned(tmp_path):
    folder = tmp_path / "checkpoints"
    write_steps(folder, [1])
    (folder / ".step-000000002.pt.tmp").write_bytes(b"half a checkpoint")
    (folder / "step-000000002.pt.sha256").write_text("0" * 64)  # its data never arrived
    (folder / ".last.pt.tmp").write_bytes(b"")
    assert load_latest(folder).step == 1
    write_steps(folder, [3])
    assert not list(folder.glob(".*.tmp")) and not (folder / "step-000000002.pt.sha256").exists()


def test_a_newer_damaged_file_never_makes_retention_delete_the_good_ones(tmp_path):
    folder = tmp_path / "checkpoints"
    write_steps(folder, [10, 20])
    os.truncate(folder / "step-000000020.pt", 5)
    assert load_latest(folder).step == 10  # a resume from 10 then saves 11, 12
    write_steps(folder, [11, 12])
    assert load_latest(folder).step == 12
    assert {p.name for p in numbered(folder)} >= {"step-000000011.pt", "step-000000012.pt"}


class Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "checkpoints"
    write_steps(folder, [1])  # an older good one must not be silently used instead
    marker = tmp_path / "pwned"
    evil = folder / "step-000000002.pt"
    torch.save(dict(state(2).to_state(), payload=Evil(marker)), evil)
    Path(f"{evil}.sha256").write_text(sha256_file(evil))  # the checksum matches
    with pytest.raises(UnsafeCheckpoint, match="would run code") as info:
        load_latest(folder)
    assert "system" in str(info.value)
    assert not marker.exists()


def test_every_scheduler_and_scaler_state_loads_with_weights_only(tmp_path):
    """Everything a Trainer checkpoints is plain data (no pickled objects)."""
    from omegaconf import OmegaConf

    from expkit.config.reference import composed_groups
    from expkit.training.sched import Schedule
    from expkit.training.trainer import rng_state

    model = torch.nn.Linear(2, 2)
    for name, values in composed_groups()[1]["sched"].items():  # every conf/sched choice as composed
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        schedule = Schedule(opt, OmegaConf.create(values), epochs=3, steps_per_epoch=4)
        opt.step()
        schedule.step_batch()
        schedule.step_epoch()
        blob = {"schedule": schedule.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
                "scaler": torch.amp.GradScaler("cpu").state_dict()}
        out = tmp_path / f"{name}.pt"
        torch.save(blob, out)
        torch.load(out, weights_only=True)


HARNESS = r"""
import json, os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from expkit.run import checkpoint

folder, points = Path(sys.argv[1]), int(sys.argv[2])
size = 150_000  # 600 kB: ten 64 KiB chunks, each followed by a sleep
os.environ["EXPKIT_TEST_SLOW_WRITE"] = "0.003"

def state(step):
    return checkpoint.Checkpoint(model={"w": torch.full((size,), float(step))}, optimizer={}, epoch=0, batch=step,
                                 step=step, rng={})

checkpoint.save(folder, state(1), True, 2)
started = time.perf_counter()
checkpoint.save(folder, state(2), False, 2)
duration = time.perf_counter() - started
complete, step, rounds = 2, 2, []
for i in range(points):
    step += 1
    pid = os.fork()
    if pid == 0:
        checkpoint.save(folder, state(step), step % 4 == 0, 2)
        os._exit(0)
    time.sleep(duration * 1.6 * (i + 0.5) / points)  # some kills land after the write is done
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    names = sorted(p.name for p in folder.iterdir())
    loaded = checkpoint.load_latest(folder)
    every_numbered_valid = True
    for p in checkpoint.numbered(folder):
        try:
            checkpoint.load_file(p)
        except checkpoint.CheckpointError:
            every_numbered_valid = False
    rounds.append({"step": step, "before": complete, "loaded": loaded.step, "path": loaded.path.name,
                   "right_data": bool(torch.equal(loaded.model["w"], state(loaded.step).model["w"])),
                   "tmp": [n for n in names if n.endswith(".tmp")], "every_numbered_valid": every_numbered_valid,
                   "numbered": len(checkpoint.numbered(folder))})
    complete = loaded.step
checkpoint.save(folder, state(step + 1), False, 2)  # a save that is not killed tidies up
final = sorted(p.name for p in folder.iterdir())
print(json.dumps({"duration": duration, "rounds": rounds, "final": final}))
"""


def test_sigkill_at_many_points_of_a_write_always_leaves_a_valid_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    points = 24
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPKIT_")}
    out = subprocess.run([sys.executable, "-c", HARNESS, str(folder), str(points)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rounds = result["rounds"]
    assert len(rounds) == points
    for r in rounds:
        # The new checkpoint if its write got far enough, else the previous complete one; never older.
        assert r["loaded"] in (r["step"], r["before"]), r
        assert r["right_data"] and r["every_numbered_valid"], r
    # The kills landed all over the write: some before it completed, some after, some
    # while a temporary file was half written (and was ignored).
    assert any(r["loaded"] == r["before"] for r in rounds)
    assert any(r["loaded"] == r["step"] for r in rounds)
    assert any(r["tmp"] for r in rounds)
    n = points + 3
    final = result["final"]
    numbered_left = [f for f in final if f.startswith("step-") and f.endswith(".pt")]
    assert len(numbered_left) == 2 and numbered_left[-1] == f"step-{n:09d}.pt", final
    assert sorted(final) == sorted(["best.pt", "best.pt.sha256", "last.pt", "last.pt.sha256"]
                                   + numbered_left + [f"{f}.sha256" for f in numbered_left]), final


def test_weights_are_checked_finite_before_a_checkpoint_even_when_their_sum_overflows(tmp_path):
    """The quick test (a finite sum) passes most checkpoints; a sum that overflows falls back
    to the exact test, so huge finite weights are still saved and one NaN still is not."""
    from conftest import build_trainer

    from expkit.training.trainer import NonFiniteLoss

    trainer = build_trainer(tmp_path, ["model=mlp", "model.depth=1", "data.sample=64", "trainer.progress=off",
                                       "trainer.graph=false", "trainer.tensorboard=false"])
    weight = trainer.weights[0][1]
    with torch.no_grad():
        weight[0, :2] = 3e38  # finite, but their sum is inf
    trainer.save_checkpoint(best=False, wait=True)
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    with torch.no_grad():
        weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="weights"):
        trainer.save_checkpoint(best=False, wait=True)
