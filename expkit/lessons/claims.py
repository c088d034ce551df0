"""Each lesson's claim, as the course states it, and the check that decides from a sweep's
numbers whether the sweep reproduced it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from expkit.config.schema import resolve_norm
from expkit.lessons.jobs import CHANCE, Job, arms
from expkit.lessons.stats import Comparison, overall

PANELS = {
    "dropout": ["loss_train_val", "acc_train_val"],
    "batchnorm": ["val_acc", "train_loss"],
    "init_depth": ["grad_layers", "train_loss", "val_acc"],
    "schedulers": ["lr", "train_loss", "val_acc"],
    "optimizers": ["train_loss", "val_acc"],
    "skip": ["grad_layers", "train_loss", "val_acc"],
    "grad_clip": ["grad_norm", "train_loss", "val_acc"],
}
GENERIC_PANELS = ["loss_train_val", "val_acc"]
CLAIMS = {
    "dropout": "Dropout regularizes an over-parameterized network trained on a small training set (Srivastava et "
               "al. 2014): with dropout 0.5 the validation accuracy is higher and the validation loss lower than "
               "without dropout.",
    "batchnorm": "Batch normalization makes training faster and allows a higher learning rate (Ioffe & Szegedy "
                 "2015): at a high learning rate the network with batchnorm reaches a given validation accuracy "
                 "in fewer epochs.",
    "init_depth": "Init matters in deep nets (He et al. 2015, \"Delving Deep into Rectifiers\"): a deep plain "
                  "ReLU net learns with Kaiming init and stalls with Xavier init, whose signal and gradients "
                  "shrink layer by layer; in a deep sigmoid net the gradients vanish toward the input layers.",
    "schedulers": "Decaying the learning rate lets SGD settle: at a fixed step budget a decaying schedule ends "
                  "with a lower training loss than a constant learning rate.",
    "optimizers": "Momentum speeds plain SGD up; Adam and AdamW converge faster than plain SGD at their usual "
                  "learning rates; decoupled weight decay (AdamW) ends with a lower validation loss than the same "
                  "coefficient applied as L2 in Adam (Loshchilov & Hutter 2019).",
    "skip": "Skip connections let a deep CNN train (He et al. 2016, Fig. 1 and 6): without them a deeper plain "
            "network ends with a higher training loss than a shallower one (degradation), with and without "
            "batchnorm; with them the deep network trains.",
    "grad_clip": "Exploding gradients are tamed by gradient clipping and by a lower learning rate: at a learning "
                 "rate where plain SGD blows up, clipping the gradient norm, or a lower learning rate, ends with "
                 "a higher validation accuracy.",
}
SHORT = {  # one line each, for `expkit lesson --list`
    "dropout": "dropout 0.5 beats no dropout in val acc and loss on a small training set",
    "batchnorm": "batchnorm reaches a target val acc in fewer epochs at a high LR",
    "init_depth": "a deep ReLU net learns with Kaiming init, stalls with Xavier; sigmoid gradients vanish",
    "schedulers": "a decaying LR ends a fixed step budget with a lower training loss than a constant LR",
    "optimizers": "momentum, Adam, AdamW beat plain SGD; AdamW beats Adam + L2 at the same coefficient",
    "skip": "a deeper plain CNN trains worse than a shallower one; skip connections fix it",
    "grad_clip": "clipping or a lower LR tames exploding gradients (higher val acc than a blown-up run)",
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
    by = _by(jobs, lambda j: norm_of(j) == "batch")
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
    deepest = max(int(j.cfg("model.blocks", 0) or 0) for j in jobs)
    jobs = [j for j in jobs if int(j.cfg("model.blocks", 0) or 0) == deepest]  # the words are for the deep nets
    by = _by(jobs, lambda j: (norm_of(j) == "batch", bool(j.cfg("model.skip", True))))
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




# ------------------------------------------------------------------ seeds and statistics
# Each lesson's claim as comparisons of two arms (jobs that differ only in their seed) on one
# number per seed; lessons/stats.py decides each by its stated rule.
def val_acc(j: Job) -> float | None:
    """The final validation accuracy; a run that diverged (failed) counts as chance: its network
    predicts nothing."""
    return CHANCE if j.status == "failed" else j.final("val/acc")


def val_auc(j: Job) -> float | None:
    """The mean validation accuracy over the epochs (the area under the curve): how fast a run learns."""
    points = [v for _, v in j.val_acc_by_epoch()]
    epochs = int(j.cfg("trainer.epochs", 0) or len(points) or 1)
    if not points:
        return CHANCE if j.status == "failed" else None
    points += [CHANCE if j.status == "failed" else points[-1]] * max(epochs - len(points), 0)
    return sum(points) / len(points)


def epochs_to(threshold: float) -> Callable[[Job], float | None]:
    def fn(j: Job) -> float | None:
        e = j.epochs_to(threshold)  # never reached: counted as one epoch past the last
        return float(e) if e is not None else float(int(j.cfg("trainer.epochs", 0) or 0) + 1)
    return fn


def acc_after_first(j: Job) -> float | None:
    points = j.val_acc_by_epoch()
    return points[0][1] if points else (CHANCE if j.status == "failed" else None)


def log_grad_ratio(j: Job) -> float | None:
    r = j.grad_ratio()
    return math.log10(max(r, 1e-45)) if r is not None else None


def train_loss(j: Job) -> float | None:
    return j.last_epoch("train/loss")


def final_val_loss(j: Job) -> float | None:
    return j.final("val/loss")


def _pick(groups: dict[str, list[Job]], pred: Callable[[Job], bool]) -> tuple[str, list[Job]] | None:
    return next(((k, v) for k, v in groups.items() if pred(v[0])), None)


def _cmp(claim: str, metric: str, fn: Callable[[Job], float | None], arm, base, higher: bool,
         min_effect: float = 0.0) -> Comparison | None:
    if arm is None or base is None or arm[0] == base[0]:
        return None
    return Comparison(claim, metric, arm[0], base[0], [fn(j) for j in arm[1]], [fn(j) for j in base[1]], higher,
                      min_effect)


# Training losses of nets that both stall sit at ln 10 = 2.303 and differ by noise.
STALLED_LOSS_NOISE = 0.05


def norm_of(j: Job) -> str:
    """The job's normalization, reg.batchnorm (the old key, swept by the lessons) read as its alias."""
    return resolve_norm(j.cfg("reg.norm"), j.cfg("reg.batchnorm"))


