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

import numpy as np
import torch


class EpochSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 pad: bool = True, batch_size: int | None = None):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.batch_size = batch_size
        self.epoch = 0
        self.offset = 0  # a DataLoader iterating it starts this many examples in (DataLoaderAdapter)

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
        return iter(self.indices()[self.offset:].tolist())

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
    the collated batch, as on the fast path, so both paths match exactly.

    `probe_workers` (a CPU run with workers over examples without random transforms): the
    first epoch measures whether the workers help. Its first PROBE batches are made in this
    process, as num_workers=0 would, and the workers start after them; the time per batch
    of the loop (training included) over the in-process batches is compared with that over
    the next PROBE batches from the workers (their start-up left out), and a warning says
    so when the workers made the run slower. The batches are the same either way."""

    PROBE = 8

    def __init__(self, dataset, batch_size: int, sampler: EpochSampler, num_workers: int,
                 pin_memory: bool, augment=None, seed: int = 0, preview_dataset=None, prefetch: int = 2,
                 probe_workers: bool = False):
        self.sampler, self.batch_size, self.augment = sampler, batch_size, augment
        self.dataset, self.num_workers = dataset, num_workers
        self.probe_workers = probe_workers and num_workers > 0
        # The same examples without random transforms, for looking at the data (image grids)
        # without augmentation and without drawing from the RNG.
        self.preview_dataset = dataset if preview_dataset is None else preview_dataset
        # A generator of its own: without one, every new DataLoader iterator draws its workers'
        # base seed from the global RNG, which shifts the augmentation (and everything else
        # drawn from the global RNG) away from the fast path's.
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=num_workers > 0,
            prefetch_factor=prefetch if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._probed(start_batch) if self._probe_fits(start_batch) else self._drawn(start_batch)
        for x, y in batches:
            yield (self.augment(x) if self.augment else x), y

    def _drawn(self, start_batch: int) -> Iterator:
        for i, batch in enumerate(self.loader):
            # Skipped batches are still drawn so workers' random transforms stay in step.
            if i >= start_batch:
                yield batch

    def _probe_fits(self, start_batch: int) -> bool:
        return self.probe_workers and len(self) - start_batch >= 2 * self.PROBE + 3

    def _probed(self, start_batch: int) -> Iterator:
        import time

        self.probe_workers = False  # once: the first epoch this loader serves
        order = self.sampler.indices()
        asked = []  # when the loop asked for each in-process batch
        head = start_batch + self.PROBE
        for k in range(start_batch, head):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size].tolist()
            asked.append(time.perf_counter())
            yield torch.utils.data.default_collate([self.dataset[i] for i in idx])
        asked.append(time.perf_counter())
        self.sampler.offset = head * self.batch_size  # the workers start at the batch after those
        arrived = []  # when each of the workers' batches was in hand
        try:
            for batch in self.loader:
                arrived.append(time.perf_counter())
                if len(arrived) == self.PROBE + 3:
                    self._judge(asked, arrived, start_batch)
                yield batch
        finally:
            self.sampler.offset = 0

    def _judge(self, asked: list[float], arrived: list[float], start_batch: int) -> None:
        import logging

        n = self.PROBE
        # Loop time per batch (making or waiting for it, and the training step): in-process
        # batches 2..n, and the workers' batches 3..n+2 (their first ones include start-up).
        inline = (asked[n] - asked[1]) / (n - 1)
        workers = (arrived[n + 2] - arrived[2]) / n
        first = start_batch + 1
        words = (f"{1000 * workers:.1f} ms per training batch with data.num_workers={self.num_workers} "
                 f"(batches {first + n + 2}-{first + 2 * n + 1} of this epoch), {1000 * inline:.1f} ms with the "
                 f"batches made in the training process (batches {first + 1}-{first + n - 1})")
        log = logging.getLogger("expkit")
        if workers > 1.05 * inline:
            log.warning("data.num_workers: value %d makes this CPU run slower than none: %s; set "
                        "data.num_workers=0 (or, for folder data, data.cache=true)", self.num_workers, words)
        else:
            log.info("data.num_workers: %s", words)


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class CacheLoader:
    """Batches from a decoded image map (data.cache): the rows of a batch are copied out of
    the map as uint8 by a reader thread (`prefetch` batches ahead), scaled and normalized
    (there on the CPU, on an accelerator after the move), then augmented as one tensor.
    Scaling and normalizing are torchvision's ToTensor and Normalize arithmetic, so without
    augmentation the batches equal the decode path's bit for bit. Augmentation draws from the global torch
    RNG in the loop's own thread, in batch order, so it is saved with checkpoints and a
    resumed run draws exactly what the uninterrupted one did."""

    def __init__(self, images, rows: torch.Tensor, labels: torch.Tensor, batch_size: int, sampler: EpochSampler,
                 mean: list[float], std: list[float], device: torch.device, prefetch: int, flip: bool | None):
        self.images, self.rows, self.labels = images, rows, labels
        self.batch_size, self.sampler, self.device, self.prefetch = batch_size, sampler, device, prefetch
        self.flip = flip  # None: no augmentation
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.preview_dataset = MapDataset(images, rows, labels, mean, std)
        # On the CPU the reader thread looks each byte up in a table of what ToTensor and
        # Normalize make of it (the same float ops, so the same bits): one pass, off the
        # training thread. An accelerator gets the bytes (a quarter of the floats) and
        # computes there.
        self.table = None
        if device.type == "cpu":
            levels = torch.arange(256, dtype=torch.float32).div(255).view(1, -1)
            self.table = levels.sub(self.mean.view(-1, 1)).div(self.std.view(-1, 1)).numpy()

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def _read(self, picks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # numpy only on CPU: a torch op in this thread would start a second team of intra-op
        # threads beside the training step's, more threads than cores.
        pixels = self.images.take(self._rows[picks])
        if self.table is not None:
            scaled = np.empty(pixels.shape, dtype=np.float32)
            for c, table in enumerate(self.table):
                scaled[:, c] = table[pixels[:, c]]
            pixels = scaled
        x, y = torch.from_numpy(pixels), torch.from_numpy(self._labels[picks])
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from concurrent.futures import ThreadPoolExecutor

        self._rows, self._labels = self.rows.numpy(), self.labels.numpy()
        order = self.sampler.indices().numpy()
        starts = range(start_batch * self.batch_size, len(order), self.batch_size)
        with ThreadPoolExecutor(1) as reader:
            ahead = [reader.submit(self._read, order[i:i + self.batch_size]) for i in starts[:self.prefetch]]
            for k in range(len(starts)):
                if k + self.prefetch < len(starts):
                    i = starts[k + self.prefetch]
                    ahead.append(reader.submit(self._read, order[i:i + self.batch_size]))
                x, y = ahead.pop(0).result()
                yield self.prepare(x), y.to(self.device, non_blocking=True)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(self.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
        return x if self.flip is None else random_crop_flip(x, flip=self.flip)


class MapDataset(torch.utils.data.Dataset):
    """Some rows of a decoded image map as normalized float images, one at a time (image
    grids, statistics)."""

    def __init__(self, images, rows: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float]):
        self.images, self.rows, self.labels = images, rows, labels
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images.take(self.rows[i:i + 1].numpy()))[0]
        return x.float().div_(255).sub_(self.mean).div_(self.std), self.labels[i]
