"""`expkit predict RUN_DIR PATH...`: image files (or folders of them) -> the class and its
probability, with the top K. Each image gets the preprocessing of training: RGB, resized to
the model's input size (bilinear, as torchvision's Resize does for folder data), grayscale
for 1-channel models, scaled to [0, 1], then normalized with the run's training statistics."""

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


def predict_images(run: RunModel, paths: list[Path], top: int = 3, batch_size: int = 256) -> list[dict[str, Any]]:
    import torch

    if len(run.input_shape) != 3 or run.input_shape[0] not in (1, 3):
        raise ConfigError(f"this run's model takes inputs of shape {list(run.input_shape)}, not images "
                          "(1 or 3 channels); predict reads image files.")
    images = [load_image(p, run.input_shape) for p in paths]  # every file read before anything is written
    k = max(1, min(top, len(run.classes)))
    rows = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.stack(images[start:start + batch_size]).to(run.device)
            probs = torch.softmax(run.model(normalize(x, run)).float(), dim=1).cpu()
            values, indices = probs.topk(k, dim=1)
            for i, path in enumerate(paths[start:start + batch_size]):
                top_k = [(run.classes[j], float(v)) for v, j in zip(values[i].tolist(), indices[i].tolist(),
                                                                     strict=True)]
                rows.append({"path": str(path), "class": top_k[0][0], "index": int(indices[i][0]),
                             "probability": top_k[0][1], "top": top_k})
    return rows


def predict(run_dir: str | Path, paths: list[str], checkpoint: str = "best", top: int = 3,
            out: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    if top < 1:
        raise ConfigError(f"--top: value {top} is not allowed; expected an integer >= 1.")
    if out and not Path(out).resolve().parent.is_dir():
        raise ConfigError(f"--out {out!r}: its folder does not exist.")
    open_run(run_dir)  # a wrong RUN_DIR is said first
    files = image_paths(paths)
    run = load_run(run_dir, checkpoint, overrides)
    rows = predict_images(run, files, top)
    if out:
        write_atomic(Path(out), to_csv(rows))
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    k = max((len(r["top"]) for r in rows), default=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "class", "probability", *[f"top{i}_{w}" for i in range(1, k + 1)
                                                       for w in ("class", "probability")]])
    for r in rows:
        writer.writerow([r["path"], r["class"], f"{r['probability']:.6f}",
                         *[v for name, p in r["top"] for v in (name, f"{p:.6f}")]])
    return buffer.getvalue()


def table(rows: list[dict[str, Any]]) -> str:
    width = max(4, *(len(r["path"]) for r in rows))
    lines = [f"{'path':<{width}}  class  probability  top"]
    for r in rows:
        top = ", ".join(f"{name} {p:.3f}" for name, p in r["top"])
        lines.append(f"{r['path']:<{width}}  {r['class']:<5}  {r['probability']:.4f}       {top}")
    return "\n".join(lines)
