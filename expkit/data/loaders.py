"""Batching. Two paths give the same batches in the same order for the same seed:

- TensorLoader, the fast path for data that fits in memory: the whole split is one
  tensor (on the accelerator when data.on_device), and a batch is one indexing op.
- torch's DataLoader, for folder data and per-sample transforms.

Both take their order from EpochSampler: a permutation seeded by (seed, epoch), padded and
strided over ranks like DistributedSampler, so every rank sees a disjoint shard and a new
order every epoch, and a resumed run can skip straight to batch k of epoch e.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


class EpochSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 pad: bool = True, batch_size: int | None = None):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.pad and self.world_size > 1:
            # Pad by repeating the start so every rank gets the same number of batches
            # (a rank with fewer steps would hang in the gradient all-reduce).
            total = math.ceil(self.n / self.world_size) * self.world_size
            if self.n:  # (repeated as often as needed: a split smaller than world_size)
                order = order.repeat(math.ceil(total / self.n))[:total]
            if self.batch_size:
                # Rank r takes the r-th slice of every global batch of world_size x batch_size,
                # so together the ranks' step-k batches are exactly the batch one process
                # with world_size x batch_size would take at step k.
                chunk = self.batch_size * self.world_size
                full = len(order) // chunk * chunk
                head = order[:full].view(-1, self.world_size, self.batch_size)[:, self.rank].flatten()
                return torch.cat([head, order[full:].view(self.world_size, -1)[self.rank]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor onto the batch's device. On a GPU, a blocking copy from pageable
    memory would make the host wait for the GPU at every step; a copy from pinned memory
    with non_blocking=True is queued on the stream like the kernels that use it."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def random_crop_flip(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Per-example random crop (zero padding of size/8) and optional horizontal flip of a
    batch, in a few tensor ops. Uses the global torch RNG, so it is saved with checkpoints."""
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = _to_device(torch.randint(0, 2 * pad + 1, (b,)), x.device)
    ox = _to_device(torch.randint(0, 2 * pad + 1, (b,)), x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(b, device=x.device)[:, None, None, None],
                 torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mask = _to_device(torch.rand(b) < 0.5, x.device)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


class TensorLoader:
    """Batches of (x, y) from in-memory tensors, by indexing."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, sampler: EpochSampler,
                 augment=None):
        self.x, self.y, self.batch_size, self.sampler, self.augment = x, y, batch_size, sampler, augment

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.sampler.indices().to(self.x.device)
        for i in range(start_batch * self.batch_size, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            x = self.x.index_select(0, idx)
            yield (self.augment(x) if self.augment else x), self.y.index_select(0, idx)


class DataLoaderAdapter:
    """A torch DataLoader with the same interface; augmentation of tensor data happens on
    the collated batch, as on the fast path, so both paths match exactly."""

    def __init__(self, dataset, batch_size: int, sampler: EpochSampler, num_workers: int,
                 pin_memory: bool, augment=None, seed: int = 0, preview_dataset=None):
        self.sampler, self.batch_size, self.augment = sampler, batch_size, augment
        # The same examples without random transforms, for looking at the data (image grids)
        # without augmentation and without drawing from the RNG.
        self.preview_dataset = dataset if preview_dataset is None else preview_dataset
        # A generator of its own: without one, every new DataLoader iterator draws its workers'
        # base seed from the global RNG, which shifts the augmentation (and everything else
        # drawn from the global RNG) away from the fast path's.
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (x, y) in enumerate(self.loader):
            # Skipped batches are still drawn so workers' random transforms stay in step.
            if i >= start_batch:
                yield (self.augment(x) if self.augment else x), y


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]
