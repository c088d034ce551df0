"""Hyperparameter sweeps: the summary table, resumable sweeps, and the Hydra hooks for both.

How `expkit train -m optim=adam,adamw optim.lr=1e-3,3e-4` flows:

    commands/train.main -> prepare_args     sweep.resume=true without hydra.sweep.dir=...: pick the newest
                                      runs/multirun/... sweep whose sweep.json has the same overrides
    SweepCallback.on_multirun_start   main process: sweep.json (command, overrides, planned jobs)
    commands/train.hydra_task -> run_job         each job, in this process or a launcher's worker (joblib, SLURM):
                                      train (or skip / resume, below); a failed job returns None so
                                      the sweep goes on; then write_summary()
    SweepCallback.on_multirun_end     main process: write_summary() once more and print the table
    commands/train.main -> exit_status      1 when any job did not complete, once every job has run

The summary is rewritten after every job, by whichever process ran it, so a sweep that is
still running or was killed has an up-to-date summary.md; jobs of a parallel launcher may
write at the same moment, which is why the main process writes it once more at the end
(that one is complete). Each write is a temp file + rename: a reader never sees half a table.
Everything is read back from the job folders (meta.json, metrics.json, .hydra/overrides.yaml),
so `expkit summary SWEEP_DIR` gives the same table for any sweep, finished or not.

Resume (`sweep.resume=true`): job folder names hold the job number and the overrides, and
sweep.resume is left out of them, so the second command's jobs land in the first one's
folders. Per job: completed -> skipped untouched (it returns its recorded metric);
interrupted, failed or crashed with a checkpoint -> continued in the same folder by
expkit.resume; no checkpoint -> trained again from scratch (the earlier attempt's status and
error are kept in meta.json under `restarts`); no folder -> trained. Hydra would rewrite a
job's .hydra/ before the job starts; the `expkit_hydra_subdir` resolver (hydra.output_subdir
in conf/config.yaml) turns that off for folders an earlier attempt made.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from expkit.config.resolvers import truthy
from expkit.errors import ConfigError, RunFailed
from expkit.run.folder import FolderLock, RunDir, now, read_json, read_yaml, write_atomic
from expkit.run.provenance import command_line
from expkit.summary import (
    MULTIRUN_ROOT,
    SUMMARY_CSV,
    SUMMARY_MD,
    SWEEP_FILE,
    asks_to_resume,
    same_job_overrides,
    write_summary,
)
from expkit.training import dist

_last: dict[str, Any] | None = None  # the main process's last finished sweep, for the exit status


# ------------------------------------------------------------- finding a sweep to resume
def prepare_args(args: list[str]) -> list[str]:
    """`expkit train -m ... sweep.resume=true` without hydra.sweep.dir=...: continue the newest
    sweep under runs/multirun/ that ran the same overrides (in the same order); without one,
    start a new sweep (every job is missing, so that is what resuming means)."""
    from expkit.config.compose import hydra_overrides, is_multirun

    if not is_multirun(args) or not asks_to_resume(args):
        return args
    wanted = same_job_overrides(hydra_overrides(args))
    given = [a.split("=", 1)[1].strip("'\"") for a in args
             if a.lstrip("+").startswith("hydra.sweep.dir=")]
    if given:
        info = read_json(Path(given[-1]) / SWEEP_FILE)
        recorded = same_job_overrides([str(o) for o in info.get("overrides") or []]) if info else None
        if recorded is not None and recorded != wanted:
            raise ConfigError(f"hydra.sweep.dir: {given[-1]!r} holds another sweep (its overrides: "
                              f"{' '.join(recorded) or 'none'}); sweep.resume=true continues a sweep with the same "
                              "overrides, in the same order. Give this sweep its own hydra.sweep.dir.")
        return args
    found = find_resumable(wanted)
    if found is None:
        print(f"expkit: sweep.resume: no sweep under {MULTIRUN_ROOT}/ ran these overrides; starting a new one.",
              file=sys.stderr)
        return args
    print(f"expkit: sweep.resume: continuing the sweep in {found}", file=sys.stderr)
    plain = all(c.isalnum() or c in "/._-:" for c in str(found))
    return [*args, f"hydra.sweep.dir={found}" if plain else f"hydra.sweep.dir='{found}'"]


def find_resumable(overrides: list[str], root: Path = MULTIRUN_ROOT) -> Path | None:
    """The newest sweep folder under root whose sweep.json records these overrides."""
    matches = []
    for record in root.glob(f"*/*/{SWEEP_FILE}"):
        info = read_json(record)
        if same_job_overrides(info.get("overrides", [])) == overrides:
            matches.append((info.get("started", ""), str(record.parent)))
    return Path(max(matches)[1]) if matches else None


# ------------------------------------------------------------------ Hydra's hooks
class SweepCallback(Callback):
    """Registered under hydra.callbacks in conf/config.yaml; only the multirun hooks act."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        sweep_dir = Path(str(config.hydra.sweep.dir))  # claims the folder; the sweeper gets the same one
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        sweeper = str(config.hydra.sweeper.get("_target_", ""))
        attempt = {"started": now(), "command": command_line(), "pid": os.getpid(), "host": socket.gethostname(),
                   "sweep_resume": truthy(config.get("sweep", {}).get("resume"))}
        record = read_json(sweep_dir / SWEEP_FILE) or {
            "overrides": overrides, "started": attempt["started"], "attempts": []}
        record.update(
            metric=str(config.get("sweep", {}).get("metric", "val/acc")), sweeper=sweeper,
            launcher=str(config.hydra.launcher.get("_target_", "")), planned=planned_jobs(config, overrides),
            attempts=[*record.get("attempts", []), attempt], pid=attempt["pid"], host=attempt["host"])
        write_atomic(sweep_dir / SWEEP_FILE, json.dumps(record, indent=2) + "\n")

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        global _last
        summary = write_summary(Path(str(config.hydra.sweep.dir)))
        print("\n" + summary.markdown(), end="")
        print(f"summary: {summary.path / SUMMARY_MD} and {SUMMARY_CSV}")
        print(sweep_next_steps(summary.path))  # the jobs leave this out: said once, here
        _last = summary.counts()


