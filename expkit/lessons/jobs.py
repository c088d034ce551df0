"""A sweep read back for a lesson report: every job folder's config, metrics, overrides
and TensorBoard scalars, with the derived numbers the verdicts use (epoch means, epochs
to a threshold, per-layer gradient ratios). The folder reading itself is run/jobs.py's,
shared with `expkit summary`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expkit.run.folder import RunDir
from expkit.run.jobs import job_folders, read_job, read_scalars, split_override, varying_keys

CHANCE = 0.1  # ten classes in every bundled data set; only used in wording


class ReportError(Exception):
    """Bad input: printed as one line, exit status 2."""


@dataclass
class Job:
    path: Path
    num: int
    overrides: list[str]
    status: str
    config: dict[str, Any]
    metrics: dict[str, float]
    choices: dict[str, Any]
    command: list[str]
    val_size: int | None
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    label: str = ""
    arm: str = ""  # the varied overrides other than seed: the jobs of one arm differ only in their seed

    # -------------------------------------------------------------- derived numbers
    def cfg(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def steps_per_epoch(self) -> float:
        step, epoch = self.metrics.get("step"), self.metrics.get("epoch")
        if step and epoch:
            return step / epoch
        val = self.scalars.get("val/acc") or []
        return val[0][0] if val else 1.0

    def curve(self, tag: str) -> list[tuple[float, float]]:
        """(epoch, value) points of a scalar tag."""
        spe = self.steps_per_epoch
        return [(s / spe, v) for s, v in self.scalars.get(tag, [])]

    def val_acc_by_epoch(self) -> list[tuple[int, float]]:
        return [(round(e), v) for e, v in self.curve("val/acc")]

    def final(self, tag: str) -> float | None:
        points = self.scalars.get(tag)
        if points:
            return points[-1][1]
        value = self.metrics.get(tag)
        return None if value is None else float(value)

    def best_val_acc(self) -> float | None:
        points = self.scalars.get("val/acc")
        if points:
            return max(v for _, v in points)
        return self.metrics.get("best/val/acc")

    def last_epoch(self, tag: str) -> float | None:
        """The mean of a train/* tag over the last epoch (each logged point averages the steps
        since the one before it, so points are weighted by those step counts)."""
        points = self.scalars.get(tag)
        if not points:
            return self.final(tag)
        end = points[-1][0]
        start = end - self.steps_per_epoch
        total = weight = 0.0
        prev = None
        for step, value in points:
            if step > start + 1e-9:
                w = step - (prev if prev is not None else start)
                w = max(min(w, step - start), 1e-9)
                total += value * w
                weight += w
            prev = step
        return total / weight if weight else points[-1][1]

    def epochs_to(self, threshold: float) -> int | None:
        for epoch, acc in self.val_acc_by_epoch():
            if acc >= threshold:
                return epoch
        return None

    def first_grad_norms(self) -> tuple[int | None, list[tuple[str, float]]]:
        """Per-layer gradient norms (grad/norm/<param>) at the first logged step, in layer order."""
        tags = [t for t in self.scalars if t.startswith("grad/norm/")]
        if not tags:
            return None, []
        first = min(self.scalars[t][0][0] for t in tags)
        rows = [(t[len("grad/norm/") :], v) for t in tags for s, v in self.scalars[t] if s == first]
        rows.sort(key=lambda r: _layer_key(r[0]))
        return first, rows

    def grad_ratio(self) -> float | None:
        """First layer's gradient norm over the last layer's at the first logged step."""
        _, rows = self.first_grad_norms()
        if len(rows) < 2 or rows[-1][1] <= 0:
            return None
        return rows[0][1] / rows[-1][1]

    def median_grad(self) -> float | None:
        _, rows = self.first_grad_norms()
        if not rows:
            return None
        values = sorted(v for _, v in rows)
        return values[len(values) // 2]


def _layer_key(name: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def load_job(folder: Path) -> Job:
    record = read_job(folder)
    hydra_cfg = record.hydra or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    val_size = None
    log = RunDir(folder).log
    if log.exists():
        m = re.search(r": train (\d+), val (\d+)", log.read_text(errors="replace"))
        val_size = int(m.group(2)) if m else None
    return Job(
        path=folder,
        num=10**9 if record.number is None else record.number,
        overrides=record.overrides,
        status=record.status or "unknown",
        config=record.config,
        metrics=record.metrics,
        choices=choices,
        command=[str(c) for c in record.meta.get("command") or []],
        val_size=val_size,
        scalars=read_scalars(folder),
    )


def load_sweep(sweep_dir: Path) -> list[Job]:
    folders = job_folders(sweep_dir, with_meta_only=True)
    if not folders:
        raise ReportError(
            f"SWEEP_DIR: {str(sweep_dir)!r} holds no job folders (folders with a meta.json); "
            "give a folder made by `expkit train -m ...`, e.g. runs/multirun/<date>/<time>."
        )
    jobs = [load_job(f) for f in folders]
    varied = varied_overrides(jobs)
    for job in jobs:
        job.label = ", ".join(f"{short_key(k)}={v}" for k, v in varied[job.num].items()) or job.path.name
        job.arm = ", ".join(f"{short_key(k)}={v}" for k, v in varied[job.num].items() if k != "seed") or "all jobs"
    return jobs


def arms(jobs: list[Job]) -> dict[str, list[Job]]:
    """The jobs grouped by arm, arms and jobs in job order."""
    out: dict[str, list[Job]] = {}
    for job in sorted(jobs, key=lambda j: j.num):
        out.setdefault(job.arm or job.label, []).append(job)
    return out


def varied_overrides(jobs: list[Job]) -> dict[int, dict[str, str]]:
    """Per job: the overrides whose value is not the same in every job, in command-line order."""
    parsed = {j.num: dict(split_override(o) for o in j.overrides) for j in jobs}
    varied = varying_keys(list(parsed.values()))
    return {j.num: {k: parsed[j.num].get(k, "-") for k in varied} for j in jobs}


def short_key(key: str) -> str:
    return key.removeprefix("experiment/")


def lesson_of(jobs: list[Job]) -> str | None:
    names = set()
    for j in jobs:
        name = j.choices.get("experiment")
        if name is None:
            name = next((v for k, v in map(split_override, j.overrides) if k == "experiment"), None)
        if name not in (None, "null", "None"):
            names.add(str(name))
    return names.pop() if len(names) == 1 else None
