"""What each task's metrics are called and which way is better, without torch: config
validation (sweep.metric, trainer.early_stop.monitor, sched.monitor), Optuna's direction,
and the commands that read run folders (runs, summary, compare) all ask here.

A metric's full name is `<split>/<name>`: `val/rmse`, `test/r2`, `train/loss`, and
`best/<monitor>` for the best evaluation of the monitored one."""

from __future__ import annotations

TASKS = ("classification", "regression", "multilabel", "python")
# Each task's own metrics (of an evaluated split) and whether higher is better.
OWN_METRICS: dict[str, dict[str, bool]] = {
    "classification": {"acc": True, "loss": False},
    "regression": {"rmse": False, "mae": False, "r2": True, "loss": False},
    "multilabel": {"map": True, "f1_micro": True, "f1_macro": True, "loss": False},
    "python": {"loss": False},
}
# The metric that picks best.pt, stops early and that a sweep optimizes, unless set.
MAIN = {"classification": "acc", "regression": "rmse", "multilabel": "map", "python": "loss"}
# Own metrics (task=python) are lower-is-better when their name ends in one of these.
LOWER_IS_BETTER_SUFFIXES = ("loss", "error", "err", "mae", "mse", "rmse", "mape", "nll")


def topk_name(k: int) -> str:
    return f"top{k}_acc"


def split_metrics(task: str, topk: int = 0, own: tuple[str, ...] = ()) -> dict[str, bool]:
    """name -> higher is better, for one evaluated split (val, test)."""
    names = dict(OWN_METRICS.get(task, OWN_METRICS["python"]))
    if task == "classification" and topk:
        names[topk_name(topk)] = True
    for name in own:
        names.setdefault(name, not lower_is_better(name))
    return names


def main_metric(task: str) -> str:
    return f"val/{MAIN.get(task, 'loss')}"


def full_names(task: str, topk: int = 0, own: tuple[str, ...] = ()) -> list[str]:
    """Every key a run of this task can have in metrics.json (besides epoch and step)."""
    per_split = split_metrics(task, topk, own)
    train = ["train/loss"] + (["train/acc"] if task == "classification" else [])
    return ([f"val/{n}" for n in per_split] + [f"best/{main_metric(task)}"] + train
            + [f"test/{n}" for n in per_split])


def lower_is_better(metric: str) -> bool:
    """By the metric's last name part: losses and errors are minimized, the rest
    (accuracies, F1, average precision, R²) maximized."""
    name = str(metric).rsplit("/", 1)[-1].lower()
    for by_name in OWN_METRICS.values():
        if name in by_name:
            return not by_name[name]
    return name.endswith(LOWER_IS_BETTER_SUFFIXES)


def direction(metric: str) -> str:
    """Optuna's word for it."""
    return "minimize" if lower_is_better(metric) else "maximize"