def compare_dropout(groups: dict[str, list[Job]]) -> list[Comparison | None]:
    rates = sorted({float(g[0].cfg("reg.dropout", 0.0) or 0.0) for g in groups.values()})
    lo = _pick(groups, lambda j: float(j.cfg("reg.dropout", 0.0) or 0.0) == rates[0])
    hi = _pick(groups, lambda j: float(j.cfg("reg.dropout", 0.0) or 0.0) == rates[-1])
    return [_cmp("dropout raises the final validation accuracy", "val acc", val_acc, hi, lo, True),
            _cmp("dropout lowers the final validation loss", "val loss", final_val_loss, hi, lo, False)]


def compare_batchnorm(groups: dict[str, list[Job]]) -> list[Comparison | None]:
    jobs = [j for g in groups.values() for j in g]
    thr = pick_threshold(jobs)
    on = _pick(groups, lambda j: norm_of(j) != "none")
    off = _pick(groups, lambda j: norm_of(j) == "none")
    return [_cmp(f"with batchnorm the network reaches {pct(thr)} validation accuracy in fewer epochs",
                 f"epochs to {pct(thr)}", epochs_to(thr), on, off, False),
            _cmp("with batchnorm the validation accuracy after the first epoch is higher", "val acc after epoch 1",
                 acc_after_first, on, off, True)]


def compare_init_depth(groups: dict[str, list[Job]]) -> list[Comparison | None]:
    def arm(act: str, init: str):
        return _pick(groups, lambda j: j.cfg("model.activation") == act
                     and str(j.cfg("init.name", "")).startswith(init))

    relu_k = arm("relu", "kaiming")
    out = [_cmp("the deep ReLU net learns with Kaiming init and stalls with Xavier init", "best val acc",
                lambda j: j.best_val_acc(), relu_k, arm("relu", "xavier"), True)]
    for init in ("xavier", "kaiming"):
        out.append(_cmp("in the deep sigmoid net the gradients fade toward the input: its first layer's gradient is "
                        "a smaller share of the last layer's than in the ReLU + Kaiming net",
                        "log10 first/last layer gradient", log_grad_ratio, arm("sigmoid", init), relu_k, False))
    return out


def compare_schedulers(groups: dict[str, list[Job]]) -> list[Comparison | None]:
    base = _pick(groups, lambda j: str(j.cfg("sched.name", "none")) == "none")
    return [_cmp(f"{g[0].cfg('sched.name')} ends the same step budget with a lower training loss than a constant LR",
                 "train loss (last epoch)", train_loss, (k, g), base, False)
            for k, g in groups.items() if str(g[0].cfg("sched.name", "none")) != "none"]


def optimizer_kind(j: Job) -> str:
    name = str(j.cfg("optim.name", ""))
    if name == "sgd":
        return "sgd+momentum" if float(j.cfg("optim.momentum", 0) or 0) > 0 else "sgd"
    if name == "adam" and float(j.cfg("optim.weight_decay", 0) or 0) > 0:
        return "adam+L2"
    return name