def sweep_next_steps(sweep_dir: Path) -> str:
    """The sweep's closing line: its jobs in `expkit runs`, its table again, its curves."""
    from expkit.training.logs import program, shell_path

    where, expkit = shell_path(sweep_dir), program("expkit")
    return f"next: {expkit} runs {where}; {expkit} summary {where}; {program('tensorboard')} --logdir {where}"


def planned_jobs(config, overrides: list[str]) -> int | list[list[str]] | None:
    """Every job's overrides for Hydra's grid sweeper, the trial count for Optuna's; so the
    summary of a sweep still running can list the jobs not started yet."""
    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if target.endswith("BasicSweeper"):
        try:
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.override_parser.overrides_parser import OverridesParser

            params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
            parsed = OverridesParser.create().parse_overrides(params + overrides)
            return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        except Exception:  # e.g. glob() sweeps need the config loader; the summary just lacks pending rows
            return None
    return int(sweeper["n_trials"]) if "n_trials" in sweeper else None


def exit_status() -> int:
    """What `expkit train -m` exits with: 1 when a job failed (after all jobs ran), else 0."""
    if _last and (_last["total"] - _last["completed"]) > 0:
        return 1
    return 0


def stopped(sweep_dir: Path) -> None:
    """A signal stopped the sweep: its summary says so (jobs not started are not pending)."""
    try:
        write_summary(Path(sweep_dir), stopped=True)
    except OSError as e:
        print(f"expkit: could not write the sweep summary: {e}", file=sys.stderr)


