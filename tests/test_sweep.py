"""Sweeps with the real `expkit train -m`: a job folder per job, the summary, failing jobs,
Optuna, the joblib launcher, a sweep killed and resumed, `expkit summary`."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAST, read_json, run_cli

SMALL = [*FAST, "model=mlp", "model.width=32"]

# The real CLI with a sleep after every training step, so a signal lands in the middle of a job.
SLOW_STEPS = r"""
import sys, time
import expkit.training.trainer as T
_step = T.Trainer.train_step
def train_step(self, x, y):
    out = _step(self, x, y)
    time.sleep(0.1)
    return out
T.Trainer.train_step = train_step
from expkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def only_sweep(root: Path) -> Path:
    found = sorted(p.parent for p in (root / "runs" / "multirun").glob("*/*/sweep.json"))
    assert len(found) == 1, f"expected one sweep folder, found {found}"
    return found[0]


def jobs(sweep: Path) -> list[Path]:
    """Job folders in job order."""
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir() or (p / "meta.json").exists()),
                  key=lambda p: int(p.name.split("_", 1)[0]))


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def table(markdown: str) -> list[list[str]]:
    """The body rows of the summary.md table, as cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def test_grid_gives_a_folder_per_job_and_a_sorted_summary(tmp_path):
    proc = run_cli(["train", "-m", *SMALL, "optim=adam,sgd", "optim.lr=0.01,0.05"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = only_sweep(tmp_path)
    folders = jobs(sweep)
    assert len(folders) == 4

    grid = {("adam", 0.01), ("adam", 0.05), ("sgd", 0.01), ("sgd", 0.05)}
    ran = set()
    for folder in folders:
        assert read_json(folder / "meta.json")["status"] == "completed"
        for name in ("config.yaml", ".hydra/overrides.yaml", "metrics.json", "train.log", "checkpoints/last.pt"):
            assert (folder / name).exists(), (folder, name)
        optim = yaml.safe_load((folder / "config.yaml").read_text())["optim"]
        ran.add((optim["name"], optim["lr"]))
        assert f"optim={optim['name']}" in folder.name and f"optim.lr={optim['lr']}" in folder.name
    assert ran == grid

    rows = summary_rows(sweep)
    assert {(r["optim"], float(r["optim.lr"])) for r in rows} == grid and len(rows) == 4
    for row in rows:
        metrics = read_json(sweep / row["folder"] / "metrics.json")
        assert row["status"] == "completed" and row["epoch"] == "1" and row["step"] == "2"
        assert float(row["val/acc"]) == metrics["val/acc"] and float(row["val/loss"]) == metrics["val/loss"]
        assert float(row["best/val/acc"]) == metrics["best/val/acc"]
        assert f"optim={row['optim']}" in row["overrides"] and "model.width=32" in row["overrides"]
    accs = [float(r["val/acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)

    md = (sweep / "summary.md").read_text()
    body = table(md)
    assert len(body) == 4 and [r[0] for r in body] == ["1", "2", "3", "4"]
    assert [(r[2], r[3]) for r in body] == [(r["optim"], r["optim.lr"]) for r in rows]
    assert "4 jobs: 4 completed" in md and "same in every job: " in md and "model.width=32" in md
    # The command as typed, one to run again: no run folder expkit claimed for it.
    typed = " ".join(["expkit", "train", "-m", *SMALL, "optim=adam,sgd", "optim.lr=0.01,0.05"])
    assert f"command: `{typed}`" in md, md
    assert md in proc.stdout  # the console shows the table at the end
    # A quiet console: a line for each job's config and model (their details are in train.log),
    # the table, and one closing line naming the next commands.
    lines = proc.stdout.splitlines()
    assert "arch: mlp" not in proc.stdout and "Linear" not in proc.stdout
    assert sum("] config: " in line for line in lines) == 4 and sum("] model: mlp" in line for line in lines) == 4
    assert len(lines) <= 4 * 11 + len(md.splitlines()) + 3, proc.stdout
    where = sweep.relative_to(tmp_path)
    assert [line for line in lines if "next: " in line] == [lines[-1]]
    assert f"expkit runs {where};" in lines[-1] and f"expkit summary {where};" in lines[-1]
    assert lines[-1].endswith(f"tensorboard --logdir {where}")

    again = run_cli(["summary", str(sweep)], cwd=tmp_path, check=True)
    assert again.stdout == md
    newest = run_cli(["summary"], cwd=tmp_path, check=True)  # the newest sweep under runs/multirun
    assert newest.stdout == md


def test_failed_jobs_are_marked_and_the_others_still_run(tmp_path):
    # optim.lr=1e12 without batchnorm: NaN loss; reg.dropout=1.5: a bad value in one combination.
    proc = run_cli(["train", "-m", *SMALL, "optim=sgd", "reg.batchnorm=false", "optim.lr=0.05,1e12",
                    "reg.dropout=0.1,1.5"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # after every job ran
    sweep = only_sweep(tmp_path)
    folders = jobs(sweep)
    assert len(folders) == 4  # a bad value still leaves its job folder, marked failed
    status = {f.name.split("_")[0]: read_json(f / "meta.json") for f in folders}
    assert status["0"]["status"] == "completed"
    assert status["1"]["status"] == "failed" and "reg.dropout: value 1.5" in status["1"]["error"]
    assert status["2"]["status"] == "failed" and "NaN" in status["2"]["error"]
    assert status["3"]["status"] == "failed"
    assert (folders[1] / ".hydra" / "overrides.yaml").exists()

    rows = summary_rows(sweep)
    assert [r["status"] for r in rows] == ["completed", "failed", "failed", "failed"]
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]  # failed ones last, in job order
    assert rows[1]["reg.dropout"] == "1.5" and "reg.dropout: value 1.5" in rows[1]["error"]
    assert rows[2]["optim.lr"] == "1000000000000.0" and "NaN" in rows[2]["error"]
    md = (sweep / "summary.md").read_text()
    assert "1 completed, 3 failed; exit status 1" in md
    assert "- job 2 failed: the training loss became NaN" in md
    assert [r[4] for r in table(md)] == ["completed", "failed", "failed", "failed"]


def test_optuna_search_ends_with_a_best_value(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_cli(["train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *SMALL], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = only_sweep(tmp_path)
    assert len(jobs(sweep)) == 3
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    rows = summary_rows(sweep)
    assert [r["status"] for r in rows] == ["completed"] * 3
    assert results["best_value"] == max(float(r["val/acc"]) for r in rows) == float(rows[0]["val/acc"])
    assert set(results["best_params"]) == {"optim.lr", "optim.weight_decay", "reg.dropout"}
    for row in rows:
        assert 1e-4 <= float(row["optim.lr"]) <= 1e-1 and float(row["reg.dropout"]) in (0, 0.1, 0.2, 0.3, 0.5)
    assert "optuna: best value" in (sweep / "summary.md").read_text()


def test_optuna_records_a_failed_trial_and_goes_on(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    conf = tmp_path / "myconf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /hydra/sweeper: optuna\n  - override /hydra/sweeper/sampler: grid\n"
        "hydra:\n  sweeper:\n    direction: maximize\n    n_trials: 3\n    n_jobs: 1\n"
        "    params:\n      optim.lr: choice(0.05, 0.1, 1e12)\n")
    proc = run_cli(["train", "-m", "--config-dir", "myconf", "hparams_search=tiny", *SMALL, "optim=sgd",
                    "reg.batchnorm=false"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # a job failed; the search still finished
    sweep = only_sweep(tmp_path)
    rows = summary_rows(sweep)
    assert sorted(r["status"] for r in rows) == ["completed", "completed", "failed"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["optim.lr"] in (0.05, 0.1)
    assert results["best_value"] == max(float(r["val/acc"]) for r in rows if r["status"] == "completed")


def test_joblib_runs_jobs_in_other_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = run_cli(["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL,
                    "optim.lr=0.01,0.05"], cwd=tmp_path, unset=("OMP_NUM_THREADS",))
    assert proc.returncode == 0, proc.stderr
    sweep = only_sweep(tmp_path)
    main_pid = read_json(sweep / "sweep.json")["pid"]
    folders = jobs(sweep)
    assert len(folders) == 2
    for folder in folders:
        assert read_json(folder / "meta.json")["status"] == "completed"
        assert "done: val/acc" in (folder / "train.log").read_text()
        # TensorBoard names its file after the process that wrote it: a worker, not the main process.
        (events,) = folder.glob("events.out.tfevents.*")
        assert int(events.name.split(".")[-2]) != main_pid
        # two jobs side by side share the cores instead of each taking all of them
        threads = yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["num_threads"]
        assert threads == max(1, len(os.sched_getaffinity(0)) // 2)
    rows = summary_rows(sweep)
    assert [r["status"] for r in rows] == ["completed"] * 2 and {r["optim.lr"] for r in rows} == {"0.01", "0.05"}
    assert "2 jobs: 2 completed" in proc.stdout


def test_slurm_launcher_example_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_cli(["train", "hydra/launcher=slurm", "--cfg", "hydra"], cwd=tmp_path, check=True)
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["max_num_timeout"] == 3 and launcher["tasks_per_node"] == 1


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize("sig,spelling", [("SIGTERM", "newest"), ("SIGKILL", "explicit")])
def test_killed_sweep_resumes_skipping_finished_jobs(tmp_path, sig, spelling):
    # job 0 finishes, job 1 is stopped after its first epoch (of 3), job 2 never starts
    sweep_args = ["-m", "data.sample=128", "trainer.epochs=3", "trainer.progress=off", "trainer.graph=false",
                  "model=mlp", "model.width=32", "optim.lr=0.01,0.02,0.03"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPKIT_")}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_STEPS, "train", *sweep_args], cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            # job 0 completed, job 1 has finished its first epoch (a checkpoint) and goes on
            while not list(tmp_path.glob("runs/multirun/*/*/1_*/checkpoints/last.pt")):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
                time.sleep(0.01)
            from expkit.summary import collect

            sweep = only_sweep(tmp_path)
            live = collect(sweep)  # the summary of a sweep still running
            assert sorted((r.job, r.status) for r in live.rows) == [(0, "completed"), (1, "running"), (2, "pending")]
            proc.send_signal(getattr(signal, sig))
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == (128 + 15 if sig == "SIGTERM" else -9), (tmp_path / "first.log").read_text()
    first, second = jobs(sweep)
    assert read_json(first / "meta.json")["status"] == "completed"
    assert read_json(second / "meta.json")["status"] == ("interrupted" if sig == "SIGTERM" else "running")

    shown = run_cli(["summary", str(sweep)], cwd=tmp_path, check=True).stdout
    stopped = "interrupted" if sig == "SIGTERM" else "crashed"  # SIGKILL: the process is gone, nothing recorded
    assert f"3 jobs: 1 completed, 1 {stopped}, 1 not started" in shown
    assert [r[3] for r in table(shown)] == ["completed", stopped, "not started"]

    before = mtimes(first)
    time.sleep(1.1)  # whole-second file times would hide a rewrite
    where = [] if spelling == "newest" else [f"hydra.sweep.dir={sweep}"]
    proc = run_cli(["train", *sweep_args, "sweep.resume=true", *where], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if spelling == "newest":
        assert f"continuing the sweep in {sweep.relative_to(tmp_path)}" in proc.stderr
    assert only_sweep(tmp_path) == sweep  # no new sweep folder
    assert mtimes(first) == before  # the finished job is untouched, .hydra/ included
    assert "completed earlier; skipped" in proc.stdout

    folders = jobs(sweep)
    assert len(folders) == 3
    for folder in folders:
        meta = read_json(folder / "meta.json")
        assert meta["status"] == "completed" and read_json(folder / "metrics.json")["epoch"] == 3
    resumed = read_json(second / "meta.json")["resumes"]
    assert len(resumed) == 1 and resumed[0]["epoch"] >= 1  # continued from its checkpoint, not from scratch
    rows = summary_rows(sweep)
    assert [r["status"] for r in rows] == ["completed"] * 3
    info = read_json(sweep / "sweep.json")
    assert len(info["attempts"]) == 2 and "sweep.resume=true" in info["attempts"][1]["command"]


def test_resume_without_an_earlier_sweep_starts_one(tmp_path):
    proc = run_cli(["train", "-m", *SMALL, "optim.lr=0.01", "sweep.resume=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no sweep under runs/multirun/ ran these overrides; starting a new one" in proc.stderr
    sweep = only_sweep(tmp_path)
    assert [r["status"] for r in summary_rows(sweep)] == ["completed"]
    # the job folder names leave sweep.resume out, so a later resume finds the same folders
    assert all("sweep.resume" not in f.name for f in jobs(sweep))


def test_summary_command_refuses_what_is_not_a_sweep(tmp_path):
    missing = run_cli(["summary", "nowhere"], cwd=tmp_path)
    assert missing.returncode == 2 and "'nowhere' is not a folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli(["summary", "empty"], cwd=tmp_path)
    assert empty.returncode == 2 and "holds no job folders" in empty.stderr
    none = run_cli(["summary"], cwd=tmp_path)
    assert none.returncode == 2 and "no sweep under runs/multirun/" in none.stderr


def test_a_job_stopped_before_it_recorded_anything_is_not_started_not_crashed(tmp_path):
    from expkit.summary import collect

    sweep = tmp_path / "sweep"
    (sweep / "0_optim.lr=0.1" / ".hydra").mkdir(parents=True)  # Hydra made it; the signal came first
    (sweep / "sweep.json").write_text('{"planned": [["optim.lr=0.1"], ["optim.lr=0.2"]], "attempts": []}')
    rows = collect(sweep, stopped=True).rows
    assert [(r.job, r.status) for r in rows] == [(0, "not started"), (1, "not started")]


def test_resume_into_a_folder_of_another_sweep_is_refused(tmp_path):
    first = run_cli(["train", "-m", *SMALL, "optim.lr=0.01,0.05", "hydra.sweep.dir=runs/multirun/one"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = sorted(p.name for p in (tmp_path / "runs" / "multirun" / "one").iterdir())
    other = run_cli(["train", "-m", *SMALL, "optim=adam,sgd", "sweep.resume=true", "hydra.sweep.dir=runs/multirun/one"],
                    cwd=tmp_path)
    assert other.returncode == 2 and "holds another sweep" in other.stderr and "optim.lr=0.01,0.05" in other.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "multirun" / "one").iterdir()) == before
    again = run_cli(["train", "-m", *SMALL, "optim.lr=0.01,0.05", "hydra.sweep.dir=runs/multirun/one"], cwd=tmp_path)
    md = (tmp_path / "runs" / "multirun" / "one" / "summary.md").read_text()
    assert again.returncode == 0 and "holds a run already" in again.stderr
    assert "run again 1 time(s) without sweep.resume" in md and "resumed" not in md, md
