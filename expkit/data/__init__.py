"""Data: sources -> fixed test split -> fixed train/val split -> sample or full mode ->
normalization -> checks -> loaders (the in-memory fast path or a DataLoader).

A data set with an official test split (MNIST, CIFAR-10, a folder with test/) keeps it;
the others have a `data.test_fraction` share carved out first, so training and model
selection never see it. The splits and the sample come from `data.split_seed`, not the
run's seed, so they are the same in every run and on every rank; the shuffling order
comes from the run's seed.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from expkit.config.registry import DATASETS
from expkit.data.cache import below
from expkit.data.loaders import (
    CacheLoader,
    DataLoaderAdapter,
    EpochSampler,
    MapDataset,
    TensorDataset,
    TensorLoader,
    random_crop_flip,
)
from expkit.data.sources import Source, val_count
from expkit.data.targets import Targets, check_kind, counts, prepare
from expkit.errors import ConfigError

log = logging.getLogger("expkit")
IMBALANCE_WARN_RATIO = 10.0  # warn when the largest class is this many times the smallest


@dataclass
class Data:
    train: Any
    val: Any
    test: Any | None
    input_shape: tuple[int, ...]
    num_classes: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    info: dict[str, Any] = field(default_factory=dict)
    targets: Targets | None = None  # what the targets are for the task (None: classification)

    @property
    def outputs(self) -> int:
        """The model's output width: classes, targets or labels."""
        return self.targets.outputs if self.targets is not None else self.num_classes

    def record(self) -> dict[str, Any]:
        """What meta.json says about the data: where it came from and how it was split."""
        keys = ("name", "location", "mode", "sizes", "split_seed", "test_split", "test_fraction",
                "input_shape", "mean", "std", "columns", "file_sha256")
        out = {k: self.info[k] for k in keys if k in self.info} | {"classes": list(self.classes)}
        return out | (self.targets.record() if self.targets is not None and self.targets.task != "classification"
                      else {})


def carve_test(n: int, test_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the rest, test) indices of n examples: a test_fraction share from split_seed alone,
    taken before the train/val split; the rest keep their order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_test = val_count(n, test_fraction)
    return order[n_test:].sort().values, order[:n_test].sort().values


