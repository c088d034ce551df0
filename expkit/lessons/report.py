"""A sweep's report: its curves as one PNG and its jobs as a markdown table, with the
lesson's claim and the verdict the sweep's numbers give (lessons/claims.py).

Everything is read back from the job folders (any folder below SWEEP_DIR with a meta.json):
meta.json (status, overrides, command), config.yaml (the resolved config), metrics.json,
train.log (the validation set's size) and the TensorBoard event files. The lesson comes from
the jobs' `experiment=NAME` choice (.hydra/hydra.yaml) or --lesson; a sweep that is no lesson
gets the generic curves and the table without a claim.

Writes OUT/<lesson>.png and OUT/<lesson>.md (OUT defaults to SWEEP_DIR; `report` when the
sweep is no lesson). The verdicts are computed from the numbers every time: when a run does
not show what the course claims, the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from expkit.lessons.claims import CHECKS, CLAIMS, GENERIC_PANELS, PANELS, num, pct, pick_threshold
from expkit.lessons.jobs import Job, ReportError, lesson_of, load_sweep, short_key, varied_overrides


# ------------------------------------------------------------------ the picture
def plot(jobs: list[Job], panels: list[str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.3), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, job in enumerate(jobs):
            draw(ax, panel, job, colors[i % len(colors)])
        style(ax, panel)
    handles = [matplotlib.lines.Line2D([], [], color=colors[i % len(colors)], lw=2, label=legend_label(jobs, i))
               for i in range(len(jobs))]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(jobs), 4), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12)
    rows = math.ceil(len(jobs) / 4)
    fig.tight_layout(rect=(0, 0.04 + 0.045 * rows, 1, 0.95))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def legend_label(jobs: list[Job], i: int) -> str:
    """The job's varied overrides; says so when its validation accuracy curve hides under an
    earlier job's (every point within two validation examples)."""
    job = jobs[i]
    label = job.label + ("" if job.status == "completed" else f" ({job.status})")
    close = 2.0 / (job.val_size or 100) + 1e-9
    mine = [v for _, v in job.scalars.get("val/acc", [])]

    def overlaps(other: Job) -> bool:
        theirs = [v for _, v in other.scalars.get("val/acc", [])]
        if not mine or len(theirs) != len(mine):
            return False
        return all(abs(a - b) <= close for a, b in zip(mine, theirs, strict=True))

    twin = next((j for j in jobs[:i] if overlaps(j)), None)
    return f"{label} (overlaps {twin.label})" if twin else label


