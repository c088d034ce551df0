"""Where examples come from. Each source returns tensors (or, for folder data, a
torchvision data set) for its own train split and, where it has one, its test split.

Tensor sources return float images in [0, 1] shaped (N, C, H, W) and int64 labels; the
caller splits, samples and normalizes them.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import logging
import os
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from expkit.config.registry import DATASETS
from expkit.errors import ConfigError


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
    test_origin: str = "official"  # how test_x was made, when there is one: official, generated
    rows: dict | None = None  # own data (data=python): split -> rows read on demand (data/python.py)
    features: list[str] | None = None  # tables: the feature columns
    targets: list[str] | None = None  # tables: the target columns
    integer_targets_are_numbers: bool = False  # a table's integer column may be a regression target
    file_sha256: str | None = None  # data=csv: the file's


def default_root() -> Path:
    env = os.environ.get("EXPKIT_DATA")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "expkit" / "data"


def val_count(n: int, val_fraction: float) -> int:
    """Examples held out for validation from n: a val_fraction share, at least one when the
    share is above zero (and never all of them)."""
    if val_fraction <= 0 or n <= 1:
        return 0
    return min(n - 1, max(1, round(n * val_fraction)))


def data_root(cfg) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root()


@DATASETS.register("digits")
def load_digits(cfg) -> Source:
    # Read scikit-learn's bundled CSV directly: importing sklearn.datasets is slow (it pulls
    # in most of scikit-learn).
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.name: value 'digits' needs scikit-learn, which ships the bundled digits; "
                          "install it (pip install scikit-learn) or choose another data set.")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.exists():
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        pixels, labels, location = table[:, :-1], table[:, -1], str(path)
    else:  # a scikit-learn whose layout moved the file: pay for the import instead
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        pixels, labels, location = bunch.data.astype(np.float32), bunch.target, "sklearn.datasets.load_digits"
    x = torch.from_numpy(np.ascontiguousarray(pixels / 16.0, dtype=np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(labels).astype(np.int64))
    return Source(x, y, classes=[str(i) for i in range(10)], location=location)


# ------------------------------------------------------------------ MNIST family (IDX)
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
MNIST_FAMILY = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format): magic 0x0000TTDD (TT the type, DD the number of
    dimensions), DD big-endian int32 sizes, then the big-endian data. Labels (1-D) come back
    as int64, unsigned bytes as uint8, every other type as float32."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise ConfigError(f"data.root: {path} could not be read ({e}); download or place it again.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise ConfigError(f"data.root: {path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ConfigError(f"data.root: {path} is truncated inside its header")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_TYPES[data[2]])
    count = (len(data) - header) // dtype.itemsize
    if count != int(np.prod(dims)):
        raise ConfigError(f"data.root: {path} does not match its header: header says {dims}, "
                          f"found {count} values")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    if ndim == 1:
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.astype(np.uint8 if dtype == np.uint8 else np.float32))


def _idx_images(t: torch.Tensor) -> torch.Tensor:
    """(N, H, W) IDX images -> float (N, 1, H, W) in [0, 1] (bytes are scaled; floats kept)."""
    return (t.float() / 255 if t.dtype == torch.uint8 else t.float()).unsqueeze(1)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


DOWNLOAD_OFF = "downloading is off (data.download=false)"
# Set while a run folder that exists already is opened again (eval, predict, export, resume,
# reproduce and its re-run): its config may name any data.root or data.cache_dir, and expkit
# writes nothing outside such a folder, so data is read where it is, never downloaded or cached.
REOPENED = ("a run folder opened again downloads and caches no data where its config points: expkit writes "
            "nothing outside it")
_reading_only = False
_training = False  # and it trains (resume, reproduce's re-run): batches must be the run's own


@contextlib.contextmanager
def reading_only(training: bool = False) -> Iterator[None]:
    global _reading_only, _training
    before = _reading_only, _training
    _reading_only, _training = True, training
    try:
        yield
    finally:
        _reading_only, _training = before


def writes_off() -> str | None:
    """Why the data must not be written now (a download, a cache), or None."""
    return REOPENED if _reading_only else None


def training_from_records() -> bool:
    """Whether a run folder opened again is trained on (writes_off is set then too)."""
    return _training


def download_off(cfg) -> str | None:
    """Why a missing data set is not downloaded, or None when it may be."""
    return writes_off() if cfg.download else DOWNLOAD_OFF


def _missing_files_error(dataset: str, root: Path, folder: Path, missing: list[str], cause: str | Exception,
                         how: str) -> ConfigError:
    """One paragraph: which files are missing where, why they were not downloaded, what to do."""
    if isinstance(cause, Exception):
        cause = f"the download failed: {type(cause).__name__}: {' '.join(str(cause).split())}"
    return ConfigError(
        f"data.name: data set {dataset!r} is missing files in {folder}: {', '.join(missing)}; "
        f"{cause}. {how} Or set data.root=DIR: they are then looked for in DIR/{folder.relative_to(root)}."
    )


def _load_mnist_family(cfg, name: str) -> Source:
    import torchvision

    root = data_root(cfg)
    raw = root / MNIST_FAMILY[name] / "raw"
    dataset_class = getattr(torchvision.datasets, MNIST_FAMILY[name])
    missing = [f for f in MNIST_FILES if not _find(raw, f)]
    if missing:
        how = (f"Place these files there, as downloaded from {dataset_class.mirrors[0]} "
               "(the .gz files are fine, or unpacked).")
        if off := download_off(cfg):
            raise _missing_files_error(name, root, raw, missing, off, how)
        try:
            dataset_class(str(root), train=True, download=True)
        except Exception as e:  # no network, a proxy, a mirror down: say what to do instead
            raise _missing_files_error(name, root, raw, missing, e, how) from None
    paths = [_find(raw, f) for f in MNIST_FILES]
    tx, ty, vx, vy = (read_idx(p) for p in paths)
    for (x, y), (px, py) in (((tx, ty), paths[:2]), ((vx, vy), paths[2:])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(f"data.root: {px.name} (shape {list(x.shape)}) and {py.name} (shape {list(y.shape)}) "
                              f"in {raw} do not fit together: expected N images of H x W and N labels.")
    classes = dataset_class.classes
    return Source(_idx_images(tx), ty, _idx_images(vx), vy, classes=list(classes), location=str(raw))


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


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's batches are pickles of dicts, lists and numpy arrays: only those classes
    load; a file that names anything else (a function, os.system) is refused, never called."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes in a protocol-2 pickle

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def _unpickle(f) -> dict:
    return _ArraysOnly(f, encoding="latin1").load()


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            batch = _unpickle(f)
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch["labels"] if "labels" in batch else batch["fine_labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"data.root: {path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                          "download or place it again.") from None
    if len(x) != len(y):
        raise ConfigError(f"data.root: {path} has {len(x)} images but {len(y)} labels")
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


@DATASETS.register("cifar10")
def load_cifar10(cfg) -> Source:
    root = data_root(cfg)
    folder = root / CIFAR_DIR
    missing = [f for f in CIFAR_FILES if not (folder / f).exists()]
    if missing:
        how = (f"Download {CIFAR_URL} and unpack it in {root} (tar xzf cifar-10-python.tar.gz), "
               f"which makes {CIFAR_DIR}/ with these files.")
        if off := download_off(cfg):
            raise _missing_files_error("cifar10", root, folder, missing, off, how)
        try:
            from torchvision.datasets.utils import download_url

            download_url(CIFAR_URL, str(root))
            with tarfile.open(root / "cifar-10-python.tar.gz") as tar:
                # The "data" filter refuses absolute paths and links out of root; Pythons
                # before 3.10.12 / 3.11.4 lack it.
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(root, **extra)
        except Exception as e:
            raise _missing_files_error("cifar10", root, folder, missing, e, how) from None
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    tx, ty = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    vx, vy = _read_cifar_batch(folder / "test_batch")
    with open(folder / "batches.meta", "rb") as f:
        try:
            classes = _unpickle(f)["label_names"]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
            raise ConfigError(f"data.root: {folder / 'batches.meta'} is not CIFAR-10's batches.meta: {e}") from None
    return Source(tx.float() / 255, ty, vx.float() / 255, vy, classes=list(classes),
                  location=str(folder), flip=True)


# --------------------------------------------------------------------------- folder
@DATASETS.register("folder")
def load_folder(cfg) -> Source:
    from torchvision import datasets

    if not cfg.root:
        raise ConfigError("data.root: value None is not allowed for data=folder; set data.root=DIR, a folder "
                          "of class subfolders with images (DIR/<class>/*.png, or DIR/train/<class>/... "
                          "and optionally DIR/test/<class>/...).")
    root = Path(cfg.root).expanduser()
    train_dir = root / "train" if (root / "train").is_dir() else root
    if not train_dir.is_dir():
        raise ConfigError(f"data.root: value {cfg.root!r} is not a folder; expected ROOT/<class>/<images> "
                          "or ROOT/train/<class>/<images>.")
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    skipped: list[str] = []

    def is_image(path: str) -> bool:  # ImageFolder's own rule, with the files it leaves out kept
        if has_file_allowed_extension(path, IMG_EXTENSIONS):
            return True
        skipped.append(path)
        return False

    try:
        # allow_empty: a class folder without images is a warning (its class has no
        # examples, as check_labels says), not a refusal of the whole data set
        train = datasets.ImageFolder(str(train_dir), is_valid_file=is_image, allow_empty=True)
        test = datasets.ImageFolder(str(root / "test"), is_valid_file=is_image,
                                    allow_empty=True) if (root / "test").is_dir() else None
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(f"data.root: {cfg.root!r} holds no class folders with images ({e}).") from None
    if skipped:
        logging.getLogger("expkit").info(
            "data.root: skipped %d file(s) without an image extension (%s): %s%s", len(skipped),
            " ".join(IMG_EXTENSIONS), ", ".join(sorted(skipped)[:3]), " ..." if len(skipped) > 3 else "")
    if not train.samples:
        raise ConfigError(f"data.root: {cfg.root!r} holds class folders but no image in any of them.")
    # data.cache decodes every file when it builds its map and refuses one that does not decode
    for part in ((train, test) if test is not None else (train,)) if not getattr(cfg, "cache", False) else ():
        _check_images(part.samples)
    if len(train.classes) < 2:
        raise ConfigError(f"data.root: {cfg.root!r} holds {len(train.classes)} class folder(s) "
                          f"({', '.join(train.classes) or 'none'}); a classifier needs at least 2 "
                          "(ROOT/<class>/<images>, one folder per class).")
    return Source(None, torch.tensor(train.targets), None,
                  torch.tensor(test.targets) if test else None,
                  classes=list(train.classes), location=str(train_dir), flip=True, folder=(train, test))


def _check_images(samples: list[tuple[str, int]]) -> None:
    """Every file opens as an image (its header read, nothing decoded): a file that is not one
    (text renamed .png, a zero-byte download) is bad input before training, not a crash in
    the middle of an epoch."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 - the header is read lazily
        except (UnidentifiedImageError, OSError, ValueError) as e:
            bad.append((path, " ".join(str(e).split())[:80]))
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:3])
        raise ConfigError(f"data.root: {len(bad)} of {len(samples)} files are not images that can be read: {shown}"
                          f"{' ...' if len(bad) > 3 else ''}. Remove or replace them.")


