"""An exponential moving average of the weights (trainer.ema=DECAY).

After every optimizer step, each floating-point parameter and buffer of the model moves its
average towards the new value: avg += (1 - decay) * (value - avg), in one foreach call on
the device (no host sync). Integer buffers (batchnorm's num_batches_tracked) are counters,
not averaged: the average takes the model's value whenever it is read (`applied`,
`state_dict`), which is what copying them after every step gives, without a copy per
buffer per step.
With trainer.ema_warmup the decay of step t is min(decay, (1 + t) / (10 + t)), so the
average is not held back by the first, random weights.

`applied()` swaps the average into the model for a block (evaluation, the test split,
best.pt's weights) and puts the trained weights back after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        # The model's own tensors (Parameters and buffers, kept for the run: loading a
        # checkpoint and the optimizer change them in place), so a step builds no state_dict.
        self.live = model.state_dict(keep_vars=True)
        with torch.no_grad():
            self.averages = {k: v.detach().clone() for k, v in self.live.items()}
        floats = [k for k, v in self.averages.items() if v.is_floating_point()]
        self.float_averages = [self.averages[k] for k in floats]
        self.float_live = [self.live[k] for k in floats]
        self.other_pairs = [(self.averages[k], self.live[k]) for k in self.live if k not in set(floats)]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the model's weights after optimizer step `step` (1-based)."""
        if self.float_live:
            torch._foreach_lerp_(self.float_averages, self.float_live, 1.0 - self.decay_at(step))

    @torch.no_grad()
    def take_counters(self) -> None:
        """The model's integer buffers into the average, before it is read."""
        for average, live in self.other_pairs:
            average.copy_(live)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in the model's own tensors for the block, the trained weights after it
        (copied in place, so a compiled or DDP-wrapped model sees the same tensors)."""
        self.take_counters()
        with torch.no_grad():
            trained = {k: v.detach().clone() for k, v in self.live.items()}
            for k, v in self.live.items():
                v.copy_(self.averages[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in self.live.items():
                    v.copy_(trained[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, a state_dict of the model (so best.pt's can be loaded as is)."""
        self.take_counters()
        return dict(self.averages)

    @torch.no_grad()
    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        missing = set(self.averages) ^ set(saved)
        if missing:
            raise ValueError(f"the checkpoint's EMA weights do not fit the model (keys {sorted(missing)[:3]})")
        for k, average in self.averages.items():
            average.copy_(saved[k])
