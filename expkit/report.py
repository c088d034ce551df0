"""`expkit report SWEEP_DIR [--out DIR] [--lesson NAME]`: a sweep's curves as one PNG and
its jobs as a markdown table, plus what the course claims and what the sweep measured.

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

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHANCE = 0.1  # ten classes in every bundled data set; only used in wording
# Per-lesson panels, and the claim each lesson's check tests.
PANELS = {
    "dropout": ["loss_train_val", "acc_train_val"],
    "batchnorm": ["val_acc", "train_loss"],
    "init_depth": ["grad_layers", "train_loss", "val_acc"],
    "schedulers": ["lr", "val_acc", "val_loss"],
    "optimizers": ["train_loss", "val_acc"],
    "skip": ["grad_layers", "train_loss", "val_acc"],
}
GENERIC_PANELS = ["loss_train_val", "val_acc"]
CLAIMS = {
    "dropout": "Dropout regularizes an over-parameterized network: with dropout 0.5 the gap between "
               "training and validation accuracy (and loss) shrinks compared with no dropout.",
    "batchnorm": "Batch normalization makes training faster: with batchnorm the network reaches a given "
                 "validation accuracy in fewer epochs.",
    "init_depth": "Init matters in deep nets (He et al. 2015, \"Delving Deep into Rectifiers\"): a deep plain "
                  "ReLU net learns with Kaiming init and stalls with Xavier init, whose signal and gradients "
                  "shrink layer by layer; in a deep sigmoid net the gradients vanish toward the input layers.",
    "schedulers": "Decaying the learning rate lets SGD settle: a decaying schedule ends with a lower training "
                  "loss and at least the validation accuracy of a constant learning rate.",
    "optimizers": "Momentum speeds plain SGD up; Adam and AdamW converge faster than plain SGD at their usual "
                  "learning rates; AdamW ends about where Adam does.",
    "skip": "Skip connections let a deep CNN train: without them the same deep network trains slower or not "
            "at all (higher training loss), because its gradients fade toward the input layers.",
}


class ReportError(Exception):
    """Bad input: printed as one line, exit status 2."""


# ------------------------------------------------------------------ reading a sweep
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
        rows = [(t[len("grad/norm/"):], v) for t in tags for s, v in self.scalars[t] if s == first]
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


def _num_of(folder: Path) -> int:
    m = re.match(r"(\d+)", folder.name)
    return int(m.group(1)) if m else 10**9


def _load_yaml(path: Path) -> Any:
    if not path.exists():
        return None
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    if not any(folder.glob("events.out.tfevents.*")) and not any(folder.glob("*/events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 1, "images": 1,
                                                       "tensors": 1, "compressedHistograms": 1})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()["scalars"]:
        by_step: dict[int, float] = {}
        for e in acc.Scalars(tag):  # a resumed run may have written a step twice: keep the last
            by_step[e.step] = e.value
        out[tag] = sorted(by_step.items())
    return out


def job_folders(sweep_dir: Path) -> list[Path]:
    if (sweep_dir / "meta.json").exists():
        return [sweep_dir]
    found = [p.parent for p in sweep_dir.glob("*/meta.json")]
    found += [p.parent for p in sweep_dir.glob("*/*/meta.json") if p.parent.parent not in found]
    return sorted(set(found), key=lambda p: (_num_of(p), p.name))


def load_job(folder: Path) -> Job:
    meta = _read_json(folder / "meta.json")
    config = _load_yaml(folder / "config.yaml") or _load_yaml(folder / ".hydra" / "config.yaml") or {}
    overrides = meta.get("overrides")
    if overrides is None:
        overrides = _load_yaml(folder / ".hydra" / "overrides.yaml") or []
    hydra_cfg = _load_yaml(folder / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    metrics = _read_json(folder / "metrics.json") or meta.get("metrics") or {}
    val_size = None
    log = folder / "train.log"
    if log.exists():
        m = re.search(r": train (\d+), val (\d+)", log.read_text(errors="replace"))
        val_size = int(m.group(2)) if m else None
    return Job(path=folder, num=_num_of(folder), overrides=[str(o) for o in overrides],
               status=str(meta.get("status", "unknown")), config=config, metrics=metrics, choices=choices,
               command=[str(c) for c in meta.get("command") or []], val_size=val_size,
               scalars=read_scalars(folder))


def load_sweep(sweep_dir: Path) -> list[Job]:
    folders = job_folders(sweep_dir)
    if not folders:
        raise ReportError(f"SWEEP_DIR: {str(sweep_dir)!r} holds no job folders (folders with a meta.json); "
                          "give a folder made by `expkit train -m ...`, e.g. runs/multirun/<date>/<time>.")
    jobs = [load_job(f) for f in folders]
    varied = varied_overrides(jobs)
    for job in jobs:
        job.label = ", ".join(f"{_short(k)}={v}" for k, v in varied[job.num].items()) or job.path.name
    return jobs


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def varied_overrides(jobs: list[Job]) -> dict[int, dict[str, str]]:
    """Per job: the overrides whose value is not the same in every job, in command-line order."""
    parsed = {j.num: dict(_split(o) for o in j.overrides) for j in jobs}
    keys: list[str] = []
    for j in jobs:
        for o in j.overrides:
            k = _split(o)[0]
            if k not in keys:
                keys.append(k)
    varied = [k for k in keys if len({parsed[j.num].get(k) for j in jobs}) > 1]
    return {j.num: {k: parsed[j.num].get(k, "-") for k in varied} for j in jobs}


def _short(key: str) -> str:
    return key.removeprefix("experiment/")


def lesson_of(jobs: list[Job]) -> str | None:
    names = set()
    for j in jobs:
        name = j.choices.get("experiment")
        if name is None:
            name = next((v for k, v in map(_split, j.overrides) if k == "experiment"), None)
        if name not in (None, "null", "None"):
            names.add(str(name))
    return names.pop() if len(names) == 1 else None


# ------------------------------------------------------------------ numbers -> words
def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def tolerance(jobs: list[Job], a: float | None, b: float | None = None) -> float:
    """Two standard errors of the difference of two validation accuracies a and b: smaller
    differences are noise on a validation set this size (at least one example)."""
    n = min((j.val_size for j in jobs if j.val_size), default=None)
    if not n:
        return 0.01
    var = 0.0
    for p in (a, b if b is not None else a):
        p = min(max(p if p is not None else 0.5, 1.0 / n), 1 - 1.0 / n)
        var += p * (1 - p) / n
    return max(2 * math.sqrt(var), 1.0 / n)


def compare_acc(a: float | None, b: float | None, jobs: list[Job]) -> str:
    """'higher' / 'lower' / 'the same within noise' for a relative to b."""
    if a is None or b is None:
        return "not comparable"
    tol = tolerance(jobs, a, b)
    if abs(a - b) <= tol:
        return f"the same within noise: {100 * (a - b):+.1f} points, noise ±{100 * tol:.1f}"
    return f"{'higher' if a > b else 'lower'} by {100 * abs(a - b):.1f} points, beyond the noise of ±{100 * tol:.1f}"


def same_within_noise(a: float | None, b: float | None, jobs: list[Job]) -> bool:
    return a is not None and b is not None and abs(a - b) <= tolerance(jobs, a, b)


def pick_threshold(jobs: list[Job]) -> float:
    """The highest of 95/90/75/50% validation accuracy that some job reaches."""
    best = max((j.best_val_acc() or 0.0 for j in jobs), default=0.0)
    return next((t for t in (0.95, 0.9, 0.75, 0.5) if best >= t), 0.5)


def _epochs(e: int | None) -> str:
    return "never reached" if e is None else f"reached after {e} epoch{'s' if e != 1 else ''}"


@dataclass
class Finding:
    verdict: str  # reproduced, not reproduced, partly reproduced, not testable
    lines: list[str]


def _by(jobs: list[Job], fn: Callable[[Job], Any]) -> dict[Any, Job]:
    out: dict[Any, Job] = {}
    for j in jobs:
        out.setdefault(fn(j), j)
    return out


def check_dropout(jobs: list[Job]) -> Finding:
    by = _by(jobs, lambda j: float(j.cfg("reg.dropout", 0.0) or 0.0))
    if len(by) < 2:
        return Finding("not testable", ["Every job used the same dropout; nothing to compare."])
    lo, hi = by[min(by)], by[max(by)]

    def gaps(j: Job) -> tuple[float | None, float | None]:
        ta, va, tl, vl = j.last_epoch("train/acc"), j.final("val/acc"), j.last_epoch("train/loss"), j.final("val/loss")
        return (None if ta is None or va is None else ta - va), (None if tl is None or vl is None else vl - tl)

    (ga_lo, gl_lo), (ga_hi, gl_hi) = gaps(lo), gaps(hi)
    lines = [f"Dropout {min(by):g}: train acc (last epoch) {pct(lo.last_epoch('train/acc'))}, val acc "
             f"{pct(lo.final('val/acc'))}, gap {num(ga_lo and 100 * ga_lo, '+.1f')} points; val loss − train loss "
             f"{num(gl_lo)}.",
             f"Dropout {max(by):g}: train acc (last epoch) {pct(hi.last_epoch('train/acc'))}, val acc "
             f"{pct(hi.final('val/acc'))}, gap {num(ga_hi and 100 * ga_hi, '+.1f')} points; val loss − train loss "
             f"{num(gl_hi)}."]
    acc_shrank = ga_lo is not None and ga_hi is not None and ga_hi < ga_lo
    loss_shrank = gl_lo is not None and gl_hi is not None and gl_hi < gl_lo
    val = compare_acc(hi.final("val/acc"), lo.final("val/acc"), jobs)
    lines.append(f"The accuracy gap {'shrank' if acc_shrank else 'did not shrink'} and the loss gap "
                 f"{'shrank' if loss_shrank else 'did not shrink'} with dropout; the final validation accuracy "
                 f"with dropout is {val}.")
    vl_lo, vl_hi = lo.final("val/loss"), hi.final("val/loss")
    if vl_lo is not None and vl_hi is not None:
        why = ("; the loss gap shrank because the training loss rose, not because the validation loss fell"
               if loss_shrank and vl_hi >= vl_lo else "")
        lines.append(f"Validation loss: {vl_hi:.4f} with dropout vs {vl_lo:.4f} without "
                     f"({'lower' if vl_hi < vl_lo else 'not lower'}){why}.")
    lines.append("Training accuracy and loss are measured on the training batches in training mode, i.e. "
                 "with dropout active, as the course's curves are.")
    verdict = ("reproduced" if acc_shrank and loss_shrank else
               "partly reproduced" if acc_shrank or loss_shrank else "not reproduced")
    return Finding(verdict, lines)


def check_batchnorm(jobs: list[Job]) -> Finding:
    by = _by(jobs, lambda j: bool(j.cfg("reg.batchnorm", False)))
    if len(by) < 2:
        return Finding("not testable", ["Every job used the same reg.batchnorm; nothing to compare."])
    off, on = by[False], by[True]
    thr = pick_threshold(jobs)
    e_on, e_off = on.epochs_to(thr), off.epochs_to(thr)
    curves = {k: dict(j.val_acc_by_epoch()) for k, j in by.items()}
    early = sorted(set(curves[True]) & set(curves[False]))[:3]
    lines = [f"{pct(thr)} validation accuracy: {_epochs(e_on)} with batchnorm, {_epochs(e_off)} without.",
             "Validation accuracy after epoch " + "; ".join(
                 f"{e}: {pct(curves[True][e])} with vs {pct(curves[False][e])} without" for e in early) + ".",
             f"Final: {pct(on.final('val/acc'))} with batchnorm vs {pct(off.final('val/acc'))} without "
             f"({compare_acc(on.final('val/acc'), off.final('val/acc'), jobs)})."]
    ahead = [curves[True][e] - curves[False][e] > tolerance(jobs, curves[True][e], curves[False][e]) for e in early]
    behind = [curves[False][e] - curves[True][e] > tolerance(jobs, curves[True][e], curves[False][e]) for e in early]
    sooner = e_on is not None and (e_off is None or e_on < e_off)
    later = e_off is not None and (e_on is None or e_off < e_on)
    if sooner and not any(behind):
        verdict = "reproduced"
    elif sooner or (any(ahead) and not later):
        verdict = "partly reproduced"
    else:
        verdict = "not reproduced"
    if not sooner and not later and any(ahead):
        lines.append(f"Both reach {pct(thr)} in the same epoch: batchnorm is ahead by more than the noise only in "
                     f"epoch {', '.join(str(e) for e, a in zip(early, ahead, strict=True) if a)}.")
    return Finding(verdict, lines)


def _learned(j: Job) -> str:
    best = j.best_val_acc() or 0.0
    return "learns" if best >= 0.8 else "stalls" if best < 3 * CHANCE else "learns partly"


def check_init_depth(jobs: list[Job]) -> Finding:
    by = _by(jobs, lambda j: (j.cfg("model.activation"), str(j.cfg("init.name", ""))))
    lines, verdicts = [], []
    depth = jobs[0].cfg("model.depth")
    for (act, init), j in sorted(by.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        step, _ = j.first_grad_norms()
        lines.append(f"{act} + {init} (depth {depth}): {_learned(j)}: best val acc {pct(j.best_val_acc())}, final "
                     f"train loss {num(j.last_epoch('train/loss'))} (chance: {math.log(1 / CHANCE):.3f}); at step "
                     f"{step} the median layer's gradient norm is {num(j.median_grad(), '.2e')} and the first "
                     f"layer's is {num(j.grad_ratio(), '.2e')} x the last layer's.")
    relu_k = next((j for (a, i), j in by.items() if a == "relu" and i.startswith("kaiming")), None)
    relu_x = next((j for (a, i), j in by.items() if a == "relu" and i.startswith("xavier")), None)
    if relu_k and relu_x:
        ok = _learned(relu_k) == "learns" and _learned(relu_x) == "stalls"
        verdicts.append(ok)
        lines.append(f"Deep ReLU: Kaiming {_learned(relu_k)}, Xavier {_learned(relu_x)}: "
                     + ("as the course says." if ok else "not what the course says."))
        if relu_k.median_grad() and relu_x.median_grad():
            lines.append(f"At the first step Xavier's median layer gradient is "
                         f"{relu_k.median_grad() / relu_x.median_grad():.2g}x smaller than Kaiming's.")
    sigmoid = [j for (a, _), j in by.items() if a == "sigmoid"]
    for j in sigmoid:
        ratio = j.grad_ratio()
        ok = ratio is not None and ratio < 0.1
        verdicts.append(ok)
        lines.append(f"Deep sigmoid ({j.cfg('init.name')}): the first layer's gradient is {num(ratio, '.2e')} x the "
                     f"last layer's at the first step: "
                     + ("vanishing toward the input, as the course says." if ok else "no vanishing by 10x or more."))
    if not verdicts:
        return Finding("not testable", lines + ["No ReLU Kaiming/Xavier pair or sigmoid job to compare."])
    verdict = "reproduced" if all(verdicts) else "partly reproduced" if any(verdicts) else "not reproduced"
    return Finding(verdict, lines)


def check_schedulers(jobs: list[Job]) -> Finding:
    by = _by(jobs, lambda j: str(j.cfg("sched.name", "none")))
    base = by.get("none")
    lines = []
    for name, j in by.items():
        lines.append(f"{name}: final val acc {pct(j.final('val/acc'))} (best {pct(j.best_val_acc())}), train loss "
                     f"(last epoch) {num(j.last_epoch('train/loss'), '.4f')}, "
                     f"final LR {num(j.final('opt/lr'), '.2e')}.")
    if base is None:
        return Finding("not testable", lines + ["No constant-LR job (sched=none) to compare the schedules with."])
    results = []
    for name, j in by.items():
        if name == "none":
            continue
        lower = (j.last_epoch("train/loss") or math.inf) < (base.last_epoch("train/loss") or math.inf)
        acc_ok = (j.final("val/acc") or 0) >= (base.final("val/acc") or 0) or same_within_noise(
            j.final("val/acc"), base.final("val/acc"), jobs)
        results.append(lower and acc_ok)
        lines.append(f"{name} vs constant: training loss {'lower' if lower else 'not lower'}, validation accuracy "
                     f"{compare_acc(j.final('val/acc'), base.final('val/acc'), jobs)}.")
    if all(same_within_noise(j.final("val/acc"), base.final("val/acc"), jobs) for n, j in by.items() if n != "none"):
        where = ("it shows in the training loss, not in accuracy" if results and all(results) else
                 "it shows in the training loss of some schedules only" if any(results) else
                 "it does not show in the training loss either")
        lines.append("No schedule changes the final validation accuracy by more than the noise of this validation "
                     f"set; {where}.")
    verdict = ("not testable" if not results else "reproduced" if all(results) else
               "partly reproduced" if any(results) else "not reproduced")
    return Finding(verdict, lines)


def check_optimizers(jobs: list[Job]) -> Finding:
    def kind(j: Job) -> str:
        name = str(j.cfg("optim.name", ""))
        if name == "sgd":
            return "sgd+momentum" if float(j.cfg("optim.momentum", 0) or 0) > 0 else "sgd"
        return name

    by = _by(jobs, kind)
    thr = pick_threshold(jobs)
    lines = []
    for name, j in by.items():
        lines.append(f"{name} (lr {j.cfg('optim.lr')}): {pct(thr)} val acc {_epochs(j.epochs_to(thr))}; "
                     f"after epoch 1 {pct((j.val_acc_by_epoch() or [(0, None)])[0][1])}; final "
                     f"{pct(j.final('val/acc'))}; train loss (last epoch) {num(j.last_epoch('train/loss'), '.4f')}.")

    def faster(a: str, b: str) -> bool | None:
        if a not in by or b not in by:
            return None
        ea, eb = by[a].epochs_to(thr), by[b].epochs_to(thr)
        if ea is not None and (eb is None or ea < eb):
            return True
        if ea is not None and ea == eb:
            return (by[a].last_epoch("train/loss") or math.inf) < (by[b].last_epoch("train/loss") or math.inf)
        return False

    checks = {"momentum speeds SGD up": faster("sgd+momentum", "sgd"),
              "Adam is faster than plain SGD": faster("adam", "sgd"),
              "AdamW is faster than plain SGD": faster("adamw", "sgd")}
    if "adam" in by and "adamw" in by:
        checks["AdamW ends about where Adam does"] = same_within_noise(by["adam"].final("val/acc"),
                                                                       by["adamw"].final("val/acc"), jobs)
    results = {k: v for k, v in checks.items() if v is not None}
    for k, v in results.items():
        lines.append(f"{k}: {'yes' if v else 'no'}.")
    verdict = ("not testable" if not results else "reproduced" if all(results.values()) else
               "partly reproduced" if any(results.values()) else "not reproduced")
    return Finding(verdict, lines)


def check_skip(jobs: list[Job]) -> Finding:
    by = _by(jobs, lambda j: (bool(j.cfg("reg.batchnorm", False)), bool(j.cfg("model.skip", True))))
    thr = pick_threshold(jobs)
    blocks = jobs[0].cfg("model.stages", 0) * jobs[0].cfg("model.blocks", 0)
    lines, results = [], []
    for bn in sorted({k[0] for k in by}):
        skip, plain = by.get((bn, True)), by.get((bn, False))
        where = f"{'with' if bn else 'without'} batchnorm"
        for name, j in (("skip", skip), ("plain", plain)):
            if j is not None:
                lines.append(f"{where}, {name} ({blocks} blocks, {2 * blocks + 2} weight layers): {_learned(j)}: "
                             f"{pct(thr)} val acc {_epochs(j.epochs_to(thr))}, final val acc "
                             f"{pct(j.final('val/acc'))}, train loss (last epoch) "
                             f"{num(j.last_epoch('train/loss'), '.4f')}; first/last layer gradient at the first step "
                             f"{num(j.grad_ratio(), '.2e')}.")
        if skip is None or plain is None:
            continue
        loss_s, loss_p = skip.last_epoch("train/loss"), plain.last_epoch("train/loss")
        ok = loss_s is not None and (loss_p is None or loss_s < loss_p)
        r_s, r_p = skip.grad_ratio(), plain.grad_ratio()
        fading = r_s is not None and r_p is not None and r_p < 0.1 * r_s
        if ok and r_s is not None and r_p is not None and not fading:
            lines.append(f"{where}: the plain net's gradients do not fade toward the input (first/last layer "
                         f"{num(r_p, '.2e')} vs {num(r_s, '.2e')} with skips), yet it trains worse: here the course's "
                         "explanation does not hold; this is the degradation He et al. (2016) describe, not "
                         "vanishing gradients.")
        results.append("yes" if ok and fading else "partly" if ok else "no")
        lines.append(f"{where}: the plain net's training loss is "
                     f"{'higher' if ok else 'not higher'} than the skip net's ({num(loss_p, '.4f')} vs "
                     f"{num(loss_s, '.4f')}); its validation accuracy is "
                     f"{compare_acc(plain.final('val/acc'), skip.final('val/acc'), jobs)}.")
    if not results:
        return Finding("not testable", lines + ["No pair of jobs with and without skip connections."])
    verdict = ("reproduced" if all(r == "yes" for r in results) else
               "not reproduced" if all(r == "no" for r in results) else "partly reproduced")
    return Finding(verdict, lines)


CHECKS: dict[str, Callable[[list[Job]], Finding]] = {
    "dropout": check_dropout, "batchnorm": check_batchnorm, "init_depth": check_init_depth,
    "schedulers": check_schedulers, "optimizers": check_optimizers, "skip": check_skip,
}


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
    head = ["job", *(_short(k) for k in keys), "status", "epochs", "val acc", "best val acc",
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


USAGE = "usage: expkit report SWEEP_DIR [--out DIR] [--lesson NAME]"


def main(args: list[str]) -> int:
    args = list(args)
    opts: dict[str, str] = {}
    for flag in ("--out", "--lesson"):
        if flag in args:
            i = args.index(flag)
            if i + 1 >= len(args):
                print(f"expkit report: {flag} needs a value\n{USAGE}", file=sys.stderr)
                return 2
            opts[flag] = args[i + 1]
            del args[i:i + 2]
    if len(args) != 1 or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        png, md = report(args[0], opts.get("--out"), opts.get("--lesson"))
    except ReportError as e:
        print(f"expkit report: {e}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"wrote {png} and {md}")
    return 0
