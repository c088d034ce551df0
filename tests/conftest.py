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

# The end-to-end tier, in this one list and nowhere else (no @pytest.mark.e2e, no pytestmark):
# whole modules, or single tests as "module::test", that start real expkit processes or other
# slow real ones (torchrun, a Jupyter kernel, a wheel install, SIGKILLed writers). `make test-fast`
# runs the rest (`-m "not e2e"`), the unit tier; `make test` runs both. Every entry must name a
# test that exists, and run_cli refuses to start expkit inside a test the list leaves out, so
# the unit tier cannot grow an expkit process unnoticed.
E2E = {
    "test_bench::test_scaling_bench_reads_time_and_memory_of_a_whole_run",
    "test_bench::test_ddp_interleaved_bench_runs_under_torchrun",
    "test_afterwards::test_export_loads_with_plain_torch_and_gives_the_checkpoints_outputs",
    "test_checkpoint::test_sigkill_at_many_points_of_a_write_always_leaves_a_valid_checkpoint",
    "test_choices::test_expkit_sched_draws_the_schedule",
    "test_cli", "test_config_reference::test_train_help_shows_the_composed_defaults_per_choice",
    "test_data::test_data_errors_through_the_cli_are_one_message_without_traceback",
    "test_data::test_digits_does_not_import_sklearn_datasets", "test_ddp",
    "test_data_cache::test_augmented_cache_training_resumed_mid_epoch_is_exact",
    "test_docs::test_page_runs_as_shown", "test_gpu", "test_gpu_check", "test_lessons", "test_notebook",
    "test_own_code::test_cli_and_its_ddp_workers_import_from_the_current_directory", "test_packaging",
    "test_plugin", "test_records", "test_reproduce", "test_resume",
    *(f"test_hostile::test_{name}" for name in (
        "code_planted_in_a_received_folder_never_runs", "an_init_function_in_the_folder_never_runs",
        "a_recorded_cwd_is_never_where_code_is_looked_for", "own_code_that_changed_needs_the_flag",
        "own_code_without_a_recorded_hash_needs_the_flag", "no_write_goes_through_a_link_out_of_the_folder",
        "a_file_written_in_place_with_a_second_hard_link_is_not_written",
        "yaml_aliases_that_expand_without_bound_are_refused",
        "terminal_escapes_in_a_received_folder_are_printed_as_escapes",
        "a_record_with_fields_of_other_types_is_read_as_not_recording_them",
        "a_record_nested_deeper_than_the_parser_goes_is_unreadable",
        "a_checkpoint_of_another_run_is_refused_with_the_keys_named",
        "export_where_a_file_stands_for_its_folder",
        "random_bytes_with_a_matching_checksum_are_not_called_unsafe_code",
        "a_checkpoint_path_that_is_no_checkpoint",
        "untracked_records_cannot_write_outside_the_worktree_or_shadow_a_module",
        "sighup_stops_training_after_a_checkpoint", "overrides_may_come_before_the_config_dir",
        "data_or_a_model_that_does_not_fit_is_refused_before_training",
        "a_disk_that_fills_during_training_ends_the_run_as_failed",
        "a_file_size_limit_is_named_not_just_file_too_large",
        "sigterm_to_reproduce_ends_its_rerun_and_removes_the_worktree")),
    "test_loop_runs", "test_runs::test_runs_counts_only_the_time_a_real_resumed_run_trained",
    "test_runs::test_a_sigkilled_run_is_crashed_not_running", "test_signals", "test_sweep", "test_switches",
    "test_task_runs",
    "test_tensorboard",
}


def _e2e(item) -> bool:
    module = item.module.__name__.rpartition(".")[2]
    return module in E2E or f"{module}::{item.originalname}" in E2E


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).parent
    for entry in E2E:  # a renamed module or test must not drop out of the tier silently
        module, _, test = entry.partition("::")
        source = tests_dir / f"{module}.py"
        assert source.exists() and (not test or f"def {test}(" in source.read_text()), \
            f"tests/conftest.py E2E names {entry}, which does not exist"
    for item in items:
        if _e2e(item):
            item.add_marker(pytest.mark.e2e)


_IN_E2E_TEST = False  # set for the test being run: run_cli starts expkit only in e2e tests


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Before any fixture of the test is set up: a module-scoped fixture that trains a run for
    # the module's tests starts its expkit process here.
    global _IN_E2E_TEST
    _IN_E2E_TEST = item.get_closest_marker("e2e") is not None


def pytest_runtest_teardown(item):
    global _IN_E2E_TEST
    _IN_E2E_TEST = False


# Small and fast: a sample of the bundled digits, one or two epochs, no progress bar.
FAST = ["data.sample=128", "trainer.epochs=1", "trainer.progress=off", "trainer.graph=false"]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300,
            check: bool = False, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    assert _IN_E2E_TEST, "this test starts an expkit process: list it in tests/conftest.py E2E"
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
def tmpfs(tmp_path: Path):
    """tmpfs(size) -> a real tmpfs of that size (e.g. "3m") mounted in tmp_path, to fill up;
    the test is skipped where mounting is not allowed."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=True)


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
