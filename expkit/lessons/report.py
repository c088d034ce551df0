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

from expkit.lessons.claims import CLAIMS, COMPARISONS, GENERIC_PANELS, PANELS, judge, num, pct, pick_threshold
from expkit.lessons.jobs import Job, ReportError, arms, lesson_of, load_sweep, short_key, varied_overrides
from expkit.lessons.stats import RULE, Comparison, mean, std
from expkit.run.provenance import shown_command


# ------------------------------------------------------------------ the picture
def plot(jobs: list[Job], panels: list[str], title: str, out: Path) -> None:
    """One panel per view; per arm the mean over its seeds as a line and mean ± one standard
    deviation as a band. The legend sits below the panels and the figure is cropped to what
    it draws, so no label is cut off."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    groups = arms(jobs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.4), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, group in enumerate(groups.values()):
            draw(ax, panel, group, colors[i % len(colors)])
        style(ax, panel, groups)
    seeds = max(len(g) for g in groups.values())
    handles = [Line2D([], [], color=colors[i % len(colors)], lw=2.5, label=arm_label(name, group))
               for i, (name, group) in enumerate(groups.items())]
    if any(p in ("loss_train_val", "acc_train_val") for p in panels):
        handles += [Line2D([], [], color="0.3", ls="--", lw=1.5, label="training (epoch mean)"),
                    Line2D([], [], color="0.3", ls="-", lw=2, marker=".", label="validation")]
    if seeds > 1:
        handles.append(Patch(color="0.6", alpha=0.35, label="band: mean ± 1 std over seeds"))
    ncol = max(1, min(len(handles), 3 if len(panels) >= 3 else 2))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=9,
               frameon=False)
    fig.suptitle(textwrap.fill(title, width=int(36 * len(panels))), fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)


def arm_label(name: str, group: list[Job]) -> str:
    failed = [j for j in group if j.status != "completed"]
    extra = f", {len(failed)} {failed[0].status}" if failed else ""
    seeds = f"{len(group)} seed{'s' if len(group) != 1 else ''}"
    return f"{name} ({seeds}{extra})"


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


def grad_layers(job: Job) -> list[tuple[float, float]]:
    _, rows = job.first_grad_norms()
    return [(i, max(v, 1e-30)) for i, (_, v) in enumerate(rows, start=1)]


def mean_band(curves: list[list[tuple[float, float]]], log: bool) -> tuple[list[float], list[float], list[float],
                                                                           list[float]]:
    """x, mean, mean - std, mean + std over the curves at each x the first curve has (in log10
    for a log-scale panel, so the band is a factor)."""
    if not curves or not curves[0]:
        return [], [], [], []
    by_x = [dict(c) for c in curves]
    xs, mid, lo, hi = [], [], [], []
    for x, _ in curves[0]:
        values = [d[x] for d in by_x if x in d and math.isfinite(d[x]) and (d[x] > 0 or not log)]
        if not values:
            continue
        if log:
            values = [math.log10(v) for v in values]
        m, s = mean(values), std(values)
        xs.append(x)
        mid.append(m)
        lo.append(m - s)
        hi.append(m + s)
    if log:
        mid, lo, hi = ([10**v for v in vs] for vs in (mid, lo, hi))
    return xs, mid, lo, hi


def series(panel: str, job: Job) -> list[tuple[str, list[tuple[float, float]]]]:
    """(line style, points) of one job in one panel."""
    if panel in ("loss_train_val", "acc_train_val"):
        what = "loss" if panel == "loss_train_val" else "acc"
        return [("--", epoch_means(job, f"train/{what}")), ("-", job.curve(f"val/{what}"))]
    if panel in ("val_acc", "val_loss"):
        return [("-", job.curve(panel.replace("_", "/")))]
    if panel == "train_loss":
        return [("-", epoch_means(job, "train/loss"))]
    if panel == "lr":
        return [("-", job.curve("opt/lr"))]
    if panel == "grad_norm":
        return [("-", job.curve("grad/norm"))]
    if panel == "grad_layers":
        return [("-", grad_layers(job))]
    return []


def draw(ax, panel: str, group: list[Job], color) -> None:
    log = TITLES[panel][3] == "log"
    per_job = [series(panel, j) for j in group]
    for k, (ls, _) in enumerate(per_job[0] if per_job else []):
        xs, mid, lo, hi = mean_band([s[k][1] for s in per_job if len(s) > k and s[k][1]], log)
        if not xs:
            continue
        marker = "." if ls == "-" and panel != "train_loss" and len(xs) <= 60 else None
        ax.plot(xs, mid, color=color, ls=ls, lw=2 if ls == "-" else 1.5, marker=marker)
        if len(group) > 1:
            ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)


TITLES = {  # panel: (title, x axis, y axis, y scale)
    "loss_train_val": ("loss: training (dashed) and validation (solid)", "epoch", "cross-entropy loss", "log"),
    "acc_train_val": ("accuracy: training (dashed) and validation (solid)", "epoch", "accuracy", "linear"),
    "val_acc": ("validation accuracy", "epoch", "accuracy", "linear"),
    "val_loss": ("validation loss", "epoch", "cross-entropy loss", "log"),
    "train_loss": ("training loss (epoch mean)", "epoch", "cross-entropy loss", "log"),
    "lr": ("learning rate (opt/lr)", "epoch", "learning rate", "linear"),
    "grad_norm": ("gradient norm before clipping (grad/norm)", "epoch", "global gradient norm", "log"),
    "grad_layers": ("per-layer gradient norm at the first logged step", "layer (input → output)",
                    "gradient norm", "log"),
}


def style(ax, panel: str, groups: dict[str, list[Job]]) -> None:
    title, xlabel, ylabel, yscale = TITLES[panel]
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
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
    return shown_command(cmd)


def mean_std(values: list[float | None], fmt: Callable[[float], str]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    return fmt(mean(vals)) if len(vals) == 1 else f"{fmt(mean(vals))} ± {fmt(std(vals))}"


def value_format(metric: str) -> Callable[[float], str]:
    if "acc" in metric and not metric.startswith("epochs"):
        return lambda v: f"{100 * v:.1f}%"
    return lambda v: f"{v:.3g}"


def arm_table(jobs: list[Job]) -> list[str]:
    head = ["arm", "seeds", "completed", "val acc", "best val acc", "train loss (last epoch)", "val loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, group in arms(jobs).items():
        row = [name, str(len(group)), str(sum(j.status == "completed" for j in group)),
               mean_std([j.final("val/acc") for j in group], pct),
               mean_std([j.best_val_acc() for j in group], pct),
               mean_std([j.last_epoch("train/loss") for j in group], lambda v: f"{v:.4f}"),
               mean_std([j.final("val/loss") for j in group], lambda v: f"{v:.4f}")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def comparison_table(comparisons: list[Comparison]) -> list[str]:
    head = ["claim", "number", "arm", "baseline", "arm: mean ± std", "baseline: mean ± std",
            "difference [95% CI]", "p (Welch)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        fmt = value_format(c.metric)
        diff = "n/a" if not math.isfinite(c.diff) else (
            f"{c.diff:+.3g}" + (f" [{c.low:+.3g}, {c.high:+.3g}]" if math.isfinite(c.low) else ""))
        verdict = f"**{c.verdict}**" + (f" ({c.note})" if c.note else "")
        lines.append("| " + " | ".join([
            c.claim, f"{c.metric} ({'higher' if c.higher else 'lower'} expected)", c.arm, c.baseline,
            mean_std(c.arm_values, fmt), mean_std(c.base_values, fmt), diff,
            num(c.p, ".2g"), verdict]) + " |")
    return lines


def report(sweep_dir: str | Path, out: str | Path | None = None, lesson: str | None = None) -> tuple[Path, Path]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"SWEEP_DIR: {str(sweep_dir)!r} is not a folder; give a sweep folder such as "
                          "runs/multirun/<date>/<time>.")
    jobs = load_sweep(sweep_dir)
    lesson = lesson or lesson_of(jobs)
    if lesson is not None and lesson not in COMPARISONS:
        raise ReportError(f"--lesson: value {lesson!r} is not a known lesson; choose one of "
                          f"{', '.join(COMPARISONS)}.")
    out_dir = Path(out) if out else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = lesson or "report"
    png, md = out_dir / f"{stem}.png", out_dir / f"{stem}.md"
    groups = arms(jobs)
    seeds = sorted({len(g) for g in groups.values()})
    size = f"{len(jobs)} jobs: {len(groups)} arms x {'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''}"
    verdict = judge(lesson, jobs) if lesson else None
    if verdict:
        title = f"lesson {lesson} ({size}), verdict: {verdict.verdict}. Claim: {CLAIMS[lesson]}"
    else:
        title = f"sweep {sweep_dir.name} ({size})"
    plot(jobs, PANELS.get(lesson, GENERIC_PANELS), title, png)

    done = sum(j.status == "completed" for j in jobs)
    text = [f"# {'Lesson: ' + lesson if lesson else 'Sweep report'}", ""]
    command = command_of(jobs)
    if command:
        text += [f"Command: `{command}`  ", ""]
    text += [f"Sweep: `{sweep_dir.name}`, {size} ({done} completed).", ""]
    if verdict:
        text += [f"**The course claims:** {CLAIMS[lesson]}", "", f"**Verdict: {verdict.verdict}.**", "", RULE, ""]
        if seeds == [1]:
            text += ["Every arm ran one seed: no verdict can rest on it. Run the lesson with its seeds "
                     f"(`expkit lesson {lesson}`, or `seed=0,1,2` in the sweep).", ""]
        text += comparison_table(verdict.comparisons) + [""]
        text += ["**Per arm** (mean ± std over its seeds):", ""] + arm_table(jobs) + [""]
        text += ["**One seed of each arm, in words:**", ""]
        text += [f"- {line}" for line in verdict.details]
        text.append("")
    elif len(jobs) > len(groups):
        text += ["**Per arm** (mean ± std over its seeds):", ""] + arm_table(jobs) + [""]
    text += [f"![{stem}]({png.name})", "", "**Every job:**", ""]
    text += table(jobs, lesson)
    text += ["", "Train acc/loss: the mean over the last epoch's training batches (training mode); val: the last "
             "evaluation; gap in percentage points.", ""]
    md.write_text("\n".join(text))
    return png, md
