"""Hyperparameter sweeps: the summary table, resumable sweeps, and the Hydra hooks for both.

How `expkit train -m optim=adam,adamw optim.lr=1e-3,3e-4` flows:

    cli.cmd_train -> prepare_args     sweep.resume=true without hydra.sweep.dir=...: pick the newest
                                      runs/multirun/... sweep whose sweep.json has the same overrides
    SweepCallback.on_multirun_start   main process: sweep.json (command, overrides, planned jobs)
    app.hydra_task -> run_job         each job, in this process or a launcher's worker (joblib, SLURM):
                                      train (or skip / resume, below); a failed job returns None so
                                      the sweep goes on; then write_summary()
    SweepCallback.on_multirun_end     main process: write_summary() once more and print the table
    cli.cmd_train -> exit_status      1 when any job did not complete, once every job has run

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

import csv
import datetime as dt
import io
import json
import math
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from expkit import dist

SWEEP_FILE = "sweep.json"
SUMMARY_MD, SUMMARY_CSV = "summary.md", "summary.csv"
MULTIRUN_ROOT = Path("runs/multirun")
METRIC_COLUMNS = ("val/acc", "val/loss", "best/val/acc")
FINISHED_BAD = ("failed", "interrupted", "crashed")

_last: dict[str, Any] | None = None  # the main process's last finished sweep, for the exit status


# ------------------------------------------------------------------ small pieces
def direction(metric: str) -> str:
    """Losses are minimized, everything else (accuracies) maximized; used to sort the
    summary and, through the `expkit_direction` resolver, as the Optuna direction."""
    return "minimize" if "loss" in str(metric).lower() else "maximize"


def hydra_subdir(output_dir: str, resume: Any) -> str | None:
    """hydra.output_subdir: `.hydra`, except for a job folder an earlier attempt of a resumed
    sweep made (it has a meta.json): Hydra must not rewrite that folder's files."""
    if truthy(resume) and output_dir and (Path(output_dir) / "meta.json").exists():
        return None
    return ".hydra"


def truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    # A per-process temp name: workers of a parallel launcher may write the same file at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _is_resume_flag(item: str) -> bool:
    return item.lstrip("+").split("=", 1)[0] == "sweep.resume"


def same_job_overrides(overrides: list[str]) -> list[str]:
    """Overrides that define the jobs: all but sweep.resume (and Hydra's own keys)."""
    return [o for o in overrides if not _is_resume_flag(o) and not o.startswith(("hydra.", "hydra/"))]


# ------------------------------------------------------------- finding a sweep to resume
def is_multirun(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args)


def prepare_args(args: list[str]) -> list[str]:
    """`expkit train -m ... sweep.resume=true` without hydra.sweep.dir=...: continue the newest
    sweep under runs/multirun/ that ran the same overrides (in the same order); without one,
    start a new sweep (every job is missing, so that is what resuming means)."""
    resume = [a for a in args if _is_resume_flag(a)]
    if not is_multirun(args) or not resume or not truthy(resume[-1].split("=", 1)[1]):
        return args
    if any(a.startswith(("hydra.sweep.dir=", "+hydra.sweep.dir=")) for a in args):
        return args
    wanted = same_job_overrides([a for a in args if not a.startswith("-") and "=" in a])
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
        info = _read_json(record)
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
        attempt = {"started": _now(), "command": sys.argv, "pid": os.getpid(), "host": socket.gethostname()}
        record = _read_json(sweep_dir / SWEEP_FILE) or {
            "overrides": overrides, "started": attempt["started"], "attempts": []}
        record.update(
            metric=str(config.get("sweep", {}).get("metric", "val/acc")), sweeper=sweeper,
            launcher=str(config.hydra.launcher.get("_target_", "")), planned=planned_jobs(config, overrides),
            attempts=[*record.get("attempts", []), attempt], pid=attempt["pid"], host=attempt["host"])
        _write_atomic(sweep_dir / SWEEP_FILE, json.dumps(record, indent=2) + "\n")

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        global _last
        summary = write_summary(Path(str(config.hydra.sweep.dir)))
        print("\n" + summary.markdown(), end="")
        print(f"summary: {summary.path / SUMMARY_MD} and {SUMMARY_CSV}")
        _last = summary.counts()


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


