"""Where examples come from. Each source returns tensors (or, for folder data, a
torchvision data set) for its own train split and, where it has one, its test split.

Tensor sources return float images in [0, 1] shaped (N, C, H, W) and int64 labels; the
caller splits, samples and normalizes them.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from expkit.registry import DATASETS
from expkit.schema import ConfigError


@dataclass
class Source:
    train_x: torch.Tensor | None
    train_y: torch.Tensor | None
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    classes: list[str] = field(default_factory=list)
    location: str = ""  # where the data was read from, for the log
    image: bool = True  # images get crop/flip augmentation
    flip: bool = False  # horizontal flips keep the meaning (not for digits)
    folder: object = None  # folder data: (train ImageFolder, test ImageFolder or None)


def default_root() -> Path:
    env = os.environ.get("EXPKIT_DATA")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "expkit" / "data"


def data_root(cfg) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root()


@DATASETS.register("digits")
def load_digits(cfg) -> Source:
    # Read scikit-learn's bundled CSV directly: importing sklearn.datasets costs ~1 s.
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    return Source(x, y, classes=[str(i) for i in range(10)], location=str(path))


# ------------------------------------------------------------------ MNIST family (IDX)
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
MNIST_FAMILY = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format): magic, dims, then big-endian data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ConfigError(f"data.root: {path} is not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[data[2]]
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ConfigError(f"data.root: {path} is truncated: header says {dims}, found {array.size} values")
    return torch.from_numpy(array.astype(np.int64 if ndim == 1 else np.uint8).reshape(dims))


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def _missing_files_error(dataset: str, folder: Path, names: list[str], cause: str) -> ConfigError:
    return ConfigError(
        f"data.name: {dataset!r} is not in {folder} and could not be downloaded ({cause}). "
        f"Place these files there (as downloaded, .gz is fine): {', '.join(names)}; "
        f"or set data.root=DIR to where they are."
    )


def _load_mnist_family(cfg, name: str) -> Source:
    import torchvision

    root = data_root(cfg)
    raw = root / MNIST_FAMILY[name] / "raw"
    if not all(_find(raw, f) for f in MNIST_FILES):
        if not cfg.download:
            raise _missing_files_error(name, raw, MNIST_FILES, "data.download=false")
        try:
            getattr(torchvision.datasets, MNIST_FAMILY[name])(str(root), train=True, download=True)
        except Exception as e:  # no network, a proxy, a mirror down: say what to do instead
            raise _missing_files_error(name, raw, MNIST_FILES, f"{type(e).__name__}: {e}") from None
    tx, ty, vx, vy = (read_idx(_find(raw, f)) for f in MNIST_FILES)
    classes = getattr(torchvision.datasets, MNIST_FAMILY[name]).classes
    return Source(tx.unsqueeze(1).float() / 255, ty, vx.unsqueeze(1).float() / 255, vy,
                  classes=list(classes), location=str(raw))


@DATASETS.register("mnist")
def load_mnist(cfg) -> Source:
    return _load_mnist_family(cfg, "mnist")


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(cfg) -> Source:
    return _load_mnist_family(cfg, "fashion_mnist")


# ------------------------------------------------------------- CIFAR-10 (pickled batches)
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


@DATASETS.register("cifar10")
def load_cifar10(cfg) -> Source:
    root = data_root(cfg)
    folder = root / CIFAR_DIR
    if not all((folder / f).exists() for f in CIFAR_FILES):
        if not cfg.download:
            raise _missing_files_error("cifar10", folder, CIFAR_FILES, "data.download=false")
        try:
            from torchvision.datasets.utils import download_url

            download_url(CIFAR_URL, str(root))
            with tarfile.open(root / "cifar-10-python.tar.gz") as tar:
                tar.extractall(root, filter="data")
        except Exception as e:
            raise _missing_files_error("cifar10", folder, CIFAR_FILES, f"{type(e).__name__}: {e}") from None
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    tx, ty = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    vx, vy = _read_cifar_batch(folder / "test_batch")
    with open(folder / "batches.meta", "rb") as f:
        classes = pickle.load(f, encoding="latin1")["label_names"]
    return Source(tx.float() / 255, ty, vx.float() / 255, vy, classes=list(classes),
                  location=str(folder), flip=True)


# --------------------------------------------------------------------------- folder
@DATASETS.register("folder")
def load_folder(cfg) -> Source:
    from torchvision import datasets

    root = Path(cfg.root).expanduser()
    train_dir = root / "train" if (root / "train").is_dir() else root
    if not train_dir.is_dir():
        raise ConfigError(f"data.root: value {cfg.root!r} is not a folder; expected ROOT/<class>/<images> "
                          "or ROOT/train/<class>/<images>.")
    try:
        train = datasets.ImageFolder(str(train_dir))
        test = datasets.ImageFolder(str(root / "test")) if (root / "test").is_dir() else None
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(f"data.root: {cfg.root!r} holds no class folders with images ({e}).") from None
    return Source(None, torch.tensor(train.targets), None,
                  torch.tensor(test.targets) if test else None,
                  classes=list(train.classes), location=str(train_dir), flip=True, folder=(train, test))


# ------------------------------------------------------------------------ synthetic
@DATASETS.register("synthetic")
def load_synthetic(cfg) -> Source:
    """Each class has its own mean pattern plus noise, so a model can learn something."""
    g = torch.Generator().manual_seed(cfg.split_seed + 1234)
    total = cfg.size + round(cfg.size * cfg.val_fraction / max(1e-9, 1 - cfg.val_fraction))
    shape = tuple(cfg.shape)
    means = torch.rand((cfg.num_classes, *shape), generator=g)
    y = torch.randint(0, cfg.num_classes, (total,), generator=g)
    x = (0.5 * means[y] + 0.5 * torch.rand((total, *shape), generator=g)).clamp_(0, 1)
    return Source(x, y, classes=[str(i) for i in range(cfg.num_classes)], location="synthetic",
                  image=len(shape) == 3)
