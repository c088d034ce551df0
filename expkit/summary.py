"""A sweep's summary table, read back from its job folders (run/jobs.py), so
`expkit summary SWEEP_DIR` gives the same table for any sweep, finished, running or killed.
summary.md and summary.csv are rewritten after every job; each write is atomic, so a
reader never sees half a table."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expkit.config.resolvers import direction, truthy
from expkit.printable import cell
from expkit.run.folder import RunDir, process_gone, read_json, read_yaml, write_atomic
from expkit.run.jobs import active_seconds, job_folders, read_job, split_override, varying_keys
from expkit.run.provenance import shown_command

SWEEP_FILE = "sweep.json"
SUMMARY_MD, SUMMARY_CSV = "summary.md", "summary.csv"
MULTIRUN_ROOT = Path("runs/multirun")
METRIC_COLUMNS = ("val/acc", "val/loss", "best/val/acc", "test/acc", "test/loss")
FINISHED_BAD = ("failed", "interrupted", "crashed")


def is_resume_flag(item: str) -> bool:
    return item.lstrip("+").split("=", 1)[0] == "sweep.resume"


def asks_to_resume(args: list[str]) -> bool:
    """Whether a command line sets sweep.resume to true (its last setting, as Hydra takes it)."""
    flags = [str(a) for a in args if is_resume_flag(str(a))]
    return bool(flags) and truthy(flags[-1].split("=", 1)[-1])


def same_job_overrides(overrides: list[str]) -> list[str]:
    """Overrides that define the jobs: all but sweep.resume (and Hydra's own keys)."""
    return [o for o in overrides if not is_resume_flag(o) and not o.startswith(("hydra.", "hydra/"))]


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
        return varying_keys([row.overrides for row in self.rows])

    def columns(self) -> list[str]:
        main = self.main_metric()
        base = METRIC_COLUMNS if main == "val/acc" else (
            main, "val/loss", f"best/{main}", main.replace("val/", "test/", 1), "test/loss")
        extra = [self.metric] if self.metric not in base else []
        return [*dict.fromkeys([*base, *extra])]

    def main_metric(self) -> str:
        """The jobs' main metric: the one their metrics.json keeps a best/ of (val/acc for
        classification, val/rmse for regression, ...)."""
        for row in self.rows:
            best = [k.removeprefix("best/") for k in row.metrics if k.startswith("best/val/")]
            if best:
                return "val/acc" if "val/acc" in best else best[0]
        return "val/acc"

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
        lines = [f"# Sweep {cell(self.path)}", ""]
        attempts = self.info.get("attempts") or [{}]
        if attempts[-1].get("command"):
            lines.append(f"command: `{cell(shown_command(attempts[-1]['command']))}`  ")
        # older records hold no sweep_resume: their command says
        resumed = [a for a in attempts[1:] if a.get("sweep_resume", asks_to_resume(a.get("command") or []))]
        if resumed:
            lines.append(f"resumed {len(resumed)} time(s) (sweep.resume=true)  ")
        if len(attempts) - 1 > len(resumed):
            lines.append(f"run again {len(attempts) - 1 - len(resumed)} time(s) without sweep.resume (jobs that "
                         "hold a run were left as they were)  ")
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
        lines += ["", "| " + " | ".join(cell(h).replace("|", "\\|") for h in head) + " |", "|" + "---|" * len(head)]
        for rank, row in enumerate(self.rows, 1):
            shown = ([_short(row.overrides.get(k, "")) for k in keys] if keys
                     else [" ".join(_pairs(row.overrides)) or "-"])
            cells = [str(rank) if row.status == "completed" else "", _text(row.job), *shown, row.status,
                     *[_num(row.metrics.get(c)) for c in cols], _text(row.metrics.get("epoch")),
                     _text(row.metrics.get("step")), _duration(row.seconds)]
            lines.append("| " + " | ".join(cell(c).replace("|", "\\|") for c in cells) + " |")
        errors = [row for row in self.rows if row.error]
        if errors:
            lines += ["", *[f"- job {_text(row.job)} {cell(row.status)}: {cell(row.error)}" for row in errors]]
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
    return read_yaml(path) if path.exists() else None


def _process_alive(info: dict[str, Any]) -> bool:
    """Whether the process running the sweep still lives (when it runs on this host)."""
    return not process_gone(info.get("pid"), info.get("host"))


def _split(overrides: list[str]) -> dict[str, str]:
    return dict(split_override(item) for item in same_job_overrides(overrides))


def _relative(path: Path) -> Path:
    """runs/multirun/... as the sweep itself names it, when it is below the current folder."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def collect(sweep_dir: Path, metric: str | None = None, stopped: bool = False) -> Summary:
    """Read every job folder of a sweep (finished, running or killed) into a sorted Summary."""
    sweep_dir = _relative(Path(sweep_dir))
    info = read_json(sweep_dir / SWEEP_FILE)
    metric = metric or info.get("metric") or "val/acc"
    alive = not stopped and _process_alive(info)
    rows, seen = [], set()
    folders = [] if RunDir(sweep_dir).is_run() else job_folders(sweep_dir)
    for folder in folders:
        job = read_job(folder, config=False)  # status, overrides and metrics: no YAML to parse
        if job.status:
            status = job.status
        elif RunDir(folder).is_run():
            status = "?"
        else:  # its folder is made, its record not yet: starting, or stopped before it recorded anything
            status = "running" if alive else "not started"
        if status == "running" and not alive:
            status = "crashed"  # its process ended without saying how (SIGKILL, power, OOM killer)
        metrics = {k: v for k, v in job.metrics.items() if isinstance(v, (int, float))}
        seen.add(job.number)
        rows.append(Row(folder=folder.name, job=job.number, status=status, overrides=_split(job.overrides),
                        metrics=metrics, seconds=active_seconds(job.meta, until_now=True),
                        error=str(job.meta.get("error") or "").split("\n")[0]))
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


def write_summary(sweep_dir: Path, stopped: bool = False) -> Summary:
    """summary.md and summary.csv; `stopped`: the sweep's process is ending on a signal."""
    summary = collect(sweep_dir, stopped=stopped)
    write_atomic(summary.path / SUMMARY_CSV, summary.csv(), durable=False)
    write_atomic(summary.path / SUMMARY_MD, summary.markdown(), durable=False)
    return summary


# ------------------------------------------------------------------------ the command
def newest_sweep(root: Path = MULTIRUN_ROOT) -> Path | None:
    found = [p.parent for p in root.glob(f"*/*/{SWEEP_FILE}")] + [p.parent for p in root.glob("*/*/multirun.yaml")]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


