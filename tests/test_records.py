"""Every run folder tells the truth: one writer per folder, a full disk, broken weights and
expkit's own output in the git tree never leave a record that says something false."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, assert_strict_json, git, read_json, run_cli

SMALL = [*FAST, "model=mlp", "model.width=32"]
# The real CLI, holding after training step 3 until it is signalled (the folder stays locked).
HOLD = r"""
import sys, time
marker = sys.argv[1]  # read now: `expkit train` hands sys.argv to Hydra
import expkit.training.trainer as T
_step = T.Trainer.train_step
def train_step(self, x, y):
    out = _step(self, x, y)
    if self.step == 3 and self.stop_signal is None:
        open(marker, "w").close()
        while self.stop_signal is None:
            time.sleep(0.02)
    return out
T.Trainer.train_step = train_step
from expkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def only_run(root: Path) -> Path:
    found = [p.parent for p in (root / "runs").rglob("meta.json")]
    assert len(found) == 1, found
    return found[0]


def test_one_writer_per_run_folder(tmp_path):
    marker = tmp_path / "training"
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(marker), "train", *SMALL, "trainer.epochs=2"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists():
        if writer.poll() is not None or time.time() > deadline:
            writer.kill()
            pytest.fail(f"the training never reached step 3: {writer.communicate()}")
        time.sleep(0.05)
    run = only_run(tmp_path)
    before = (run / "meta.json").read_text(), (run / "config.yaml").read_text()

    # While it trains: a resume and a second training into the same folder are refused.
    resume = run_cli(["resume", str(run), "trainer.epochs=3"], cwd=tmp_path)
    assert resume.returncode == 2 and f"pid {writer.pid}" in resume.stderr, resume.stderr
    into = run_cli(["train", *SMALL, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert into.returncode == 2 and "holds a run already" in into.stderr, into.stderr
    assert ((run / "meta.json").read_text(), (run / "config.yaml").read_text()) == before

    # SIGKILL: the kernel drops the lock with the process; the run can be resumed at once.
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=60)
    from expkit.runlist import list_runs

    [killed] = list_runs(tmp_path / "runs")  # meta.json still says running; its writer is gone
    assert killed["status"] == "crashed" and read_json(run / "meta.json")["status"] == "running"
    both = [subprocess.Popen([sys.executable, "-m", "expkit", "resume", str(run), "trainer.epochs=2"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in both)
    # Epoch 1 ended at step 2 with a checkpoint: exactly one resumes from it, the other is refused.
    assert codes == [0, 2], [p.communicate() for p in both]
    meta = read_json(run / "meta.json")
    assert len(meta.get("resumes", [])) == codes.count(0)


def test_training_into_an_existing_run_or_a_bad_folder_is_refused(tmp_path):
    run_cli(["train", *SMALL, "hydra.run.dir=runs/first"], cwd=tmp_path, check=True)
    before = (tmp_path / "runs" / "first" / "meta.json").read_text()
    (tmp_path / "a-file").write_text("x")
    cases = {"runs/first": "holds a run already", "a-file": "File exists", "a-file/below": "Not a directory"}
    for where, words in cases.items():
        proc = run_cli(["train", *SMALL, f"hydra.run.dir={where}"], cwd=tmp_path)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "runs" / "first" / "meta.json").read_text() == before


def test_more_cpu_processes_than_cores_are_refused_and_nothing_is_left(tmp_path):
    proc = run_cli(["train", *SMALL, "trainer.devices=64", "trainer.accelerator=cpu"], cwd=tmp_path)
    assert proc.returncode == 2 and "trainer.oversubscribe=true" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_non_finite_weights_are_never_saved_and_json_is_strict(tmp_path):
    proc = run_cli(["train", "data.sample=320", "trainer.epochs=3", "optim.lr=1e6", "trainer.progress=off",
                    "trainer.graph=false"], cwd=tmp_path)
    assert proc.returncode == 1 and "NaN or Inf" in proc.stderr, proc.stderr
    run = only_run(tmp_path)
    assert read_json(run / "meta.json")["status"] == "failed"
    # The weights broke in epoch 1 (step 5, its last): its checkpoint was never written.
    assert not list(run.rglob("step-*.pt")) and not list(run.rglob("last.pt"))
    assert_strict_json(run)


@pytest.fixture
def small_disk(tmpfs):
    return tmpfs("3m")


def test_disk_full_while_saving_fails_cleanly(tmp_path, small_disk):
    from expkit.run.checkpoint import load_latest

    run = small_disk / "run"
    proc = run_cli(["train", "model=resnet", "data.sample=128", "trainer.epochs=3", "trainer.progress=off",
                    "trainer.graph=false", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("expkit:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "MB" in lines[0], proc.stderr
    assert str(run / "checkpoints") in lines[0] and "Traceback" not in proc.stderr
    meta = read_json(run / "meta.json")
    assert meta["status"] == "failed" and "No space left" in meta["error"]
    names = [p.name for p in (run / "checkpoints").iterdir()]
    assert not [n for n in names if n.endswith(".tmp")], names
    assert all(n[: -len(".sha256")] in names for n in names if n.endswith(".sha256")), names  # no orphan
    assert load_latest(run / "checkpoints").step > 0  # the previous checkpoint is still valid


def test_runs_are_not_dirty_from_their_own_output(git_repo):
    (git_repo / ".gitignore").write_text("")  # a project that does not ignore runs/
    git(git_repo, "commit", "-qam", "ignore nothing")
    run_cli(["train", *SMALL, "name=one"], cwd=git_repo, check=True)
    run_cli(["train", *SMALL, "name=two"], cwd=git_repo, check=True)
    for run in (git_repo / "runs").glob("*/*"):
        meta = read_json(run / "meta.json")
        assert meta["git"]["dirty"] is False, meta["git"]
        assert "runs/ to .gitignore" in meta["git"]["note"]
        assert not (run / "git.diff").exists()
    (git_repo / "notes.txt").write_text("changed\n")  # a real change still counts
    run_cli(["train", *SMALL, "name=three"], cwd=git_repo, check=True)
    three = next((git_repo / "runs").glob("*/*-three"))
    assert read_json(three / "meta.json")["git"]["dirty"] is True
    assert "runs/" not in (three / "git.diff").read_text()
