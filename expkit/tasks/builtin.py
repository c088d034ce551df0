"""The built-in tasks: classification, regression, multilabel (see expkit/tasks/__init__.py)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from expkit.tasks.base import Scorer, Task, _all_reduce, _gathered
from expkit.tasks.names import split_metrics


# ----------------------------------------------------------------- classification
class Classification(Task):
    name = "classification"
    train_accuracy = True

    def __init__(self, num_classes: int, topk: int = 0, label_smoothing: float = 0.0):
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.topk = topk if topk and num_classes > topk else 0  # top-k of k classes or fewer is always 1

    def metrics(self) -> dict[str, bool]:
        return split_metrics(self.name, self.topk)

    def loss(self, output, y):
        return nn.functional.cross_entropy(output, y, label_smoothing=self.label_smoothing)

    def scorer(self, device):
        return ClassificationScorer(device, self.topk)

    def predict(self, output):
        return torch.softmax(output.float(), dim=1)


class ClassificationScorer(Scorer):
    def __init__(self, device, topk: int):
        self.totals = torch.zeros(4 if topk else 3, device=device, dtype=torch.float64)  # loss, correct, count, top-k
        self.topk = topk

    def add(self, output, y):
        self.totals[0] += nn.functional.cross_entropy(output.float(), y, reduction="sum")
        self.totals[1] += (output.argmax(1) == y).sum()
        self.totals[2] += len(y)
        if self.topk:
            self.totals[3] += (output.topk(self.topk, dim=1).indices == y.view(-1, 1)).any(1).sum()

    def result(self):
        loss_sum, correct, count, *top = _all_reduce(self.totals).tolist()
        out = {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1)}
        if self.topk:
            out[f"top{self.topk}_acc"] = top[0] / max(count, 1)
        return out


# --------------------------------------------------------------------- regression
class Regression(Task):
    name = "regression"

    def __init__(self, loss: str, huber_delta: float, mean: list[float], std: list[float], names: list[str]):
        self.kind, self.huber_delta, self.names = loss, huber_delta, list(names)
        self.mean, self.std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)

    def loss(self, output, y, reduction: str = "mean"):
        output = output.float()
        if self.kind == "l1":
            return nn.functional.l1_loss(output, y, reduction=reduction)
        if self.kind == "huber":
            return nn.functional.huber_loss(output, y, delta=self.huber_delta, reduction=reduction)
        return nn.functional.mse_loss(output, y, reduction=reduction)

    def scorer(self, device):
        return RegressionScorer(self, device)

    def predict(self, output):
        """Standardized outputs back in the targets' units."""
        mean, std = self.mean.to(output.device), self.std.to(output.device)
        return (output.double() * std + mean).float()


class RegressionScorer(Scorer):
    """Per target: n, sum |e|, sum e², sum y, sum y² (in the targets' units) and the loss sum."""

    def __init__(self, task: Regression, device):
        self.task = task
        self.k = len(task.mean)
        self.sums = torch.zeros(4 * self.k + 2, device=device, dtype=torch.float64)
        self.mean, self.std = task.mean.to(device), task.std.to(device)

    def add(self, output, y):
        k = self.k
        self.sums[0] += self.task.loss(output, y, reduction="sum") / k  # per example, over the targets
        self.sums[1] += len(y)
        truth = y.double() * self.std + self.mean
        error = output.double() * self.std + self.mean - truth
        parts = torch.stack([error.abs().sum(0), (error * error).sum(0), truth.sum(0), (truth * truth).sum(0)])
        self.sums[2:2 + 4 * k] += parts.flatten()

    def result(self):
        sums = _all_reduce(self.sums).cpu()
        k, (loss_sum, n) = self.k, sums[:2].tolist()
        abs_e, sq_e, sum_y, sum_y2 = sums[2:2 + 4 * k].view(4, k)
        n = max(n, 1.0)
        total = sum_y2 - sum_y * sum_y / n  # per target: the sum of squares about the mean
        r2 = torch.where(total > 0, 1 - sq_e / total.clamp_min(1e-300), torch.full_like(total, math.nan))
        return {"rmse": float((sq_e / n).sqrt().mean()), "mae": float((abs_e / n).mean()),
                "r2": float(r2.mean()), "loss": loss_sum / n}


# --------------------------------------------------------------------- multilabel
class Multilabel(Task):
    name = "multilabel"

    def __init__(self, labels: int, threshold: Any, names: list[str]):
        values = list(threshold) if isinstance(threshold, (list, tuple)) else [float(threshold)] * labels
        if len(values) != labels:
            from expkit.errors import ConfigError

            raise ConfigError(f"task.threshold: value {list(values)} has {len(values)} thresholds, the data "
                              f"{labels} labels; give one number, or one per label.")
        self.threshold = torch.tensor(values, dtype=torch.float32)
        self.names = list(names)

    def loss(self, output, y):
        return nn.functional.binary_cross_entropy_with_logits(output.float(), y)

    def scorer(self, device):
        return MultilabelScorer(self, device)

    def predict(self, output):
        return torch.sigmoid(output.float())

    def above(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities > self.threshold.to(probabilities.device)


class MultilabelScorer(Scorer):
    def __init__(self, task: Multilabel, device):
        self.task = task
        self.loss_sum = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, examples
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, output, y):
        self.loss_sum[0] += nn.functional.binary_cross_entropy_with_logits(
            output.float(), y, reduction="sum") / y.shape[1]
        self.loss_sum[1] += len(y)
        self.scores.append(torch.sigmoid(output.float()))
        self.targets.append(y)

    def result(self):
        loss_sum, n = _all_reduce(self.loss_sum).tolist()
        width = len(self.task.names)
        probs, y = _gathered(self.scores, width, torch.float32), _gathered(self.targets, width, torch.float32)
        predicted, truth = self.task.above(probs), y > 0.5
        tp = (predicted & truth).sum(0).double()
        fp = (predicted & ~truth).sum(0).double()
        fn = (~predicted & truth).sum(0).double()
        micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())) if (tp.sum() + fp.sum() + fn.sum()) else 0.0
        denom = 2 * tp + fp + fn
        macro = float(torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom)).mean())
        return {"map": mean_average_precision(probs, truth), "f1_micro": micro, "f1_macro": macro,
                "loss": loss_sum / max(n, 1)}


def mean_average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """The mean over labels (those with a positive example) of average precision: the
    precision at each positive, ranked by score, averaged (ties broken by order)."""
    aps = []
    for j in range(scores.shape[1]):
        positives = truth[:, j]
        if not positives.any():
            continue
        order = torch.argsort(scores[:, j], descending=True, stable=True)
        hits = positives[order].double()
        precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return sum(aps) / len(aps) if aps else math.nan