def split_indices(n: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices: a permutation from split_seed alone, so every run and every rank
    gets the same split."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = val_count(n, val_fraction)
    return order[n_val:], order[:n_val]


def warn_if_sample_too_large(sample: int | None, n_train: int, name: str) -> None:
    if sample is not None and sample > n_train:
        log.warning("data.sample: value %d is more than the %d training examples of %s; training on all %d "
                    "(the sizes used are in the log line below and in meta.json)", sample, n_train, name, n_train)


def sample_sizes(n_train: int, n_val: int, sample: int | None) -> tuple[int, int]:
    """Sample mode keeps `sample` training examples and a validation set of the same
    proportion (at least one example)."""
    if sample is None or sample >= n_train:
        return n_train, n_val
    return sample, min(n_val, max(1, round(sample * n_val / n_train))) if n_val else 0


@dataclass
class Indices:
    """Which examples of a built-in data set each split takes (indices into the data set's
    train part): `carved` is the test split cut out of it (None with an official test split)."""

    train: torch.Tensor
    val: torch.Tensor
    carved: torch.Tensor | None
    sampled: bool  # sample mode took fewer training examples than there are

    def test_count(self, n_test: int) -> int:
        """Sample mode: the first examples of the test split, as many as the validation split."""
        return min(n_test, len(self.val)) if self.sampled else n_test


def split_examples(cfg, n: int, has_test: bool) -> Indices:
    """The fixed splits of a data set's n training examples: a data.test_fraction share carved
    out first when it has no test split of its own, then the train/val split, then sample
    mode; all from data.split_seed."""
    pool, carved = torch.arange(n), None
    if not has_test and cfg.test_fraction > 0:
        pool, carved = carve_test(n, cfg.test_fraction, cfg.split_seed)
    train_idx, val_idx = split_indices(len(pool), cfg.val_fraction, cfg.split_seed)
    warn_if_sample_too_large(cfg.sample, len(train_idx), cfg.name)
    n_train, n_val = sample_sizes(len(train_idx), len(val_idx), cfg.sample)
    picked = Indices(pool[train_idx[:n_train]], pool[val_idx[:n_val]], carved, n_train < len(train_idx))
    check_split_sizes(cfg, len(picked.train), len(picked.val))
    return picked


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    dims = [0] + list(range(2, x.ndim))
    # Population std (correction 0): defined for a single example too (it would be NaN).
    mean, std = x.mean(dim=dims), x.std(dim=dims, correction=0)
    return mean.tolist(), std.clamp_min(1e-6).tolist()


def _normalize(x: torch.Tensor, mean: list[float], std: list[float], in_place: bool = False) -> torch.Tensor:
    """(x - mean) / std per channel; `in_place` reuses x's memory (for a tensor nobody else holds)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = x.sub_(torch.tensor(mean).view(shape)) if in_place else x - torch.tensor(mean).view(shape)
    return out.div_(torch.tensor(std).view(shape))


def check_labels(name: str, split: str, counts: list[int], classes: list[str]) -> None:
    missing = [classes[i] for i, c in enumerate(counts) if c == 0]
    if missing:
        log.warning("data %s: the %s split has no example of class %s", name, split, ", ".join(missing))
    present = [c for c in counts if c > 0]
    if present and max(present) > IMBALANCE_WARN_RATIO * min(present):
        log.warning("data %s: the %s split is badly unbalanced (largest class %d, smallest %d)",
                    name, split, max(present), min(present))


def check_label_range(name: str, split: str, y: torch.Tensor, classes: list[str]) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
        raise ConfigError(
            f"data.name: data set {name!r} has labels in [{int(y.min())}, {int(y.max())}] in its {split} split, "
            f"but {len(classes)} classes ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); "
            "labels must be 0 .. classes - 1."
        )


def check_split_sizes(cfg, n_train: int, n_val: int) -> None:
    """Training needs examples, and evaluation (val/acc, the best checkpoint) a validation split."""
    if n_train == 0:
        raise ConfigError(f"data.name: data set {cfg.name!r} has no training examples.")
    if n_val == 0:
        raise ConfigError(
            f"data.val_fraction: value {cfg.val_fraction!r} leaves data set {cfg.name!r} without a validation "
            f"split ({n_train} training examples); every evaluation runs on it. Use a number in (0, 1), e.g. 0.1."
        )


def check_finite(name: str, split: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.flatten(1).any(1).nonzero().flatten()
        raise ConfigError(
            f"data.name: data set {name!r} has NaN or Inf values in its {split} split "
            f"({int(bad.sum())} values in {len(rows)} examples, first at index {int(rows[0])}); "
            "refusing to train on it."
        )


def fingerprint_tensors(splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
    """sha256 over the examples used, split by split, as read (before normalization): their
    dtype, shape and bytes, labels included. Two runs on different data never share it."""
    digest = hashlib.sha256()
    for split, (x, y) in splits.items():
        for t in (x, y):
            t = t.detach().cpu().contiguous()
            digest.update(f"{split} {t.dtype} {tuple(t.shape)}\n".encode())
            digest.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return digest.hexdigest()


def fingerprint_files(splits: dict[str, list[tuple[str, int]]], root: str, digest_of=None) -> str:
    """sha256 over the files used, split by split: each one's path below `root`, its label
    and its bytes (their SHA-256: `digest_of(path)` where known, else read from the file)."""
    digest = hashlib.sha256()
    for split, samples in splits.items():
        for path, label in samples:
            digest.update(f"{split} {below(path, root)} {label}\n".encode())
            if digest_of is not None:
                digest.update(digest_of(path))
                continue
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def test_info(cfg, origin: str | None) -> dict[str, Any]:
    """How the test split was made, for the log and meta.json."""
    return {"split_seed": cfg.split_seed, "test_split": origin,
            "test_fraction": cfg.test_fraction if origin in ("carved", "generated") else None}


def describe_test(info: dict[str, Any]) -> str:
    origin = info.get("test_split")
    if origin is None:
        return "no test split (data.test_fraction=0)"
    if origin in ("official", "given"):
        return "the data set's own test split"
    return (f"test split {origin}: data.test_fraction {info['test_fraction']} by data.split_seed "
            f"{info['split_seed']}, before the train/val split")


def build_data(cfg, seed: int, rank: int = 0, world_size: int = 1,
               device: torch.device | None = None,
               stats: tuple[list[float], list[float]] | None = None, task: str = "classification",
               target_stats: tuple[list[float], list[float]] | None = None) -> Data:
    """The loaders of every split, with targets as `task` learns them. `stats`: (mean, std)
    to normalize inputs with instead of the training split's own, `target_stats` the same
    for regression targets (scoring a run's model on data it did not train on)."""
    source: Source = DATASETS.get(cfg.name)(cfg)
    if source.folder is not None:
        if task != "classification":
            raise ConfigError(f"task.name: value {task!r} is not allowed with data={cfg.name}: a folder of images "
                              "has one class per subfolder (task=classification); give other targets with "
                              "data=python or data=csv.")
        return _build_folder(cfg, source, seed, rank, world_size, stats, device or torch.device("cpu"))
    device = device or torch.device("cpu")
    if source.rows is not None:  # own data (data=python): its splits, read now
        splits, classes, origin = own_splits(cfg, source, task)
        mean, std = stats or channel_stats(splits["train"][0])
    else:
        if task == "classification" and source.integer_targets_are_numbers:
            from expkit.data.tables import as_classes

            as_classes(source)
        splits, origin = tensor_splits(cfg, source, task)
        # Statistics of the training split only: the validation set must not leak into them.
        mean, std = stats or channel_stats(splits["train"][0])
        classes = source.classes
    if not getattr(cfg, "normalize", True):
        mean, std = [0.0] * len(mean), [1.0] * len(std)
    input_shape = tuple(splits["train"][0].shape[1:])
    num_classes = len(classes)
    use_tensor_path = cfg.loader in ("auto", "tensor")
    on_device = device if (cfg.on_device and use_tensor_path) else torch.device("cpu")
    augment = None
    if cfg.augment and source.image and len(input_shape) == 3:
        def augment(x):
            return random_crop_flip(x, flip=source.flip)
    loaders: dict[str, Any] = {}
    info = {
        "name": cfg.name, "location": source.location, "mode": "full" if cfg.sample is None else f"sample {cfg.sample}",
        "loader": "tensor" if use_tensor_path else "dataloader",
        "sizes": {s: len(y) for s, (_, y) in splits.items()},
        "input_shape": list(input_shape), "mean": mean, "std": std,
        **test_info(cfg, origin if "test" in splits else None),
    }
    if source.features is not None:
        info["columns"] = {"features": list(source.features), "targets": list(source.targets or [])}
    if source.file_sha256 is not None:
        info["file_sha256"] = source.file_sha256
    if rank == 0:  # what meta.json records; the other ranks use the same examples
        info["sha256"], info["fingerprint_of"] = fingerprint_tensors(splits), "examples"
    targets = prepare(cfg, task, splits, classes, source.targets, source.integer_targets_are_numbers, target_stats)
    info["class_counts"] = {s: counts(task, y, num_classes) for s, (_, y) in splits.items()}
    owned = source.rows is None  # own data's tensors (data=python) may be the caller's: copied
    for split in list(splits):
        x, y = splits.pop(split)  # the raw split is freed as soon as its normalized copy exists
        x = _normalize(x, mean, std, in_place=owned).to(on_device)
        y = y.to(on_device)
        train = split == "train"
        sampler = EpochSampler(len(y), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train,
                               batch_size=cfg.batch_size if train else None)
        if use_tensor_path:
            loaders[split] = TensorLoader(x, y, cfg.batch_size, sampler, augment if train else None)
        else:
            loaders[split] = DataLoaderAdapter(
                TensorDataset(x, y), cfg.batch_size, sampler, worker_count(cfg.num_workers, world_size),
                pin_memory=device.type == "cuda", augment=augment if train else None, seed=seed + rank,
                probe_workers=train and device.type == "cpu")
    if task == "classification":
        for split, per_class in info["class_counts"].items():
            check_labels(cfg.name, split, per_class, classes)
    else:
        classes = targets.names if task == "multilabel" else classes
    return Data(loaders["train"], loaders["val"], loaders.get("test"), input_shape,
                len(classes), classes, mean, std, info, targets=None if task == "classification" else targets)


def tensor_splits(cfg, source: Source, task: str = "classification",
                  ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str | None]:
    """A built-in tensor data set's splits (copies, so normalizing them in place is safe),
    checked, and how its test split was made."""
    check_finite(cfg.name, "train", source.train_x)
    if task == "classification":
        check_kind(cfg, task, "train", source.train_y)
        check_label_range(cfg.name, "train", source.train_y, source.classes)
    x, y = source.train_x, source.train_y
    official = source.test_x is not None
    picked = split_examples(cfg, len(y), has_test=official)
    # Indexing copies: these tensors are expkit's own, so they are normalized in place.
    splits = {"train": (x[picked.train], y[picked.train]), "val": (x[picked.val], y[picked.val])}
    if official:
        test_x, test_y, origin = source.test_x, source.test_y, source.test_origin
    elif picked.carved is not None:
        test_x, test_y, origin = x[picked.carved], y[picked.carved], "carved"
    else:
        return splits, None
    check_finite(cfg.name, "test", test_x)
    if task == "classification":
        check_label_range(cfg.name, "test", test_y, source.classes)
    if len(test_y):
        n_test = picked.test_count(len(test_y))
        # The data set's own test tensor (not a carved copy) must not change under it.
        splits["test"] = (test_x[:n_test].clone() if official else test_x[:n_test], test_y[:n_test])
    return splits, origin


def own_splits(cfg, source: Source, task: str = "classification",
               ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str], str | None]:
    """Own data's splits as tensors, its classes and how its test split was made. As for
    built-in data: a test split carved out of train first when the factory gives none
    (data.test_fraction), a val split held out of the rest when it gives none
    (data.val_fraction, both by data.split_seed), and in sample mode data.sample training
    examples, val and test in proportion; only the examples used are read."""
    rows = source.rows
    train, val, test = rows["train"], rows.get("val"), rows.get("test")
    origin = "given" if test is not None else None
    pool = torch.arange(len(train))
    if test is None and cfg.test_fraction > 0:
        pool, test_idx = carve_test(len(train), cfg.test_fraction, cfg.split_seed)
        test, origin = _Taken(train, test_idx), "carved"
    if val is None:
        train_idx, val_idx = split_indices(len(pool), cfg.val_fraction, cfg.split_seed)
        train_idx, val_idx = pool[train_idx], pool[val_idx]
        val = train
    else:
        g = torch.Generator().manual_seed(cfg.split_seed)
        train_idx, val_idx = pool[torch.randperm(len(pool), generator=g)], torch.randperm(len(val), generator=g)
    n_train, n_val = sample_sizes(len(train_idx), len(val_idx), cfg.sample)
    check_split_sizes(cfg, n_train, n_val)
    splits = {"train": train.take(train_idx[:n_train]), "val": val.take(val_idx[:n_val])}
    if test is not None:
        n_test = len(test) if cfg.sample is None else min(len(test), n_val)
        splits["test"] = test.take(torch.arange(n_test))
    classes = source.classes
    if task == "classification":
        for split, (_, y) in splits.items():
            check_kind(cfg, task, split, y)
    if not classes and task == "classification":
        targets = [t for t in (r.targets() for r in rows.values()) if t is not None and len(t)]
        largest = max(int(t.max()) for t in [*targets, *(y for _, y in splits.values() if len(y))])
        classes = [str(i) for i in range(largest + 1)]
    for split, (x, y) in splits.items():
        check_finite(cfg.name, split, x)
        if task == "classification":
            check_label_range(cfg.name, split, y, classes)
        if x.shape[1:] != splits["train"][0].shape[1:]:
            raise ConfigError(f"data.factory: the {split} split's examples have shape {list(x.shape[1:])}, the train "
                              f"split's {list(splits['train'][0].shape[1:])}; expected one shape.")
    return splits, classes, origin


class _Taken:
    """Some rows of another split (a test split carved out of train): take() by position."""

    def __init__(self, rows, idx: torch.Tensor):
        self.rows, self.idx = rows, idx

    def __len__(self) -> int:
        return len(self.idx)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows.take(self.idx[idx])

    def targets(self):
        return None


def _build_folder(cfg, source: Source, seed: int, rank: int, world_size: int,
                  stats: tuple[list[float], list[float]] | None, device: torch.device) -> Data:
    """Folder data: files decoded by a DataLoader's workers every epoch (the decode path), or
    with data.cache once into a map that batches are read from (the cache path)."""
    from torchvision import transforms

    train_folder, test_folder = source.folder
    size = cfg.image_size
    base = [transforms.Resize((size, size)), *([transforms.Grayscale(1)] if cfg.channels == 1 else [])]
    picked = split_examples(cfg, len(train_folder), has_test=test_folder is not None)  # no test/: one carved out
    parts = _folder_parts(cfg, source, picked)
    maps = _open_maps(cfg, source, transforms.Compose(base)) if cfg.cache else None
    if maps is not None:
        probe = MapDataset(maps[0], torch.arange(len(train_folder)), torch.tensor(train_folder.targets),
                           [0.0] * cfg.channels, [1.0] * cfg.channels)
        mean, std = stats or _folder_stats(cfg, probe, picked.train)
        loaders, held = _cache_loaders(cfg, parts, maps, seed, rank, world_size, mean, std, device, source.flip)
    else:
        probe = _with_transform(train_folder, transforms.Compose([*base, transforms.ToTensor()]))
        mean, std = stats or _folder_stats(cfg, probe, picked.train)
        loaders, held = _decode_loaders(cfg, parts, base, seed, rank, world_size, mean, std, device), None
    num_classes = len(source.classes)
    info = {
        "name": cfg.name, "location": source.location,
        "mode": "full" if cfg.sample is None else f"sample {cfg.sample}",
        "loader": "cache" if maps is not None else "dataloader", **({"cache": held} if maps is not None else {}),
        "sizes": {s: len(idx) for s, (_, idx, _) in parts.items()},
        "class_counts": {s: counts("classification", y, num_classes) for s, (_, _, y) in parts.items()},
        "input_shape": [cfg.channels, size, size], "mean": mean, "std": std,
        **test_info(cfg, None if "test" not in parts else "official" if test_folder is not None else "carved"),
    }
    if rank == 0:  # what meta.json records; the other ranks read the same files
        digest_of = _map_digests(source, maps) if maps is not None else None
        # A carved test split is left out, as it always was: recorded fingerprints stay comparable.
        used = {s: [folder.samples[int(i)] for i in idx] for s, (folder, idx, _) in parts.items()
                if s != "test" or test_folder is not None}
        info["sha256"] = fingerprint_files(used, str(Path(train_folder.root).parent), digest_of)
        info["fingerprint_of"] = "files"
    for split, per_class in info["class_counts"].items():
        check_labels(cfg.name, split, per_class, source.classes)
    return Data(loaders["train"], loaders["val"], loaders.get("test"), (cfg.channels, size, size),
                num_classes, source.classes, mean, std, info)


def _folder_parts(cfg, source: Source, picked: Indices) -> dict[str, tuple[Any, torch.Tensor, torch.Tensor]]:
    """split -> (the ImageFolder it reads, its examples' indices there, their labels)."""
    train_folder, test_folder = source.folder
    targets = torch.tensor(train_folder.targets)
    parts = {"train": (train_folder, picked.train, targets[picked.train]),
             "val": (train_folder, picked.val, targets[picked.val])}
    if test_folder is not None:
        test_targets = torch.tensor(test_folder.targets)
        check_label_range(cfg.name, "test", test_targets, source.classes)
        if test_folder.classes != source.classes:
            raise ConfigError(f"data.root: the test folder's classes {test_folder.classes} differ from the "
                              f"training folder's {source.classes}; use the same class subfolders in both.")
        n_test = picked.test_count(len(test_targets))
        parts["test"] = (test_folder, torch.arange(n_test), test_targets[:n_test])
    elif picked.carved is not None and len(picked.carved):
        carved = picked.carved[:picked.test_count(len(picked.carved))]
        parts["test"] = (train_folder, carved, targets[carved])
    return parts


def worker_count(num_workers: int | None, world_size: int) -> int:
    """data.num_workers, null resolved: one worker per CPU core this process may use (the
    machine's cores shared among the DDP processes on it), less one for the training loop,
    at most 8 (beyond that, decoding rarely keeps up with the extra start-up and memory)."""
    if num_workers is not None:
        return num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    return max(0, min(8, per_process - 1))


def _sampler(cfg, split: str, n: int, seed: int, rank: int, world_size: int) -> EpochSampler:
    train = split == "train"
    return EpochSampler(n, shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train,
                        batch_size=cfg.batch_size if train else None)


def _decode_loaders(cfg, parts, base, seed: int, rank: int, world_size: int, mean, std,
                    device: torch.device) -> dict[str, Any]:
    from torchvision import transforms

    size, norm = cfg.image_size, transforms.Normalize(mean, std)
    aug = [transforms.RandomCrop(size, padding=max(1, size // 8)), transforms.RandomHorizontalFlip()]
    train_tf = transforms.Compose([*base, *(aug if cfg.augment else []), transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([*base, transforms.ToTensor(), norm])
    loaders = {}
    for split, (folder, idx, _) in parts.items():
        train = split == "train"
        dataset = torch.utils.data.Subset(_with_transform(folder, train_tf if train else eval_tf), idx.tolist())
        plain = torch.utils.data.Subset(_with_transform(folder, eval_tf), idx.tolist()) if train else None
        loaders[split] = DataLoaderAdapter(
            dataset, cfg.batch_size, _sampler(cfg, split, len(idx), seed, rank, world_size),
            worker_count(cfg.num_workers, world_size), pin_memory=torch.cuda.is_available(), seed=seed + rank,
            preview_dataset=plain, prefetch=cfg.prefetch,
            probe_workers=train and device.type == "cpu" and not cfg.augment)  # random crops: not comparable
    return loaders


def _open_maps(cfg, source: Source, resize) -> list | None:
    """The decoded maps of the train folder and, where there is one, the test folder. For a
    run folder opened again (writes_off), only maps built before; when one is missing, None
    (the files are then decoded as without data.cache), or bad input for a training from
    the folder's records, whose batches must be the run's own."""
    from PIL import Image

    from expkit.data.cache import cache_folder, existing_map, open_map
    from expkit.data.sources import training_from_records, writes_off

    mode = "L" if cfg.channels == 1 else "RGB"

    def decode(file):  # what ImageFolder's loader and the decode path's resize make of it
        with Image.open(file) as img:
            return resize(img.convert("RGB")).convert(mode)

    root = Path(cfg.root).expanduser()
    cap = memory_cap(cfg, 1)  # a map this size or smaller is memory-mapped, shared by every process
    folders = [folder for folder in source.folder if folder is not None]
    if writes_off():
        where = cache_folder(root, cfg.cache_dir, make=False)
        maps = [existing_map(folder, root, where, cfg.image_size, cfg.channels, cap) for folder in folders]
        if all(m is not None for m in maps):
            return maps
        if training_from_records():  # the decode path's augmentation draws differ: no resume bit for bit
            extra = f" data.cache_dir={cfg.cache_dir}" if cfg.cache_dir else ""
            raise ConfigError(f"data.cache: no map of these images in {where} (removed, or the images changed "
                              f"since); {writes_off()}. Build it by starting a run on this data: expkit train "
                              f"data=folder data.root={root} data.image_size={cfg.image_size} "
                              f"data.channels={cfg.channels} data.cache=true{extra} trainer.max_steps=1; then "
                              "try again.")
        log.info("data.cache: no map of these images in %s; decoding them instead (%s)", where, writes_off())
        return None
    where = cache_folder(root, cfg.cache_dir)
    return [open_map(folder, root, where, cfg.image_size, cfg.channels, decode, cap) for folder in folders]


def _map_digests(source: Source, maps: list):
    digests = {}
    for folder, image_map in zip([f for f in source.folder if f is not None], maps, strict=True):
        digests.update({path: bytes(d) for (path, _), d in zip(folder.samples, image_map.digests, strict=True)})
    return digests.__getitem__


def _cache_loaders(cfg, parts, maps, seed: int, rank: int, world_size: int, mean, std, device, flip: bool):
    """Splits whose normalized floats fit in data.max_memory are held in memory and batched
    as the tensor path does (the same speed); larger ones stream from the map."""
    train_folder = parts["train"][0]
    floats = sum(len(idx) for _, idx, _ in parts.values()) * 4 * maps[0].row_bytes
    held = floats <= memory_cap(cfg, world_size)
    where = device if held and cfg.on_device else torch.device("cpu")
    loaders = {}
    for split, (folder, idx, labels) in parts.items():
        image_map = maps[0] if folder is train_folder else maps[1]
        augment = flip if cfg.augment and split == "train" else None
        sampler = _sampler(cfg, split, len(idx), seed, rank, world_size)
        if held:
            x = normalized_rows(image_map, idx, mean, std).to(where)
            crop_flip = None if augment is None else (lambda x: random_crop_flip(x, flip=flip))
            loaders[split] = TensorLoader(x, labels.to(where), cfg.batch_size, sampler, crop_flip)
        else:
            loaders[split] = CacheLoader(image_map, idx, labels, cfg.batch_size, sampler, mean, std, device,
                                         cfg.prefetch, augment)
    how = "in memory" if held else "streamed from the map"
    log.info("data.cache: %s (normalized floats %.0f MiB, data.max_memory %.0f MiB)", how, floats / 2**20,
             memory_cap(cfg, world_size) / 2**20)
    return loaders, how


def memory_cap(cfg, world_size: int) -> int:
    """data.max_memory in bytes; null = half the machine's RAM, shared among the DDP processes
    on it."""
    if cfg.max_memory is not None:
        return cfg.max_memory * 2**20
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 // local


def normalized_rows(image_map, rows: torch.Tensor, mean, std) -> torch.Tensor:
    """Rows of a map as ToTensor and Normalize make them (the same float ops, the same bits),
    converted 64 MiB of floats at a time (the temporaries stay small beside the result)."""
    chunk = max(1, 2**26 // (4 * image_map.row_bytes))
    out = torch.empty((len(rows), *image_map.shape[1:]), dtype=torch.float32)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    for start in range(0, len(rows), chunk):
        part = torch.from_numpy(image_map.take(rows[start:start + chunk].numpy()))
        out[start:start + chunk] = part.float().div_(255).sub_(m).div_(s)
    return out


def _folder_stats(cfg, probe, train_idx: torch.Tensor) -> tuple[list[float], list[float]]:
    """Channel statistics from up to 256 training images: cheap and close enough."""
    stats_x = torch.stack([probe[int(i)][0] for i in train_idx[:256]])
    check_finite(cfg.name, "train", stats_x)
    return channel_stats(stats_x)


def _with_transform(folder, transform):
    """The ImageFolder the source scanned, with another transform: the disk is listed once."""
    view = copy.copy(folder)
    view.transform = transform
    return view
