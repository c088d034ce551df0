"""Each lesson's claim, as the course states it, and the check that decides from a sweep's
numbers whether the sweep reproduced it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from expkit.lessons.jobs import CHANCE, Job

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


