"""`expkit predict RUN_DIR PATH...`: image files (or folders of them), or CSV files for a
run trained on a table -> what the task predicts: the class and its probability with the
top K (classification), numbers in the targets' units (regression), the labels above their
thresholds with every label's probability (multilabel), the raw outputs (own task).

Each image gets the preprocessing of training: RGB, resized to the model's input size
(bilinear, as torchvision's Resize does for folder data), grayscale for 1-channel models,
scaled to [0, 1], then normalized with the run's training statistics. A CSV file's rows get
the run's feature columns (by their names in its header), standardized as in training."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from expkit.afterwards.loading import RunModel, load_run, normalize, open_run
from expkit.errors import ConfigError
from expkit.run.folder import write_atomic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def image_paths(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise ConfigError(f"PATH {item!r}: the folder holds no image files "
                                  f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            raise ConfigError(f"PATH {item!r}: no such file or folder.")
    return found


def load_image(path: Path, shape: tuple[int, ...]):
    """One image as the model's input before normalization: (C, H, W) in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((width, height), Image.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot be read as an image ({' '.join(str(e).split())}).") from None
    if channels == 1:
        img = img.convert("L")
    array = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(array)
    return x.unsqueeze(0) if channels == 1 else x.permute(2, 0, 1).contiguous()


def table_rows(run: RunModel, paths: list[Path]) -> tuple[Any, list[tuple[str, int]]]:
    """Every row of the CSV files as the model's input before normalization, and (file, row
    number) for each."""
    import csv as csv_module

    import torch

    from expkit.data.tables import parse_number
    from expkit.run.folder import RunDir

    columns = run.facts.get("columns") or (RunDir(run.path).meta_or_empty().get("data") or {}).get("columns") or {}
    features = list(columns.get("features") or []) if isinstance(columns, dict) else []
    width = run.input_shape[0]
    xs, where = [], []
    for path in paths:
        if path.suffix.lower() != ".csv":
            raise ConfigError(f"PATH {str(path)!r}: this run trained on a table ({width} features); predict reads "
                              "CSV files with a header row.")
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv_module.reader(f))
        header = [h.strip() for h in rows[0]] if rows else []
        names = features or header
        missing = [n for n in names if n not in header]
        if missing or len(names) != width:
            raise ConfigError(f"PATH {str(path)!r}: the run's features are {', '.join(names) or f'{width} columns'}; "
                              f"the file's header has {', '.join(header) or 'nothing'}"
                              f"{' (missing: ' + ', '.join(missing) + ')' if missing else ''}.")
        columns = [header.index(n) for n in names]
        for number, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ConfigError(f"PATH {path} row {number} has {len(row)} values, the header {len(header)}.")
            xs.append([parse_number(row[c], path, number, names[j], "feature") for j, c in enumerate(columns)])
            where.append((str(path), number))
    return torch.tensor(xs, dtype=torch.float32).view(-1, width), where


def predict_tables(run: RunModel, paths: list[Path], top: int = 3, batch_size: int = 1024) -> list[dict[str, Any]]:
    x, where = table_rows(run, paths)
    return [{"path": path, "row": number, **row}
            for (path, number), row in zip(where, predict_batches(run, list(x), top, batch_size), strict=True)]


def predict_images(run: RunModel, paths: list[Path], top: int = 3, batch_size: int = 256) -> list[dict[str, Any]]:
    if len(run.input_shape) != 3 or run.input_shape[0] not in (1, 3):
        raise ConfigError(f"this run's model takes inputs of shape {list(run.input_shape)}, not images "
                          "(1 or 3 channels); predict reads image files.")
    images = [load_image(p, run.input_shape) for p in paths]  # every file read before anything is written
    return [{"path": str(path), **row}
            for path, row in zip(paths, predict_batches(run, images, top, batch_size), strict=True)]


def predict_batches(run: RunModel, inputs: list, top: int, batch_size: int) -> list[dict[str, Any]]:
    """Each input's prediction (inputs before normalization), batch by batch."""
    import torch

    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = torch.stack(inputs[start:start + batch_size]).to(run.device)
            rows += describe_batch(run, run.model(normalize(x, run)).float(), top)
    return rows