# ------------------------------------------------------------------------ synthetic
def _mix(class_means: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(0.5 x the example's class mean + 0.5 x noise) clipped to [0, 1], computed in the two
    tensors given (no data-sized temporaries: 100k examples would otherwise peak at 4x)."""
    return class_means.mul_(0.5).add_(noise.mul_(0.5)).clamp_(0, 1)


@DATASETS.register("synthetic")
def load_synthetic(cfg) -> Source:
    """Each class has its own mean pattern plus noise, so a model can learn something."""
    g = torch.Generator().manual_seed(cfg.split_seed + 1234)
    # A total whose training split is exactly `size` once the split holds out val_count
    # (train = total - val_count grows by 0 or 1 per example; take the largest such total,
    # so a tiny data set still gets a validation example).
    def n_train(total: int) -> int:
        return total - val_count(total, cfg.val_fraction)

    total = max(1, cfg.size + round(cfg.size * cfg.val_fraction / max(1e-9, 1 - cfg.val_fraction)))
    while n_train(total) < cfg.size:
        total += 1
    while n_train(total) > cfg.size:
        total -= 1
    while n_train(total + 1) == cfg.size:
        total += 1
    shape = tuple(cfg.shape)
    means = torch.rand((cfg.num_classes, *shape), generator=g)
    y = torch.randint(0, cfg.num_classes, (total,), generator=g)
    x = _mix(means[y], torch.rand((total, *shape), generator=g))
    # A test split drawn after the others (so they stay as they were), test_fraction of all.
    n_test = 0 if cfg.test_fraction <= 0 else max(1, round(total * cfg.test_fraction / (1 - cfg.test_fraction)))
    test_y = torch.randint(0, cfg.num_classes, (n_test,), generator=g)
    test_x = _mix(means[test_y], torch.rand((n_test, *shape), generator=g))
    return Source(x, y, test_x if n_test else None, test_y if n_test else None,
                  classes=[str(i) for i in range(cfg.num_classes)], location="synthetic",
                  image=len(shape) == 3, test_origin="generated")