# ------------------------------------------------------------------------ one job
def run_job(cfg, run_dir: Path, overrides: list[str], sweep_dir: Path) -> float | None:
    """One job of a multirun (called by app.hydra_task): its sweep.metric, or None when it
    failed or the metric is NaN. None, not NaN: hydra-optuna-sweeper 1.3 (optuna 2.x) stops the
    whole search on a NaN (it tells Optuna FAIL with the NaN still attached), while for None it
    records a FAIL trial and goes on; Hydra's grid sweeper ignores what jobs return."""
    from expkit.app import RunFailed, execute

    metric = str(cfg.get("sweep", {}).get("metric", "val/acc"))
    print(f"--- job {run_dir.name}", flush=True)
    try:
        if truthy(cfg.get("sweep", {}).get("resume")) and (run_dir / "meta.json").exists():
            return _resume_job(cfg, run_dir, overrides, metric)
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
    from expkit.resume import resume
    from expkit.rundir import RunDir

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
        return _value(_read_json(run_dir / "metrics.json"), metric)
    if any((run_dir / "checkpoints").glob("*.pt")):
        print(f"expkit: sweep.resume: was {status}; continuing it from its checkpoint", flush=True)
        code = resume(str(run_dir), [])
        if code >= 128:
            raise SystemExit(code)
        return _value(_read_json(run_dir / "metrics.json"), metric) if code == 0 else None
    # No checkpoint to continue from: train again from scratch in the same folder.
    print(f"expkit: sweep.resume: was {status} without a checkpoint; training it again", flush=True)
    previous = {k: meta.get(k) for k in ("status", "started", "ended", "error") if meta.get(k) is not None}
    for child in run_dir.iterdir():
        if child.name != ".hydra":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    rundir.update_meta(restarts=[*meta.get("restarts", []), previous])
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
    planned = _read_json(Path(hc.sweep.dir) / SWEEP_FILE).get("planned")
    if isinstance(planned, list) and planned:
        parallel = min(parallel, len(planned))
    with open_dict(cfg):
        cfg.trainer.num_threads = max(1, cores // max(1, parallel))


def _hydra_overrides(run_dir: Path) -> list[str]:
    import yaml

    try:
        return [str(o) for o in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []]
    except (OSError, yaml.YAMLError):
        return []


# ------------------------------------------------------------------------ the summary
@dataclass
class Row:
    folder: str
    job: int | None
    status: str
    overrides: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    error: str = ""


@dataclass
class Summary:
    path: Path
    metric: str
    rows: list[Row]
    info: dict[str, Any]

    def counts(self) -> dict[str, int]:
        out = {"total": len(self.rows), "completed": 0}
        for row in self.rows:
            out[row.status] = out.get(row.status, 0) + 1
        return out

    def varying(self) -> list[str]:
        """The override keys whose values differ between jobs: the table's own columns."""
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row.overrides if k not in keys]
        return [k for k in keys if len({row.overrides.get(k) for row in self.rows}) > 1]

    def columns(self) -> list[str]:
        extra = [self.metric] if self.metric not in METRIC_COLUMNS else []
        return [*METRIC_COLUMNS, *extra]

    def headline(self) -> str:
        counts = self.counts()
        order = ("completed", *FINISHED_BAD, "running", "pending", "not started")
        parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
        planned = self.info.get("planned")
        of = f" of {planned} planned" if isinstance(planned, int) and planned != counts["total"] else ""
        line = f"{counts['total']} jobs{of}: {', '.join(parts) or 'none yet'}"
        if any(counts.get(s) for s in FINISHED_BAD) and not any(counts.get(s) for s in order[4:]):
            line += "; exit status 1 (a job did not complete)"
        return line

    def markdown(self) -> str:
        keys, cols = self.varying(), self.columns()
        higher = direction(self.metric) == "maximize"
        lines = [f"# Sweep {self.path}", ""]
        attempts = self.info.get("attempts") or [{}]
        if attempts[-1].get("command"):
            lines.append(f"command: `expkit train {' '.join(attempts[-1]['command'][1:])}`  ")
        if len(attempts) > 1:
            lines.append(f"resumed {len(attempts) - 1} time(s) (sweep.resume=true)  ")
        lines.append(f"sorted by {self.metric} ({'higher' if higher else 'lower'} is better); {self.headline()}  ")
        common = {k: v for k, v in (self.rows[0].overrides if self.rows else {}).items() if k not in keys}
        if common:
            lines.append("same in every job: " + " ".join(f"{k}={v}" for k, v in common.items()) + "  ")
        best = _optuna_best(self.path)
        if best:
            params = " ".join(f"{k}={_short(str(v))}" for k, v in (best.get("best_params") or {}).items())
            lines.append(f"optuna: best value {_num(best.get('best_value'))} with {params} "
                         "(optimization_results.yaml)  ")
        head = ["#", "job", *(keys or ["overrides"]), "status", *[c.replace("/", " ", 1) if c.startswith("best/")
                                                                  else c for c in cols], "epoch", "step", "time"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for rank, row in enumerate(self.rows, 1):
            shown = ([_short(row.overrides.get(k, "")) for k in keys] if keys
                     else [" ".join(_pairs(row.overrides)) or "-"])
            cells = [str(rank) if row.status == "completed" else "", _text(row.job), *shown, row.status,
                     *[_num(row.metrics.get(c)) for c in cols], _text(row.metrics.get("epoch")),
                     _text(row.metrics.get("step")), _duration(row.seconds)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        errors = [row for row in self.rows if row.error]
        if errors:
            lines += ["", *[f"- job {_text(row.job)} {row.status}: {row.error}" for row in errors]]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        keys, cols = self.varying(), self.columns()
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["job", *keys, "status", *cols, "epoch", "step", "seconds", "overrides", "folder", "error"])
        for row in self.rows:
            writer.writerow([_text(row.job), *[row.overrides.get(k, "") for k in keys], row.status,
                             *[_text(row.metrics.get(c)) for c in cols], _text(row.metrics.get("epoch")),
                             _text(row.metrics.get("step")), "" if row.seconds is None else f"{row.seconds:.0f}",
                             " ".join(_pairs(row.overrides)), row.folder, row.error])
        return out.getvalue()


def _pairs(overrides: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


def _short(value: str) -> str:
    """0.004430375245218269 (Optuna's picks) as 0.00443 in the table; summary.csv keeps every digit."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 8 and "." in value else value


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f}s"  # meta.json's times are whole seconds
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _optuna_best(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / "optimization_results.yaml"
    if not path.exists():
        return None
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _seconds(start: str | None, end: str | None) -> float | None:
    try:
        begin = dt.datetime.fromisoformat(start)
        finish = dt.datetime.fromisoformat(end) if end else dt.datetime.now().astimezone()
        return max(0.0, (finish - begin).total_seconds())
    except (TypeError, ValueError):
        return None


def _process_alive(info: dict[str, Any]) -> bool:
    """Whether the process running the sweep still lives (when it runs on this host)."""
    if info.get("host") != socket.gethostname() or not info.get("pid"):
        return True  # cannot tell from here
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _job_number(name: str) -> int | None:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def _split(overrides: list[str]) -> dict[str, str]:
    out = {}
    for item in same_job_overrides(overrides):
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _relative(path: Path) -> Path:
    """runs/multirun/... as the sweep itself names it, when it is below the current folder."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def collect(sweep_dir: Path, metric: str | None = None) -> Summary:
    """Read every job folder of a sweep (finished, running or killed) into a sorted Summary."""
    sweep_dir = _relative(Path(sweep_dir))
    info = _read_json(sweep_dir / SWEEP_FILE)
    metric = metric or info.get("metric") or "val/acc"
    alive = _process_alive(info)
    rows, seen = [], set()
    for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        has_meta = (folder / "meta.json").exists()
        if not has_meta and not (folder / ".hydra").is_dir():
            continue
        meta = _read_json(folder / "meta.json")
        status = meta.get("status", "running" if not has_meta else "?")
        if status == "running" and not alive:
            status = "crashed"  # its process ended without saying how (SIGKILL, power, OOM killer)
        metrics = _read_json(folder / "metrics.json") or dict(meta.get("metrics") or {})
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        job = _job_number(folder.name)
        seen.add(job)
        rows.append(Row(folder=folder.name, job=job, status=status,
                        overrides=_split(meta.get("overrides") or _hydra_overrides(folder)), metrics=metrics,
                        seconds=_seconds(meta.get("started"), meta.get("ended")),
                        error=str(meta.get("error") or "").split("\n")[0]))
    planned = info.get("planned")
    if isinstance(planned, list):
        for num, overrides in enumerate(planned):
            if num not in seen:
                rows.append(Row(folder="", job=num, status="pending" if alive else "not started",
                                overrides=_split(overrides)))
        info = dict(info, planned=len(planned))
    sign = -1.0 if direction(metric) == "maximize" else 1.0

    def order(row: Row) -> tuple:
        value = row.metrics.get(metric)
        done = row.status == "completed" and isinstance(value, (int, float)) and not math.isnan(value)
        return (0, sign * value, row.job or 0) if done else (1 if row.status == "completed" else 2, 0.0,
                                                             row.job if row.job is not None else 1 << 30)

    rows.sort(key=order)
    return Summary(path=sweep_dir, metric=metric, rows=rows, info=info)


def write_summary(sweep_dir: Path) -> Summary:
    summary = collect(sweep_dir)
    _write_atomic(summary.path / SUMMARY_CSV, summary.csv())
    _write_atomic(summary.path / SUMMARY_MD, summary.markdown())
    return summary


# ------------------------------------------------------------------------ the command
def newest_sweep(root: Path = MULTIRUN_ROOT) -> Path | None:
    found = [p.parent for p in root.glob(f"*/*/{SWEEP_FILE}")] + [p.parent for p in root.glob("*/*/multirun.yaml")]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def cmd_summary(args: list[str]) -> int:
    """`expkit summary [SWEEP_DIR] [--metric KEY]`: print a sweep's table from its job folders."""
    metric = None
    if "--metric" in args:
        i = args.index("--metric")
        if i + 1 >= len(args):
            print("usage: expkit summary [SWEEP_DIR] [--metric KEY]", file=sys.stderr)
            return 2
        metric, args = args[i + 1], args[:i] + args[i + 2:]
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print("usage: expkit summary [SWEEP_DIR] [--metric KEY]", file=sys.stderr)
        return 2
    path = Path(args[0]) if args else newest_sweep()
    if path is None:
        print(f"expkit summary: no sweep under {MULTIRUN_ROOT}/; give SWEEP_DIR.", file=sys.stderr)
        return 2
    if not path.is_dir():
        print(f"expkit summary: SWEEP_DIR {str(path)!r} is not a folder.", file=sys.stderr)
        return 2
    summary = collect(path, metric)
    if not summary.rows:
        print(f"expkit summary: {str(path)!r} holds no job folders (a sweep folder has one per job).",
              file=sys.stderr)
        return 2
    print(summary.markdown(), end="")
    return 0
