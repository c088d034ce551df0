"""What every task gives: a loss, a scorer for a whole split, predictions."""

from __future__ import annotations

import torch

from expkit.tasks.names import split_metrics


class Task:
    name = ""
    train_accuracy = False  # the training tally also counts correct predictions (train/acc)

    def metrics(self) -> dict[str, bool]:
        """The metrics of one evaluated split -> higher is better."""
        return split_metrics(self.name)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scorer(self, device: torch.device) -> Scorer:
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Outputs -> what a user reads: probabilities, or numbers in the targets' units."""
        return output


class Scorer:
    """A split's metrics, summed batch by batch on the device."""

    def add(self, output: torch.Tensor, y: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError


def _group() -> bool:
    """A DDP process group is up (the Trainer joined it): sums and rows come from every rank."""
    import torch.distributed as torch_dist

    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _group():
        import torch.distributed as torch_dist

        torch_dist.all_reduce(t)
    return t


def _all_rows(mine: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (on the CPU), in rank order."""
    if not _group():
        return mine
    import torch.distributed as torch_dist

    out = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, mine)
    return torch.cat(out)


def _gathered(tensors: list[torch.Tensor], width: int, dtype: torch.dtype) -> torch.Tensor:
    """The rows every rank scored, on the CPU (metrics that need a whole split at once)."""
    return _all_rows(torch.cat(tensors).cpu() if tensors else torch.zeros(0, width, dtype=dtype))
