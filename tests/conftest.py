"""Shared helpers: the real CLI in a subprocess, run folders, TensorBoard events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXPKIT = str(Path(sys.executable).parent / "expkit")

# Under pytest-xdist (`make test` runs two workers) two trainings share the cores: one torch
# thread each, as OMP_NUM_THREADS asks of torch and of expkit's default trainer.num_threads.
# Tests of the default thread count unset it for their run (run_cli's `unset`).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The end-to-end tier: modules whose tests start real expkit processes (training, DDP,
# sweeps, signals). Single such tests elsewhere carry @pytest.mark.e2e. `make test-fast`
# runs the rest (`-m "not e2e"`), the unit tier; `make test` runs both.
E2E_MODULES = {"test_bench", "test_cli", "test_ddp", "test_gpu", "test_lessons", "test_packaging", "test_plugin",
               "test_resume", "test_sweep", "test_switches", "test_tensorboard"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)


# Small and fast: a sample of the bundled digits, one or two epochs, no progress bar.
FAST = ["data.sample=128", "trainer.epochs=1", "trainer.progress=off", "trainer.graph=false"]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300,
            check: bool = False, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    for name in ("EXPKIT_TRACEBACK", *unset):
        full_env.pop(name, None)
    proc = subprocess.run([EXPKIT, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"expkit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_trainer(run_dir: Path, overrides: list[str]):
    """expkit's Trainer for `overrides`, built in this process as `expkit train` builds it."""
    from hydra import compose, initialize_config_module

    from expkit.config.compose import task_config
    from expkit.config.schema import validate
    from expkit.training.build import build

    with initialize_config_module("expkit.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    return build(validate(task_config(cfg)), run_dir, None)


def run_dirs(root: Path) -> list[Path]:
    """Run folders (those with a meta.json) under root/runs, oldest first."""
    runs = root / "runs"
    if not runs.exists():
        return []
    return sorted((p.parent for p in runs.rglob("meta.json")), key=lambda p: p.stat().st_mtime)


def only_run(root: Path) -> Path:
    found = run_dirs(root)
    assert len(found) == 1, f"expected one run folder, found {found}"
    return found[0]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in a run folder's event files, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                        "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A real git repository with one commit, made in a tmp dir."""
    return make_git_repo(tmp_path / "project")


def make_git_repo(repo: Path) -> Path:
    """`repo` made a git repository with one commit: notes.txt and a .gitignore of runs/."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "notes.txt").write_text("first\n")
    (repo / ".gitignore").write_text("runs/\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    return repo


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env=dict(os.environ, **GIT_ENV))
    return proc.stdout.strip()


def assert_strict_json(folder: Path) -> None:
    """Every JSON file under `folder` parses as strict JSON (no NaN or Infinity)."""
    def refuse(constant: str):
        raise AssertionError(f"non-strict JSON constant {constant}")

    for path in folder.rglob("*.json"):
        try:
            json.loads(path.read_text(), parse_constant=refuse)
        except AssertionError as e:
            raise AssertionError(f"{path}: {e}") from None
