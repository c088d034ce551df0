"""Reading run folders back: one reader for every command that lists runs or jobs
(`expkit summary`, `expkit report`, `expkit runs`, `expkit compare`). A folder still being
written, or killed half-way, reads as far as it got: missing files are empty, never an
error."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expkit.run.folder import RunDir, read_yaml, writer_gone


@dataclass
class JobRecord:
    path: Path
    number: int | None  # a sweep job's number (its folder name starts with it)
    status: str | None  # meta.json's status; None when the job has not written one yet
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    hydra: dict[str, Any] | None = None  # .hydra/hydra.yaml, plain YAML


def job_number(name: str) -> int | None:
    m = re.match(r"(\d+)(_|$)", name)
    return int(m.group(1)) if m else None


def job_folders(sweep_dir: Path, with_meta_only: bool = False) -> list[Path]:
    """The job folders of a sweep, by job number: those with a meta.json, and (unless
    `with_meta_only`) those Hydra has made for a job that has not written one yet. A run
    folder given as the sweep is its own only job."""
    if RunDir(sweep_dir).is_run():
        return [sweep_dir]
    found = {p.parent for p in sweep_dir.glob(f"*/{RunDir.META}")}
    found |= {p.parent for p in sweep_dir.glob(f"*/*/{RunDir.META}") if p.parent.parent not in found}
    if not with_meta_only:
        found |= {p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and RunDir(p).hydra_dir.is_dir()}
    return sorted(found, key=lambda p: (job_number(p.name) is None, job_number(p.name) or 0, p.name))


def run_folders(root: Path) -> list[Path]:
    """Every run folder (one holding meta.json) at or below `root`, sweep jobs included,
    sorted by path. A run folder is not searched further; hidden folders are skipped."""
    found: list[Path] = []
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                entries = list(entries)
        except OSError:
            continue
        if any(e.name == RunDir.META and e.is_file() for e in entries):
            found.append(Path(folder))
            continue
        stack += [e.path for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    return sorted(found)


def read_job(folder: Path, config: bool = True) -> JobRecord:
    """A job or run folder read back; `config=False` skips config.yaml and Hydra's files
    (listing thousands of runs reads meta.json and metrics.json only)."""
    rundir = RunDir(folder)
    meta = rundir.meta_or_empty()
    status = meta.get("status")
    if status == "running" and writer_gone(folder, meta):
        status = "crashed"  # its process ended without saying how (SIGKILL, the OOM killer, a power cut)
    overrides = meta.get("overrides")
    if overrides is None:
        overrides = read_yaml(rundir.hydra_overrides) or []
    metrics = rundir.read_metrics() or dict(meta.get("metrics") or {})
    if not config:
        return JobRecord(path=folder, number=job_number(folder.name), status=status, meta=meta,
                         metrics=metrics, overrides=[str(o) for o in overrides])
    config = rundir.read_config() or {}
    hydra = read_yaml(rundir.hydra_settings)
    return JobRecord(path=folder, number=job_number(folder.name), status=status, meta=meta,
                     metrics=metrics, overrides=[str(o) for o in overrides],
                     config=config if isinstance(config, dict) else {},
                     hydra=hydra if isinstance(hydra, dict) else None)


def _time(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def active_seconds(meta: dict[str, Any], until_now: bool = False) -> float | None:
    """How long a run trained: from `started` to its end, less the pauses between its
    resumes (each entry of meta.json's `resumes` starts a span at `at`, and says where the
    span before it ended in `previous_end`; an entry from before expkit recorded that
    counts up to its own start). None when the run has not ended (with `until_now`: the
    time up to now) or a time is missing."""
    spans, begin = [], meta.get("started")
    for entry in meta.get("resumes") or []:
        spans.append((begin, entry.get("previous_end") or entry.get("at")))
        begin = entry.get("at")
    end = meta.get("ended")
    if end is None and until_now:
        end = dt.datetime.now().astimezone().isoformat()
    spans.append((begin, end))
    total = 0.0
    for a, b in spans:
        start, finish = _time(a), _time(b)
        if start is None or finish is None:
            return None
        total += max(0.0, (finish - start).total_seconds())
    return total


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def varying_keys(jobs: list[dict[str, str]]) -> list[str]:
    """The keys whose values differ between jobs (each job: key -> value), in first-seen order."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job if k not in keys]
    return [k for k in keys if len({job.get(k) for job in jobs}) > 1]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of a run, read with TensorBoard's own reader, one value per step."""
    if not any(folder.glob("events.out.tfevents.*")) and not any(folder.glob("*/events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 1, "images": 1, "tensors": 1, "compressedHistograms": 1}
    )
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()["scalars"]:
        by_step: dict[int, float] = {}
        for e in acc.Scalars(tag):  # a resumed run may have written a step twice: keep the last
            by_step[e.step] = e.value
        out[tag] = sorted(by_step.items())
    return out


def lr_per_step(points: list[tuple[int, float]], last_step: int) -> list[float | None]:
    """The LR of every step 1..last_step from a run's opt/lr points. The trainer writes a point
    at every log step and wherever the LR changes, so between two points the LR is the earlier
    point's value (None before the first point)."""
    values: list[float | None] = []
    value, pending = None, iter(sorted(points))
    point = next(pending, None)
    for step in range(1, last_step + 1):
        while point is not None and point[0] <= step:
            value = point[1]
            point = next(pending, None)
        values.append(value)
    return values
