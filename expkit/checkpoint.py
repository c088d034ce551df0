"""Checkpoints that survive faults.

Every save writes `checkpoints/step-<N>.pt` to a temporary file in the same folder,
fsyncs it, renames it into place and fsyncs the folder; then its SHA-256 goes into a
sidecar `.sha256` file, and `last.pt` (and `best.pt` when the metric improved) become
hard links to it, each swapped in by an atomic rename. Old numbered files are deleted
only after the new one is complete. A file without a matching sidecar is incomplete or
damaged and is skipped on load, with a warning naming it.

Everything inside is plain data (tensors, numbers, strings, lists, dicts), so loading
uses `torch.load(weights_only=True)` and a file that smuggles in a pickled object is
refused rather than run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("expkit")
NUMBERED = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    pass


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    slow = float(os.environ.get("EXPKIT_TEST_SLOW_WRITE", "0"))  # test hook: widen the window
    with open(tmp, "wb") as f:
        for i in range(0, len(data), 1 << 16):
            f.write(data[i : i + (1 << 16)])
            if slow:
                f.flush()
                time.sleep(slow)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _link_atomic(target: Path, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.link(target, tmp)
    os.replace(tmp, link)


def save(folder: Path, state: dict[str, Any], step: int, best: bool, keep_last: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = folder / f"step-{step:09d}.pt"
    _write_bytes_atomic(path, data)
    digest = hashlib.sha256(data).hexdigest()
    _write_bytes_atomic(folder / f"{path.name}.sha256", digest.encode())
    for name in ("last.pt", "best.pt") if best else ("last.pt",):
        _link_atomic(path, folder / name)
        _link_atomic(folder / f"{path.name}.sha256", folder / f"{name}.sha256")
    _fsync_dir(folder)
    for old in numbered(folder)[keep_last:]:
        if os.path.samefile(old, folder / "last.pt") or (
                (folder / "best.pt").exists() and os.path.samefile(old, folder / "best.pt")):
            continue
        old.unlink(missing_ok=True)
        Path(f"{old}.sha256").unlink(missing_ok=True)
    return path


def numbered(folder: Path) -> list[Path]:
    """Numbered checkpoints, newest first."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if NUMBERED.match(p.name)]
    return sorted(files, key=lambda p: int(NUMBERED.match(p.name).group(1)), reverse=True)


def load_file(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Verify the checksum, then load with weights_only=True."""
    sidecar = Path(f"{path}.sha256")
    if not sidecar.exists():
        raise CheckpointError(f"{path} has no checksum file (the write did not finish)")
    if sidecar.read_text().strip() != _sha256(path):
        raise CheckpointError(f"{path} does not match its checksum (truncated or damaged)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path} holds a pickled object that could run code; refusing to load it "
                                  "(expkit checkpoints hold only tensors and plain data)") from None
        raise CheckpointError(f"{path} could not be loaded: {type(e).__name__}: {e}") from None


def load_latest(folder: Path, map_location: Any = "cpu") -> tuple[dict[str, Any], Path]:
    """The newest valid checkpoint; a damaged newer one is skipped with a warning."""
    candidates: list[Path] = []
    last = folder / "last.pt"
    if last.exists():
        candidates.append(last)
    candidates += numbered(folder)
    if not candidates:
        raise CheckpointError(f"{folder} holds no checkpoint to resume from")
    problems = []
    for path in candidates:
        try:
            state = load_file(path, map_location)
        except CheckpointError as e:
            if "could run code" in str(e):
                raise
            log.warning("checkpoint %s is unusable, trying an older one: %s", path.name, e)
            problems.append(str(e))
            continue
        if problems:
            log.warning("resuming from %s (step %s) instead", path.name, state.get("step"))
        return state, path
    raise CheckpointError("no valid checkpoint in " + str(folder) + ": " + "; ".join(problems))
