"""Tables: rows of numbers, one example per row. data=diabetes (scikit-learn's bundled
regression data) and data=csv (a file of your own, data.path and data.target).

A table's features come back as float32 (N, F) and its targets as they are written:
int64 when every value of a target column is an integer, float32 otherwise, (N,) for one
target column and (N, k) for several; class names (text) become class indices. What the
targets mean is the task's to say (data/__init__.py checks them against it)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from expkit.config.registry import DATASETS
from expkit.data.sources import Source
from expkit.errors import ConfigError

DIABETES_FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
MAX_CSV_BYTES = 2 * 1024**3  # a table read into memory: larger files are refused, not swapped on
MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}


@DATASETS.register("diabetes")
def load_diabetes(cfg) -> Source:
    """442 patients: age, sex, body mass index, blood pressure and six blood serum measurements
    (raw, not scikit-learn's pre-scaled copy; expkit standardizes them from the training
    split), and a quantitative measure of disease progression one year later."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.name: value 'diabetes' needs scikit-learn, which ships the bundled diabetes "
                          "data; install it (pip install scikit-learn) or choose another data set.")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    with gzip.open(folder / "diabetes_data_raw.csv.gz", "rt") as f:
        x = np.loadtxt(f, dtype=np.float32)
    with gzip.open(folder / "diabetes_target.csv.gz", "rt") as f:
        y = np.loadtxt(f, dtype=np.float32)
    return Source(torch.from_numpy(x), torch.from_numpy(y), location=str(folder / "diabetes_data_raw.csv.gz"),
                  image=False, features=list(DIABETES_FEATURES), targets=["progression"])


@DATASETS.register("csv")
def load_csv(cfg) -> Source:
    path = _csv_path(cfg)
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or not any(rows[0]):
        raise ConfigError(f"data.path: {str(path)!r} is empty; expected a header row naming the columns, then one "
                          "row per example.")
    header = [name.strip() for name in rows[0]]
    body = [(number, row) for number, row in enumerate(rows[1:], start=2) if any(cell.strip() for cell in row)]
    if not body:
        raise ConfigError(f"data.path: {str(path)!r} has a header and no rows.")
    targets = _target_columns(cfg, header)
    features = _feature_columns(cfg, header, targets)
    for number, row in body:
        if len(row) != len(header):
            raise ConfigError(f"data.path: {path} row {number} has {len(row)} values, the header {len(header)} "
                              "columns; expected one value per column.")
    x = np.empty((len(body), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = header.index(name)
        for i, (number, row) in enumerate(body):
            x[i, j] = parse_number(row[column], path, number, name, "feature")
    y, classes = _targets(body, header, targets, path)
    return Source(torch.from_numpy(x), y, classes=classes, location=str(path), image=False, features=features,
                  targets=targets, integer_targets_are_numbers=True, file_sha256=_sha256(path))


def _csv_path(cfg) -> Path:
    if not cfg.path:
        raise ConfigError("data.path: a value is required with data=csv; expected a CSV file, e.g. "
                          "data.path=houses.csv data.target=price.")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path: value {cfg.path!r} is not a file{' (it is a folder)' if path.is_dir() else ''}; "
                          "expected a CSV file with a header row.")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise ConfigError(f"data.path: {cfg.path!r} is {path.stat().st_size / 1024**3:.1f} GiB; tables up to "
                          f"{MAX_CSV_BYTES // 1024**3} GiB are read into memory. Use data=python for larger ones.")
    return path


def _target_columns(cfg, header: list[str]) -> list[str]:
    from expkit.errors import did_you_mean

    given = cfg.target
    names = [given] if isinstance(given, str) else list(given or [])
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"data.target: value {given!r} is not allowed with data=csv; expected a column name or a "
                          f"list of them, from: {', '.join(header)}.")
    for name in names:
        if name not in header:
            raise ConfigError(f"data.target: value {name!r} is not a column of {cfg.path}"
                              f"{did_you_mean(name, header) or '.'} Its columns: {', '.join(header)}.")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.target: value {given!r} names a column twice.")
    return names


def _feature_columns(cfg, header: list[str], targets: list[str]) -> list[str]:
    if cfg.features is None:
        features = [name for name in header if name not in targets]
    else:
        features = list(cfg.features)
        for name in features:
            if name not in header:
                raise ConfigError(f"data.features: value {name!r} is not a column of {cfg.path}; its columns: "
                                  f"{', '.join(header)}.")
            if name in targets:
                raise ConfigError(f"data.features: value {name!r} is also a target (data.target); a column is one "
                                  "or the other.")
    if not features:
        raise ConfigError(f"data.features: {cfg.path} has no feature columns besides the targets "
                          f"({', '.join(targets)}).")
    return features


def parse_number(cell: str, path: Path, row: int, column: str, what: str) -> float:
    text = cell.strip()
    if text.lower() in MISSING:
        raise ConfigError(f"data.path: {path} row {row}, column {column!r}: the {what} value is missing "
                          f"({cell!r}); every value must be a number. Fill it in or drop the row.")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"data.path: {path} row {row}, column {column!r}: {cell!r} is not a number; {what} "
                          "columns hold numbers (leave text columns out with data.features).") from None
    if not math.isfinite(value):
        raise ConfigError(f"data.path: {path} row {row}, column {column!r}: {cell!r} is not a finite number.")
    return value


def _targets(body: list[tuple[int, list[str]]], header: list[str], targets: list[str],
             path: Path) -> tuple[torch.Tensor, list[str]]:
    """Numbers as written (int64 when every value is an integer), or class names -> indices
    (one text target column: the classes in sorted order)."""
    columns = [header.index(name) for name in targets]
    cells = [[row[c].strip() for c in columns] for _, row in body]
    numeric = all(_is_number(v) for r in cells for v in r)
    if not numeric:
        if len(targets) > 1:
            number, name, cell = next((n, targets[j], r[j]) for (n, _), r in zip(body, cells, strict=True)
                                      for j in range(len(targets)) if not _is_number(r[j]))
            raise ConfigError(f"data.path: {path} row {number}, column {name!r}: {cell!r} is not a number; several "
                              "target columns (data.target=[...]) hold numbers or 0/1 labels.")
        missing = next(((n, r[0]) for (n, _), r in zip(body, cells, strict=True) if r[0].lower() in MISSING), None)
        if missing:
            raise ConfigError(f"data.path: {path} row {missing[0]}, column {targets[0]!r}: the target is missing "
                              f"({missing[1]!r}).")
        classes = sorted({r[0] for r in cells})
        index = {name: i for i, name in enumerate(classes)}
        return torch.tensor([index[r[0]] for r in cells], dtype=torch.long), classes
    values = np.array([[parse_number(v, path, n, targets[j], "target") for j, v in enumerate(r)]
                       for (n, _), r in zip(body, cells, strict=True)], dtype=np.float64)
    integral = all(_is_integer(v) for r in cells for v in r)
    y = torch.from_numpy(values.astype(np.int64) if integral else values.astype(np.float32))
    return (y[:, 0] if len(targets) == 1 else y), []


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def as_classes(source: Source) -> None:
    """A table's one integer target column, for classification: its distinct values are the
    classes (in order), and each row's value becomes its class index."""
    y = source.train_y
    if source.classes or y is None or y.is_floating_point() or y.ndim != 1:
        return  # text classes are indices already; anything else the task check refuses
    values = torch.unique(y)
    source.classes = [str(int(v)) for v in values]
    source.train_y = torch.searchsorted(values, y)