def compare_optimizers(groups: dict[str, list[Job]]) -> list[Comparison | None]:
    def arm(kind: str):
        return _pick(groups, lambda j: optimizer_kind(j) == kind)

    auc = "mean val acc over the epochs"
    return [_cmp("momentum speeds plain SGD up", auc, val_auc, arm("sgd+momentum"), arm("sgd"), True),
            _cmp("Adam converges faster than plain SGD", auc, val_auc, arm("adam"), arm("sgd"), True),
            _cmp("AdamW converges faster than plain SGD", auc, val_auc, arm("adamw"), arm("sgd"), True),
            _cmp("decoupled weight decay (AdamW) ends with a lower validation loss than the same coefficient as "
                 "L2 in Adam (Loshchilov & Hutter 2019)", "val loss", final_val_loss, arm("adamw"), arm("adam+L2"),
                 False)]


def compare_skip(groups: dict[str, list[Job]]) -> list[Comparison | None]:
    out: list[Comparison | None] = []
    for bn in sorted({norm_of(g[0]) != "none" for g in groups.values()}):
        mine = {k: g for k, g in groups.items() if (norm_of(g[0]) != "none") == bn}
        blocks = sorted({int(g[0].cfg("model.blocks", 0)) for g in mine.values()})
        where = "with batchnorm" if bn else "without batchnorm"

        def arm(skip: bool, n: int, mine=mine):
            return _pick(mine, lambda j: bool(j.cfg("model.skip", True)) == skip and int(j.cfg("model.blocks", 0)) == n)

        deep, shallow = blocks[-1], blocks[0]
        if shallow != deep:
            out.append(_cmp(f"{where}: the deep plain net ({deep} blocks per stage) ends with a higher training loss "
                            f"than the shallower plain net ({shallow}): degradation", "train loss (last epoch)",
                            train_loss, arm(False, deep), arm(False, shallow), True, STALLED_LOSS_NOISE))
        out.append(_cmp(f"{where}: skip connections fix the deep net (lower training loss than without them)",
                        "train loss (last epoch)", train_loss, arm(True, deep), arm(False, deep), False,
                        STALLED_LOSS_NOISE))
    return out


def compare_grad_clip(groups: dict[str, list[Job]]) -> list[Comparison | None]:
    lrs = sorted({float(g[0].cfg("optim.lr")) for g in groups.values()})

    def arm(lr: float, clipped: bool):
        return _pick(groups, lambda j: float(j.cfg("optim.lr")) == lr
                     and (j.cfg("reg.grad_clip") is not None) == clipped)

    base = arm(lrs[-1], False)
    return [_cmp(f"at lr {lrs[-1]:g}, clipping the gradient norm ends with a higher validation accuracy than no "
                 "clipping", "val acc (diverged = chance)", val_acc, arm(lrs[-1], True), base, True),
            _cmp(f"a lower lr ({lrs[0]:g}, no clipping) ends with a higher validation accuracy than lr {lrs[-1]:g}",
                 "val acc (diverged = chance)", val_acc, arm(lrs[0], False), base, True)]


def check_grad_clip(jobs: list[Job]) -> Finding:
    lines = []
    for j in jobs:
        peak = max((v for _, v in j.scalars.get("grad/norm", [])), default=None)
        lines.append(f"lr {j.cfg('optim.lr')}, clip {j.cfg('reg.grad_clip')}: {j.status}, final val acc "
                     f"{pct(j.final('val/acc'))}; largest gradient norm before clipping {num(peak, '.2e')}.")
    return Finding("inconclusive", lines)


COMPARISONS: dict[str, Callable[[dict[str, list[Job]]], list[Comparison | None]]] = {
    "dropout": compare_dropout, "batchnorm": compare_batchnorm, "init_depth": compare_init_depth,
    "schedulers": compare_schedulers, "optimizers": compare_optimizers, "skip": compare_skip,
    "grad_clip": compare_grad_clip,
}
CHECKS["grad_clip"] = check_grad_clip


@dataclass
class Verdict:
    verdict: str
    comparisons: list[Comparison]
    details: list[str]


def judge(lesson: str, jobs: list[Job]) -> Verdict:
    """The lesson's comparisons over its arms, the verdict by lessons/stats.py's rule, and the
    lesson's descriptive lines for one seed of each arm."""
    found = [c for c in COMPARISONS[lesson](arms(jobs)) if c is not None]
    details = CHECKS[lesson](first_seed(jobs)).lines
    return Verdict(overall(found), found, details)


def first_seed(jobs: list[Job]) -> list[Job]:
    return [g[0] for g in arms(jobs).values()]
