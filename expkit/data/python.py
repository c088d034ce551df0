"""data=python: the user's own data, from data.factory (see config/imports.py).

The factory returns, for each split it has, a torch Dataset of (input, label) pairs or a
pair of tensors (x, y): one of them (train), a tuple (train, val) or (train, val, test)
(val and test may be None), or a dict with those keys. Without a val split, expkit holds
one out of train as for built-in data (data.val_fraction).

Only the examples a run uses are read (sample mode reads `data.sample` of them), once,
into tensors: the split, sample mode, the data checks and the in-memory fast path then
work as for built-in data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from expkit.config.imports import call, describe_object, project_dir, resolve
from expkit.config.registry import DATASETS
from expkit.data.sources import Source
from expkit.errors import ConfigError

SPLITS = ("train", "val", "test")
KEY = "data.factory"


class TensorRows:
    """A split given as tensors (x, y)."""

    def __init__(self, x: Any, y: Any, what: str):
        x, y = _tensor(x, f"{what} x"), _tensor(y, f"{what} y")
        if x.ndim < 2 or y.ndim not in (1, 2) or len(x) != len(y):
            raise ConfigError(f"{KEY}: {what} is tensors of shapes {list(x.shape)} and {list(y.shape)}; expected "
                              "x of N examples (N, ...) and y of N targets: (N,) class indices or numbers, or "
                              "(N, k) for several targets or labels.")
        if y.is_complex():
            raise ConfigError(f"{KEY}: {what}'s targets y are {y.dtype}; expected integers or real numbers.")
        # What the targets mean is the task's to check (data/targets.py): class indices stay
        # int64, numbers become float32.
        self.x, self.y = x, (y.float() if y.is_floating_point() else y.long())

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _float(self.x[idx]), self.y[idx]

    def targets(self) -> torch.Tensor:
        return self.y


class DatasetRows:
    """A split given as a torch Dataset (anything with __len__ and __getitem__ -> (x, y))."""

    def __init__(self, dataset: Any, what: str):
        self.dataset, self.what = dataset, what

    def __len__(self) -> int:
        return len(self.dataset)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for i in idx.tolist():
            item = self.dataset[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ConfigError(f"{KEY}: {self.what}[{i}] is a {type(item).__name__}; expected an (input, label) "
                                  "pair.")
            x, y = item[0], item[1]
            if not isinstance(x, (torch.Tensor, np.ndarray)):
                hint = " (add transforms.ToTensor() to its transform)" if "Image" in type(x).__name__ else ""
                raise ConfigError(f"{KEY}: {self.what}[{i}] has an input of type {type(x).__name__}; expected a "
                                  f"tensor{hint}.")
            try:
                label = torch.as_tensor(y)
            except (TypeError, ValueError, RuntimeError):
                label = None
            if label is None or label.ndim > 1 or label.is_complex() or label.numel() == 0:
                raise ConfigError(f"{KEY}: {self.what}[{i}] has a target of type {type(y).__name__} "
                                  f"({str(y)[:40]}); expected a class index, a number or a 1-D tensor of them.")
            # Kept as given (a float label is not rounded to a class): the task checks what it means.
            ys.append(label.bool().long() if label.dtype == torch.bool else label)
            xs.append(torch.as_tensor(x))
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) > 1:
            raise ConfigError(f"{KEY}: {self.what}'s inputs differ in shape ({', '.join(map(str, sorted(shapes)[:3]))}"
                              "); expected one shape for every example.")
        if len({tuple(t.shape) for t in ys}) > 1:
            raise ConfigError(f"{KEY}: {self.what}'s targets differ in shape; expected one shape for every example.")
        x = torch.stack(xs) if xs else torch.zeros(0, 1)
        if not ys:
            return _float(x), torch.zeros(0, dtype=torch.long)
        y = torch.stack(ys)
        return _float(x), (y.float() if y.is_floating_point() else y.long())

    def targets(self) -> torch.Tensor | None:
        targets = getattr(self.dataset, "targets", None)
        try:
            return torch.as_tensor(targets).long() if targets is not None else None
        except (TypeError, ValueError):
            return None


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{KEY}: {what} is a {type(value).__name__}; expected a tensor.")
    return value


def _float(x: torch.Tensor) -> torch.Tensor:
    """Inputs as float32, what the models' weights are (integers and float64 arrays too)."""
    return x if x.dtype == torch.float32 else x.float()


def _rows(value: Any, what: str) -> TensorRows | DatasetRows:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (torch.Tensor, np.ndarray)) for v in value):
        return TensorRows(value[0], value[1], what)
    if hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(value, (tuple, list, dict)):
        return DatasetRows(value, what)
    raise ConfigError(f"{KEY}: {what} is a {type(value).__name__}; expected a torch Dataset or (x, y) tensors.")


def as_splits(result: Any, shown: str) -> dict[str, TensorRows | DatasetRows]:
    """split -> rows, from what a data factory returned."""
    if isinstance(result, dict):
        unknown = [k for k in result if k not in SPLITS]
        if unknown or "train" not in result:
            raise ConfigError(f"{KEY}: {shown} returned a dict with keys {sorted(map(str, result))}; expected "
                              "train and optionally val, test.")
        parts = result
    elif isinstance(result, (tuple, list)) and len(result) == 2 and all(
            isinstance(v, (torch.Tensor, np.ndarray)) for v in result):
        parts = {"train": result}
    elif isinstance(result, (tuple, list)):
        if not 1 <= len(result) <= 3:
            raise ConfigError(f"{KEY}: {shown} returned a {type(result).__name__} of {len(result)} items; "
                              "expected (train, val) or (train, val, test).")
        parts = dict(zip(SPLITS, result, strict=False))
    else:
        parts = {"train": result}
    if parts.get("train") is None:
        raise ConfigError(f"{KEY}: {shown} returned no train split.")
    return {split: _rows(value, f"{shown}'s {split} split") for split, value in parts.items() if value is not None}


@DATASETS.register("python")
def load_python(cfg) -> Source:
    shown = describe_object(resolve("data", cfg.factory), cfg.factory)
    rows = as_splits(call("data", cfg), shown)
    train = rows["train"]
    classes = getattr(getattr(train, "dataset", None), "classes", None)
    classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) and classes else []
    if cfg.num_classes is not None:
        if classes and len(classes) != cfg.num_classes:
            raise ConfigError(f"data.num_classes: value {cfg.num_classes} differs from the {len(classes)} classes "
                              f"of {shown}'s train Dataset ({', '.join(classes[:10])}).")
        classes = classes or [str(i) for i in range(cfg.num_classes)]
    location = shown if shown.startswith("<") else f"{shown} ({project_dir()})"
    return Source(None, None, classes=classes, location=location, rows=rows)
