"""A stop signal in every phase of a run leaves a true record: the exit status 128+N of
the signal that ended it, and meta.json's status saying what happened. Real processes and
real signals; a harness pauses the run in the phase under test and says so in a file, so
the signal lands there and nowhere else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import FAST, assert_strict_json, read_json

# Pauses the real CLI in one phase (argv[1]) and writes argv[2] when it is there.
HARNESS = r"""
import os, sys, time, pathlib, threading
phase, marker = sys.argv[1], pathlib.Path(sys.argv[2])
import expkit.app as A
import expkit.run.checkpoint as C
import expkit.training.trainer as T

seen = []  # the signals expkit's handler was called for
held = []  # background_checkpoint: the step training was held at
_handler = A.StopSignals._handler
def handler(self, signum, frame):
    seen.append(signum)
    return _handler(self, signum, frame)
A.StopSignals._handler = handler

def hold():
    # Until the test's signal(s) arrived (a handler that raises ends the wait early).
    deadline = time.time() + 60
    while len(seen) < int(os.environ.get("WAIT_FOR_SIGNALS", "1")) and time.time() < deadline:
        time.sleep(0.02)

def pause(name):
    if name == phase and not marker.exists():
        marker.write_text(name)
        hold()

_build = A.build
def build(*args, **kwargs):
    pause("startup")
    return _build(*args, **kwargs)
A.build = build

_step = T.Trainer.train_step
def train_step(self, x, y):
    out = _step(self, x, y)
    if self.step == 3:
        pause("training")
    if phase == "background_checkpoint" and self.epoch == 1 and not held:
        # Epoch 2's first step: training went on while epoch 1's checkpoint is written. Wait for
        # that write to reach its pause (the marker), then for the signal, which lands here.
        held.append(self.step)
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.01)
        hold()
    return out
T.Trainer.train_step = train_step

_evaluate = T.Trainer.evaluate
def evaluate(self, loader, collect_errors=0):
    pause("last_validation" if self.epoch == self.t.epochs else "validation")
    return _evaluate(self, loader, collect_errors)
T.Trainer.evaluate = evaluate

_write = C.write
def write(*args, **kwargs):
    in_line = threading.current_thread() is threading.main_thread()
    pause("checkpoint" if in_line else "background_checkpoint")
    return _write(*args, **kwargs)
C.write = write

from expkit.cli import main
sys.exit(main(sys.argv[3:]))
"""
ARGS = [*FAST, "model=mlp", "model.width=32", "trainer.epochs=2", "trainer.log_every=1"]


def start(tmp_path: Path, phase: str, args: list[str], signals: int = 1) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / f"at-{phase}"
    env = {k: v for k, v in os.environ.items() if k != "EXPKIT_TRACEBACK"}
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, phase, str(marker), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(env, WAIT_FOR_SIGNALS=str(signals)))
    return proc, marker


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"never reached {path.name}"
        time.sleep(0.05)


def the_run(root: Path) -> Path:
    found = [p.parent for p in (root / "runs").rglob("meta.json")]
    assert len(found) == 1, found
    return found[0]


# (phase, signal, status in meta.json, a checkpoint exists afterwards)
CASES = [
    ("startup", "SIGTERM", "interrupted", False),
    ("startup", "SIGINT", "interrupted", False),
    ("training", "SIGTERM", "interrupted", True),
    ("training", "SIGUSR1", "interrupted", True),
    ("validation", "SIGINT", "interrupted", True),
    ("checkpoint", "SIGTERM", "interrupted", True),  # written in line: trainer.checkpoint_async=false
    ("background_checkpoint", "SIGTERM", "interrupted", True),
    ("last_validation", "SIGTERM", "completed", True),
    ("last_validation", "SIGUSR1", "completed", True),
]


def test_a_signal_in_every_phase_leaves_a_true_record(tmp_path):
    # All cases at once (each in its own folder), so the suite waits for torch's import once.
    procs = []
    for phase, name, status, has_checkpoint in CASES:
        cwd = tmp_path / f"{phase}-{name}"
        cwd.mkdir()
        in_line = ["trainer.checkpoint_async=false"] if phase == "checkpoint" else []
        procs.append((*start(cwd, phase, ["train", *ARGS, *in_line]), cwd, phase, name, status, has_checkpoint))
    for proc, marker, _, _, name, *_ in procs:
        wait_for(marker, proc)
        proc.send_signal(getattr(signal, name))
    for proc, _, cwd, phase, name, status, has_checkpoint in procs:
        out, err = proc.communicate(timeout=120)
        case = f"{phase} {name}: {err[-2000:]}"
        assert proc.returncode == 128 + getattr(signal, name), case
        assert "Traceback" not in err, case
        meta = read_json(the_run(cwd) / "meta.json")
        assert meta["status"] == status and meta["ended"], case
        assert meta["signal"] == name, case
        assert (the_run(cwd) / "checkpoints" / "last.pt").exists() == has_checkpoint, case
        if phase == "startup":
            assert meta["before_first_checkpoint"] is True, case
            resumed = subprocess.run([sys.executable, "-m", "expkit", "resume", str(the_run(cwd))], cwd=cwd,
                                     capture_output=True, text=True, timeout=120)
            assert resumed.returncode == 2 and "before its first checkpoint" in resumed.stderr, resumed.stderr
        assert_strict_json(the_run(cwd))


def test_a_second_signal_stops_at_once_with_its_own_status(tmp_path):
    proc, marker = start(tmp_path, "training", ["train", *ARGS], signals=2)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)  # the first: stop after this step, write a checkpoint...
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # ...the second, while the harness still holds the step: at once
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    meta = read_json(the_run(tmp_path) / "meta.json")
    assert meta["status"] == "interrupted" and meta["signal"] == "SIGINT"
    assert "second signal" in meta["note"] and "second signal" in err
    assert "Traceback" not in err


def test_a_signal_in_a_sweeps_last_validation_stops_the_sweep(tmp_path):
    proc, marker = start(tmp_path, "last_validation", ["train", "-m", *ARGS, "optim.lr=0.001,0.002"])
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    sweep = next((tmp_path / "runs" / "multirun").glob("*/*"))
    jobs = sorted(p.parent for p in sweep.rglob("meta.json"))
    assert len(jobs) == 1 and read_json(jobs[0] / "meta.json")["status"] == "completed"  # job 1 never ran
    summary = (sweep / "summary.md").read_text()
    assert "not started" in summary and "pending" not in summary, summary
