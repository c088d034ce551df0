"""What a data set's targets are, checked against the task that will learn them:

    classification   int64 class indices (N,)                      the model outputs one score per class
    regression       numbers (N,) or (N, k), standardized with the  one number per target
                     training split's mean and std
    multilabel       0/1 (N, L): any number of labels per example   one score per label
    python           as the data gives them (own loss)              one per target column, or per class

A wrong pairing (numbers with classification, class indices with regression) is bad input
that names the keys. Regression targets are standardized here, like inputs are normalized,
and their statistics travel with the run (meta.json, checkpoints), so that every reported
number and prediction is in the targets' own units."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from expkit.errors import ConfigError


@dataclass
class Targets:
    task: str
    outputs: int  # the model's output width
    names: list[str] = field(default_factory=list)  # regression: the targets; multilabel: the labels
    mean: list[float] | None = None  # regression: per target, of the training split
    std: list[float] | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "outputs": self.outputs}
        if self.task != "classification":
            out["targets"] = list(self.names)
        if self.mean is not None:
            out.update(target_mean=list(self.mean), target_std=list(self.std))
        return out


def _key(cfg) -> str:
    return {"python": "data.factory", "csv": "data.target"}.get(cfg.name, "data.name")


def _what(cfg) -> str:
    return f"data set {cfg.name!r}" if cfg.name not in ("python", "csv") else (
        f"{cfg.factory}" if cfg.name == "python" else f"{cfg.path}'s column(s) {cfg.target}")


def check_kind(cfg, task: str, split: str, y: torch.Tensor, numbers_ok: bool = False) -> torch.Tensor:
    """The split's targets as the task takes them, or bad input naming the keys."""
    key, what = _key(cfg), _what(cfg)
    floating = y.is_floating_point()
    if y.dtype == torch.bool:
        y, floating = y.long(), False
    if task == "classification":
        if floating or y.ndim != 1:
            shape = f"shape {list(y.shape)}" if y.ndim != 1 else f"{y.dtype} values"
            raise ConfigError(f"{key}: {what} gives targets of {shape} in its {split} split; task=classification "
                              "expected an integer class index per example. Numbers to predict train with "
                              "task=regression, several labels per example with task=multilabel.")
        return y.long()
    if task == "regression":
        if not floating and not numbers_ok:
            raise ConfigError(f"{key}: {what} gives integer targets ({y.dtype}) in its {split} split, class indices; "
                              "task=regression expected numbers (float). Class indices train with "
                              "task=classification (the default).")
        if y.ndim not in (1, 2):
            raise ConfigError(f"{key}: {what} gives targets of shape {list(y.shape)}; task=regression expected (N,) "
                              "or (N, targets).")
        return (y.view(-1, 1) if y.ndim == 1 else y).float()
    if task == "multilabel":
        binary = y.ndim in (1, 2) and bool(((y == 0) | (y == 1)).all())
        y = y.view(-1, 1) if binary and y.ndim == 1 else y  # one column of 0/1: one label
        binary = binary and y.ndim == 2
        if not binary:
            raise ConfigError(f"{key}: {what} gives targets of shape {list(y.shape)} ({y.dtype}) in its {split} "
                              "split; task=multilabel expected 0/1 values of shape (N, labels), one column per "
                              "label.")
        return y.float()
    return y.float() if floating else y.long()  # python: the own loss takes them as they are


def output_width(task: str, y: torch.Tensor, classes: list[str]) -> int:
    if task in ("classification",):
        return len(classes)
    if y.ndim == 2:
        return y.shape[1]
    return len(classes) if not y.is_floating_point() and classes else 1


def prepare(cfg, task: str, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], classes: list[str],
            names: list[str] | None, numbers_ok: bool = False,
            stats: tuple[list[float], list[float]] | None = None) -> Targets:
    """Checks every split's targets and turns them into what the task trains on, in place
    in `splits` (regression: standardized with the training split's statistics, or `stats`)."""
    if numbers_ok and classes and task in ("regression", "multilabel"):  # a table's text target column
        shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
        raise ConfigError(f"{_key(cfg)}: {_what(cfg)} holds text, class names ({shown}); task={task} expected "
                          f"{'numbers' if task == 'regression' else '0/1 values'}. Class names train with "
                          "task=classification.")
    for split, (x, y) in list(splits.items()):
        splits[split] = (x, check_kind(cfg, task, split, y, numbers_ok))
    train_y = splits["train"][1]
    width = output_width(task, train_y, classes)
    for split, (_, y) in splits.items():
        if y.ndim == 2 and y.shape[1] != width and task != "classification":
            raise ConfigError(f"{_key(cfg)}: the {split} split has {y.shape[1]} target columns, the train split "
                              f"{width}; expected the same in every split.")
    if task == "classification":
        return Targets(task, width)
    if task == "multilabel":
        labels = list(classes) if len(classes) == width else (names if names and len(names) == width
                                                               else [str(i) for i in range(width)])
        return Targets(task, width, labels)
    default = names if names and len(names) == width else (["target"] if width == 1 else
                                                           [f"target{i}" for i in range(width)])
    if task != "regression":
        return Targets(task, width, list(default))
    mean, std = stats or target_stats(train_y)
    m, s = torch.tensor(mean).view(1, -1), torch.tensor(std).view(1, -1)
    for split, (x, y) in list(splits.items()):
        splits[split] = (x, (y - m) / s)
    return Targets(task, width, list(default), mean, std)


def target_stats(y: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per target, of the training split, in float64; a constant target keeps std 1."""
    y64 = y.double()
    mean, std = y64.mean(0), y64.std(0, correction=0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def counts(task: str, y: torch.Tensor, num_classes: int) -> list[int] | None:
    """Examples per class (classification) or positives per label (multilabel)."""
    if task == "classification":
        return torch.bincount(y, minlength=num_classes).tolist()
    if task == "multilabel":
        return [int(v) for v in y.sum(0).tolist()]
    return None
