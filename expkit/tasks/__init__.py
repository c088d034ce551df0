"""Tasks: the one place that knows what a model's output means. A task gives the training
loss, scores a whole split (summed across DDP ranks, so that it equals a one-process
evaluation), and turns outputs into predictions in the targets' own units.

    classification   cross-entropy (reg.label_smoothing); acc, top-k acc (task.topk)
    regression       mse, l1 or huber (task.loss) on standardized targets; mae, rmse, r2
                     in the targets' units (each averaged over the targets)
    multilabel       BCE-with-logits; f1_micro, f1_macro at task.threshold, map (mean
                     average precision over the labels that have a positive example)
    python           task.factory: your loss, and your metrics over the whole split

Scoring keeps every sum on the device until `result()`, which makes one host sync.
`expkit.tasks.names` is torch-free (config validation and the sweep resolvers use it), so
this package imports its torch parts only when they are asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from expkit.tasks.base import Scorer, Task

__all__ = ["Scorer", "Task", "build_task"]


def __getattr__(name: str):
    if name in ("Scorer", "Task"):
        from expkit.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_task(typed: dict[str, Any], data: Any) -> Task:
    """The run's task, for its data (regression needs the targets' statistics)."""
    from expkit.tasks.builtin import Classification, Multilabel, Regression

    cfg = typed["task"]
    if cfg.name == "classification":
        return Classification(data.num_classes, cfg.topk, typed["reg"].label_smoothing)
    if cfg.name == "regression":
        targets = data.targets
        return Regression(cfg.loss, cfg.huber_delta, targets.mean, targets.std, targets.names)
    if cfg.name == "multilabel":
        return Multilabel(data.outputs, cfg.threshold, data.classes)
    from expkit.tasks.own import OwnTask

    return OwnTask(cfg)