# ------------------------------------------------------------------------ one job
def run_job(cfg, run_dir: Path, overrides: list[str], sweep_dir: Path) -> float | None:
    """One job of a multirun (called by commands/train.py's hydra_task): its sweep.metric, or None when it
    failed or the metric is NaN. None, not NaN: hydra-optuna-sweeper 1.3 (optuna 2.x) stops the
    whole search on a NaN (it tells Optuna FAIL with the NaN still attached), while for None it
    records a FAIL trial and goes on; Hydra's grid sweeper ignores what jobs return."""
    from expkit.app import execute

    metric = str(cfg.get("sweep", {}).get("metric", "val/acc"))
    print(f"--- job {run_dir.name}", flush=True)
    try:
        if RunDir(run_dir).is_run():
            if truthy(cfg.get("sweep", {}).get("resume")):
                return _resume_job(cfg, run_dir, overrides, metric)
            print(f"expkit: {run_dir} holds a run already; left as it is (continue the sweep with "
                  "sweep.resume=true, or give it its own hydra.sweep.dir)", file=sys.stderr)
            return None
        share_cores(cfg)
        return _value(execute(cfg, run_dir, overrides, discard_on_bad_input=False), metric)
    except RunFailed as e:
        print(f"expkit: {e}", file=sys.stderr)
        if e.exit_code >= 128:  # a stop signal (Ctrl-C, SIGTERM, SLURM's warning) stops the whole sweep
            raise SystemExit(e.exit_code) from None
        return None  # one bad job is marked failed in the summary; the sweep goes on
    finally:
        try:
            write_summary(sweep_dir)
        except OSError as e:  # a summary must never fail a job
            print(f"expkit: could not write the sweep summary: {e}", file=sys.stderr)


def _resume_job(cfg, run_dir: Path, overrides: list[str], metric: str) -> float | None:
    from expkit.app import execute
    from expkit.resuming import resume

    rundir = RunDir(run_dir)
    meta = rundir.read_meta()
    recorded = meta.get("overrides") or _hydra_overrides(run_dir)
    if same_job_overrides(recorded) != same_job_overrides(overrides):
        print(f"expkit: sweep.resume: {run_dir} holds a job with other overrides ({' '.join(recorded)}); "
              "left as it is. Give this sweep its own hydra.sweep.dir.", file=sys.stderr)
        return None
    status = meta.get("status")
    if status == "completed":
        print("expkit: sweep.resume: completed earlier; skipped", flush=True)
        return _value(rundir.read_metrics(), metric)
    from expkit.run.checkpoint import has_any

    if has_any(rundir.checkpoints):
        print(f"expkit: sweep.resume: was {status}; continuing it from its checkpoint", flush=True)
        try:
            return _value(resume(run_dir, []), metric)  # a failed or stopped resume raises RunFailed
        except ConfigError as e:
            print(f"expkit: sweep.resume: {run_dir}: {e}", file=sys.stderr)
            return None
    # No checkpoint to continue from: train again from scratch in the same folder.
    print(f"expkit: sweep.resume: was {status} without a checkpoint; training it again", flush=True)
    lock = FolderLock(run_dir)  # never empty a folder another process still writes
    try:
        lock.acquire()
    except ConfigError as e:
        print(f"expkit: sweep.resume: {e}", file=sys.stderr)
        return None
    try:
        rundir.restart()
    finally:
        lock.release()
    share_cores(cfg)
    return _value(execute(cfg, run_dir, overrides, discard_on_bad_input=False), metric)


def _value(metrics: dict[str, Any], metric: str) -> float | None:
    value = metrics.get(metric)
    return None if not isinstance(value, (int, float)) or math.isnan(value) else float(value)


def share_cores(cfg) -> None:
    """Jobs of hydra/launcher=joblib run side by side: unless trainer.num_threads is set, each
    gets its share of the cores instead of all of them (recorded in its config.yaml)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    hc = HydraConfig.get()
    if "joblib" not in str(hc.launcher.get("_target_", "")) or cfg.trainer.get("num_threads"):
        return
    # Not OMP_NUM_THREADS: joblib sets it in its workers to cores / n_jobs, blind to how many
    # jobs the sweep has; a 2-job sweep with n_jobs=-1 on 16 cores should get 8 threads a job.
    cores = dist.usable_cores()
    n_jobs = int(hc.launcher.get("n_jobs") or -1)
    parallel = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 = every core, -2 = all but one
    planned = read_json(Path(hc.sweep.dir) / SWEEP_FILE).get("planned")
    if isinstance(planned, list) and planned:
        parallel = min(parallel, len(planned))
    with open_dict(cfg):
        cfg.trainer.num_threads = max(1, cores // max(1, parallel))


def _hydra_overrides(run_dir: Path) -> list[str]:
    return [str(o) for o in read_yaml(RunDir(run_dir).hydra_overrides) or []]