def describe_batch(run: RunModel, output, top: int) -> list[dict[str, Any]]:
    """A batch's predictions, as the task reads its outputs: the class, its probability and
    the top K; numbers in the targets' units; the labels above threshold and every label's
    probability; or the outputs themselves (own task)."""
    import torch

    task = run.task
    if task.name == "classification":
        values, indices = torch.softmax(output, dim=1).cpu().topk(max(1, min(top, len(run.classes))), dim=1)
        rows = []
        for v, j in zip(values.tolist(), indices.tolist(), strict=True):
            top_k = [(run.classes[c], float(p)) for p, c in zip(v, j, strict=True)]
            rows.append({"class": top_k[0][0], "index": int(j[0]), "probability": top_k[0][1], "top": top_k})
        return rows
    if task.name == "regression":
        return [{"values": dict(zip(task.names, v, strict=True))} for v in task.predict(output).cpu().tolist()]
    if task.name == "multilabel":
        probs = task.predict(output).cpu()
        return [{"labels": [n for n, on in zip(task.names, above, strict=True) if on],
                 "probabilities": dict(zip(task.names, p, strict=True))}
                for p, above in zip(probs.tolist(), task.above(probs).tolist(), strict=True)]
    return [{"outputs": v} for v in output.cpu().tolist()]


def predict(run_dir: str | Path, paths: list[str], checkpoint: str = "best", top: int = 3,
            out: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    if top < 1:
        raise ConfigError(f"--top: value {top} is not allowed; expected an integer >= 1.")
    if out and not Path(out).resolve().parent.is_dir():
        raise ConfigError(f"--out {out!r}: its folder does not exist.")
    open_run(run_dir)  # a wrong RUN_DIR is said first
    tabular = len(_recorded_shape(run_dir) or [0, 0, 0]) == 1
    files = table_paths(paths) if tabular else image_paths(paths)
    run = load_run(run_dir, checkpoint, overrides)
    rows = predict_tables(run, files, top) if len(run.input_shape) == 1 else predict_images(run, files, top)
    if out:
        write_atomic(Path(out), to_csv(rows))
    return rows


def _recorded_shape(run_dir: str | Path) -> list[int] | None:
    from expkit.run.folder import RunDir

    shape = (RunDir(run_dir).meta_or_empty().get("data") or {}).get("input_shape")
    return shape if isinstance(shape, list) else None


def table_paths(paths: list[str]) -> list[Path]:
    found = []
    for item in paths:
        p = Path(item)
        if not p.is_file():
            raise ConfigError(f"PATH {item!r}: no such file (a run trained on a table predicts the rows of CSV "
                              "files).")
        found.append(p)
    return found


def to_csv(rows: list[dict[str, Any]]) -> str:
    if rows and "class" not in rows[0]:
        return task_csv(rows)
    k = max((len(r["top"]) for r in rows), default=1)
    where = _where(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*where, "class", "probability", *[f"top{i}_{w}" for i in range(1, k + 1)
                                                       for w in ("class", "probability")]])
    for r in rows:
        writer.writerow([*(r[w] for w in where), r["class"], f"{r['probability']:.6f}",
                         *[v for name, p in r["top"] for v in (name, f"{p:.6f}")]])
    return buffer.getvalue()


def _where(rows: list[dict[str, Any]]) -> list[str]:
    """What names each prediction's input: its file, and its row for a table's rows."""
    return ["path", "row"] if rows and "row" in rows[0] else ["path"]


def task_csv(rows: list[dict[str, Any]]) -> str:
    """Regression: one column per target; multilabel: the labels above threshold (joined by
    ;) and one probability column per label; own task: one column per output."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    where = _where(rows)
    if "values" in rows[0]:
        names = list(rows[0]["values"])
        writer.writerow([*where, *names])
        writer.writerows([*(r[w] for w in where), *(f"{r['values'][n]:.6g}" for n in names)] for r in rows)
    elif "labels" in rows[0]:
        names = list(rows[0]["probabilities"])
        writer.writerow([*where, "labels", *(f"p_{n}" for n in names)])
        writer.writerows([*(r[w] for w in where), ";".join(r["labels"]),
                          *(f"{r['probabilities'][n]:.6f}" for n in names)] for r in rows)
    else:
        width = len(rows[0]["outputs"])
        writer.writerow([*where, *(f"output{i}" for i in range(width))])
        writer.writerows([*(r[w] for w in where), *(f"{v:.6g}" for v in r["outputs"])] for r in rows)
    return buffer.getvalue()


def table(rows: list[dict[str, Any]]) -> str:
    from expkit.runlist import columns

    if rows and "class" not in rows[0]:
        head, *cells = list(csv.reader(io.StringIO(task_csv(rows))))
        return columns(head, cells).rstrip()
    where = _where(rows)
    cells = [[*(str(r[w]) for w in where), r["class"], f"{r['probability']:.4f}",
              ", ".join(f"{name} {p:.3f}" for name, p in r["top"])] for r in rows]
    return columns([*where, "class", "probability", "top"], cells).rstrip()
