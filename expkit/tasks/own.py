"""task=python: your own loss and metrics, imported from the project folder under the same
rules as own models (config/imports.py: the project's own file, its hash recorded, a run
folder's code run only when it is that file or with --trust-code).

task.factory names one of:
  - a loss function `loss(outputs, targets) -> scalar tensor`; task.metrics may name a
    function `metrics(outputs, targets) -> {name: number}` over a whole split;
  - a class (called with task.kwargs) or an object with a `loss` method and optionally a
    `metrics` method, the same two functions.

Metrics are lower-is-better when their name ends in loss, error, mae, mse, rmse (and a few
more: expkit/tasks/names.py), higher-is-better otherwise. Targets reach the loss as the
data gives them: int64 class indices, or float32 numbers (not standardized)."""

from __future__ import annotations

import math

import torch

from expkit.config.imports import own_task_parts
from expkit.errors import ConfigError
from expkit.tasks.base import Scorer, Task, _all_reduce, _all_rows, _gathered

KEY = "task.factory"


class OwnTask(Task):
    name = "python"

    def __init__(self, cfg):
        self.cfg = cfg
        self.loss_fn, self.metrics_fn = own_task_parts(cfg)
        self.own_names: tuple[str, ...] | None = None  # known after the first scoring

    def loss(self, output, y):
        value = self.loss_fn(output, y)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ConfigError(f"{KEY}: the loss returned {type(value).__name__}"
                              f"{' of shape ' + str(list(value.shape)) if isinstance(value, torch.Tensor) else ''}; "
                              "expected a scalar tensor.")
        return value.reshape(())

    def scorer(self, device):
        return OwnScorer(self, device)


class OwnScorer(Scorer):
    def __init__(self, task: OwnTask, device):
        self.task = task
        self.loss_sum = torch.zeros(2, device=device, dtype=torch.float64)
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, output, y):
        self.loss_sum[0] += self.task.loss(output.float(), y).double() * len(y)
        self.loss_sum[1] += len(y)
        if self.task.metrics_fn is not None:
            self.outputs.append(output.float())
            self.targets.append(y)

    def result(self):
        loss_sum, n = _all_reduce(self.loss_sum).tolist()
        out = {"loss": loss_sum / max(n, 1)}
        if self.task.metrics_fn is None:
            return out
        outputs = _gathered(self.outputs, self.outputs[0].shape[1] if self.outputs else 1, torch.float32)
        targets = _all_rows(torch.cat([t.cpu() for t in self.targets]) if self.targets else torch.zeros(0))
        values = self.task.metrics_fn(outputs, targets)
        if not isinstance(values, dict):
            raise ConfigError(f"task.metrics: the metrics function returned {type(values).__name__}; expected a "
                              "dict {name: number}.")
        for name, value in values.items():
            if not (isinstance(name, str) and name.isidentifier()) or name == "loss":
                raise ConfigError(f"task.metrics: metric name {name!r} is not allowed; expected a name of letters, "
                                  "digits and _ other than loss.")
            number = float(value.item() if isinstance(value, torch.Tensor) else value)
            out[name] = number if math.isfinite(number) else math.nan
        self.task.own_names = tuple(values)
        return out
