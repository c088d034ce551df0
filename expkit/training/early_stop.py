"""The monitored validation metric: it picks best.pt and, with trainer.early_stop.patience
set, stops training after that many evaluations without an improvement of more than
trainer.early_stop.min_delta. Its state is in every checkpoint, so a resumed run stops at
the same epoch as one that never stopped."""

from __future__ import annotations

import math
from typing import Any

from expkit.tasks.names import lower_is_better, main_metric


def resolve_monitor(typed: dict[str, Any]) -> str:
    """trainer.early_stop.monitor, or the sweep's metric when it is a validation metric
    (`best/val/acc` counts as val/acc), else the task's main metric (val/acc, val/rmse, ...)."""
    chosen = typed["trainer"].early_stop.monitor
    if chosen:
        return chosen
    task = typed["task"].name if "task" in typed else "classification"
    metric = str(typed["sweep"].metric).removeprefix("best/") if "sweep" in typed else main_metric(task)
    return metric if metric.startswith("val/") else main_metric(task)


class EarlyStop:
    def __init__(self, monitor: str, patience: int | None, min_delta: float):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.lower = lower_is_better(monitor)
        self.best: float | None = None  # the best value so far (best.pt holds its weights)
        self.best_epoch: int | None = None
        self.reference: float | None = None  # the value of the last improvement by more than min_delta
        self.wait = 0  # evaluations since then
        self.stopped_epoch: int | None = None

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    def _better(self, value: float, than: float | None, margin: float = 0.0) -> bool:
        if not math.isfinite(value):
            return False
        if than is None:
            return True
        return value < than - margin if self.lower else value > than + margin

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Record one evaluation; True when it is the best so far (write best.pt)."""
        value = float(metrics[self.monitor])
        improved = self._better(value, self.best)
        if improved:
            self.best, self.best_epoch = value, epoch
        if self._better(value, self.reference, self.min_delta):
            self.reference, self.wait = value, 0
        else:
            self.wait += 1
        if self.should_stop() and self.stopped_epoch is None:
            self.stopped_epoch = epoch
        return improved

    def should_stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience

    def record(self, epochs: int) -> dict[str, Any] | None:
        """meta.json's `stopped_early`, when training stopped before its last epoch."""
        if self.stopped_epoch is None or self.stopped_epoch >= epochs:
            return None
        return {"epoch": self.stopped_epoch, "best": self.best, "best_epoch": self.best_epoch,
                "monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta}

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch,
                "reference": self.reference, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any] | None, best_acc: float | None = None) -> None:
        """`best_acc`: a checkpoint from before early stopping existed knows only the best val/acc."""
        if not state or state.get("monitor") != self.monitor:
            if self.monitor == "val/acc" and best_acc is not None and math.isfinite(best_acc):
                self.best = self.reference = best_acc
            return
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.reference, self.wait = state["reference"], state["wait"]
        # A patience raised on resume lets a stopped run go on.
        self.stopped_epoch = state["stopped_epoch"] if self.should_stop() else None