def _xy(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def epoch_means(job: Job, tag: str) -> list[tuple[float, float]]:
    """A train/* curve as one point per epoch (the mean of that epoch's logged points) when it
    is logged several times an epoch; otherwise as logged."""
    points = job.curve(tag)
    if len(points) <= 2 * max(job.metrics.get("epoch") or 1, 1):
        return points
    sums: dict[int, list[float]] = {}
    for epoch, value in points:
        sums.setdefault(max(math.ceil(epoch - 1e-9), 1), []).append(value)
    return [(e, sum(v) / len(v)) for e, v in sorted(sums.items())]


def draw(ax, panel: str, job: Job, color) -> None:
    if panel in ("loss_train_val", "acc_train_val"):
        what = "loss" if panel == "loss_train_val" else "acc"
        ax.plot(*_xy(epoch_means(job, f"train/{what}")), color=color, ls="--", lw=1.5, alpha=0.9)
        ax.plot(*_xy(job.curve(f"val/{what}")), color=color, ls="-", lw=2, marker=".")
    elif panel in ("val_acc", "val_loss"):
        ax.plot(*_xy(job.curve(panel.replace("_", "/"))), color=color, lw=2, marker=".")
    elif panel == "train_loss":
        ax.plot(*_xy(job.curve("train/loss")), color=color, lw=0.8, alpha=0.25)
        ax.plot(*_xy(epoch_means(job, "train/loss")), color=color, lw=2)
    elif panel == "lr":
        ax.plot(*_xy(job.curve("opt/lr")), color=color, lw=2)
    elif panel == "grad_layers":
        step, rows = job.first_grad_norms()
        if rows:
            ax.plot(range(1, len(rows) + 1), [max(v, 1e-30) for _, v in rows], color=color, lw=2, marker=".")
            ax.set_title(f"per-layer gradient norm at step {step}", fontsize=10)


TITLES = {
    "loss_train_val": ("loss (dashed: train, epoch mean; solid: validation)", "epoch", "log"),
    "acc_train_val": ("accuracy (dashed: train, epoch mean; solid: validation)", "epoch", "linear"),
    "val_acc": ("validation accuracy", "epoch", "linear"),
    "val_loss": ("validation loss", "epoch", "log"),
    "train_loss": ("training loss (faint: as logged; bold: epoch mean)", "epoch", "log"),
    "lr": ("learning rate (opt/lr)", "epoch", "linear"),
    "grad_layers": ("per-layer gradient norm at the first logged step", "layer (input → output)", "log"),
}


def style(ax, panel: str) -> None:
    title, xlabel, yscale = TITLES[panel]
    if not ax.get_title():
        ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    if ax.has_data():
        ax.set_yscale(yscale)
    ax.grid(True, alpha=0.3)


# ------------------------------------------------------------------ the table and text
def table(jobs: list[Job], lesson: str | None) -> list[str]:
    varied = varied_overrides(jobs)
    keys = list(next(iter(varied.values()), {}))
    extra: list[tuple[str, Callable[[Job], str]]] = []
    if lesson in ("init_depth", "skip"):
        step = min((j.first_grad_norms()[0] or 0 for j in jobs), default=0)
        at = f"step {step}" if step and all(j.first_grad_norms()[0] in (step, None) for j in jobs) else "first step"
        extra.append((f"first/last layer grad ({at})", lambda j: num(j.grad_ratio(), ".1e")))
        extra.append((f"median layer grad ({at})", lambda j: num(j.median_grad(), ".1e")))
    if lesson in ("batchnorm", "optimizers", "skip"):
        thr = pick_threshold(jobs)
        extra.append((f"epochs to {pct(thr)}", lambda j: str(j.epochs_to(thr) or "never")))
    if lesson == "schedulers":
        extra.append(("final LR", lambda j: num(j.final("opt/lr"), ".2e")))
    head = ["job", *(short_key(k) for k in keys), "status", "epochs", "val acc", "best val acc",
            "train acc (last epoch)", "train − val acc", "train loss", "val loss", *(e[0] for e in extra)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for j in jobs:
        ta, va = j.last_epoch("train/acc"), j.final("val/acc")
        gap = None if ta is None or va is None else 100 * (ta - va)
        row = [str(j.num), *(varied[j.num][k] for k in keys), j.status, num(j.metrics.get("epoch"), "g"), pct(va),
               pct(j.best_val_acc()), pct(ta), "n/a" if gap is None else f"{gap:+.1f} pts",
               num(j.last_epoch("train/loss"), ".4f"), num(j.final("val/loss"), ".4f"), *(fn(j) for _, fn in extra)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def command_of(jobs: list[Job]) -> str:
    cmd = next((j.command for j in jobs if j.command), [])
    if not cmd:
        return ""
    args = cmd[1:]  # expkit rewrites sys.argv to what followed `expkit train`
    if args and args[0] == "train":
        args = args[1:]
    return "expkit train " + " ".join(args)


def report(sweep_dir: str | Path, out: str | Path | None = None, lesson: str | None = None) -> tuple[Path, Path]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"SWEEP_DIR: {str(sweep_dir)!r} is not a folder; give a sweep folder such as "
                          "runs/multirun/<date>/<time>.")
    jobs = load_sweep(sweep_dir)
    lesson = lesson or lesson_of(jobs)
    if lesson is not None and lesson not in CHECKS:
        raise ReportError(f"--lesson: value {lesson!r} is not a known lesson; choose one of {', '.join(CHECKS)}.")
    out_dir = Path(out) if out else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = lesson or "report"
    png, md = out_dir / f"{stem}.png", out_dir / f"{stem}.md"
    title = f"lesson: {lesson}" if lesson else f"sweep {sweep_dir.name}"
    plot(jobs, PANELS.get(lesson, GENERIC_PANELS), f"{title}  ({len(jobs)} jobs)", png)

    done = sum(j.status == "completed" for j in jobs)
    text = [f"# {'Lesson: ' + lesson if lesson else 'Sweep report'}", ""]
    command = command_of(jobs)
    if command:
        text += [f"Command: `{command}`  ", ""]
    text += [f"Sweep: `{sweep_dir.name}`, {len(jobs)} jobs ({done} completed).", ""]
    if lesson:
        finding = CHECKS[lesson](jobs)
        text += [f"**The course claims:** {CLAIMS[lesson]}", "", f"**Verdict: {finding.verdict}.**", "",
                 "**This run measured:**", ""]
        text += [f"- {line}" for line in finding.lines]
        text.append("")
    text += [f"![{stem}]({png.name})", ""]
    text += table(jobs, lesson)
    text += ["", "Train acc/loss: the mean over the last epoch's training batches (training mode); val: the last "
             "evaluation; gap in percentage points.", ""]
    md.write_text("\n".join(text))
    return png, md


