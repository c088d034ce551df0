"""Checkpoints that survive faults.

A save writes, in this order, each to a temporary file in the same folder that is fsynced
and then renamed into place (with the folder fsynced after the rename):

    checkpoints/step-<N>.pt.sha256    the SHA-256 of the checkpoint's bytes
    checkpoints/step-<N>.pt           the checkpoint
    checkpoints/last.pt (+ .sha256)   hard links to the two above, swapped in by a rename
    checkpoints/best.pt (+ .sha256)   the same, when the validation metric improved

and only then deletes the numbered checkpoints beyond the newest `keep_last` (best.pt, a
hard link, keeps its data). A kill at any point leaves at most a temporary file, an
orphan checksum or a link that does not match its checksum: all are ignored on load (and
cleaned up by the next save), and the newest complete checkpoint is used. A file that
does not match its checksum (truncated, bit-flipped) is skipped with a warning naming
it, in favour of the next older one; if none is usable, loading fails loudly, it never
starts from scratch.

Everything inside is plain data (tensors, numbers, strings, lists, dicts), so loading
uses `torch.load(weights_only=True)`, and a file that smuggles in a pickled object that
would run code is refused (UnsafeCheckpoint) rather than run, and is not skipped over.

`BackgroundSaver` serializes the state on the training thread, then writes it by the same
rules on a thread of its own, so training continues while the file is checksummed, written
and fsynced; at most one write is in flight (the next one waits for it), and an error in
the write is raised on the training thread at its next save or wait.

Test hook: EXPKIT_TEST_SLOW_WRITE=<seconds> sleeps after every 64 KiB written and
between the steps above, to widen the windows a test kills the writer in.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import pickle
import re
import threading
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from expkit.run.folder import fsync_dir, write_atomic
from expkit.run.provenance import sha256_file

log = logging.getLogger("expkit")
NUMBERED = re.compile(r"^step-(\d+)\.pt$")
SIDECAR = re.compile(r"^step-(\d+)\.pt\.sha256$")
LAST, BEST = "last", "best"  # checkpoints/last.pt, checkpoints/best.pt
# The layout of the file, raised when it changes: 1 is the first with a version (files
# without one, written before, are read as 0 and load the same way).
FORMAT = 1


class CheckpointError(RuntimeError):
    pass


@dataclass
class Checkpoint:
    """What a checkpoint holds: the one place that names its keys. The trainer fills it
    (Trainer.checkpoint_state) and reads it back (Trainer.load_checkpoint); eval, predict,
    export, expkit.load and reproduce read the weights and the facts beside them."""

    model: dict[str, Any]  # the weights (state_dict of the plain module)
    optimizer: dict[str, Any]
    epoch: int  # epochs completed
    batch: int  # batches of the current epoch done
    step: int  # optimizer steps
    rng: dict[str, Any]  # this rank's random streams (training/trainer.py rng_state)
    schedule: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None  # fp16's GradScaler
    best_acc: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation's
    early_stop: dict[str, Any] | None = None
    data: dict[str, Any] | None = None  # name, classes, input_shape, mean, std: what predicting needs
    warned_vanishing: bool = False
    warned_exploding: bool = False
    train_tally: dict[str, Any] | None = None  # the epoch's running train loss and accuracy
    world_size: int = 1
    config: dict[str, Any] | None = None  # the resolved config that trained these weights
    rng_ranks: list[Any] | None = None  # DDP: every rank's streams
    ema: dict[str, Any] | None = None  # trainer.ema: the averaged weights, a state_dict like model's
    format: int = FORMAT
    path: Path | None = None  # the file it was read from (not stored)

    def to_state(self) -> dict[str, Any]:
        """The plain dict that is written (tensors, numbers, strings, lists, dicts)."""
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        for optional in ("rng_ranks", "ema"):
            if state[optional] is None:
                del state[optional]
        return state

    @property
    def weights(self) -> dict[str, Any]:
        """The weights to score, predict and export with: the moving average where the run kept
        one (trainer.ema), else the trained weights. Resume restores both."""
        return self.ema if self.ema is not None else self.model

    @classmethod
    def from_state(cls, state: Any, path: Path) -> Checkpoint:
        """Check what was read and type it; a file of another layout gets a message saying so."""
        if not isinstance(state, dict):
            raise CheckpointError(f"{path.name} is not an expkit checkpoint (it holds a {type(state).__name__})")
        version = state.get("format", 0)
        if not isinstance(version, int) or version > FORMAT:
            raise CheckpointError(f"{path.name} has checkpoint format {version!r}, newer than this expkit reads "
                                  f"(up to {FORMAT}): it was written by a newer expkit; upgrade expkit to read it")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                   and f.name not in state]
        if missing:
            raise CheckpointError(f"{path.name} is not an expkit checkpoint (it lacks {', '.join(missing)})")
        known = {f.name for f in fields(cls)} - {"path"}
        values = {k: v for k, v in state.items() if k in known}
        if state.get("train_tally") is None and state.get("train_sums"):  # format 0, before train_tally
            loss_sum, correct, count = state["train_sums"]
            values["train_tally"] = {"terms": [loss_sum], "correct": correct, "count": count}
        values.setdefault("format", 0)
        values["model"] = plain_keys(values["model"])
        if values.get("ema") is not None:
            values["ema"] = plain_keys(values["ema"])
        return cls(**values, path=path)


# What torch.compile's and DDP's wrappers put before a module's own keys.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def plain_keys(weights: Any) -> Any:
    """A state_dict with the wrappers' prefixes taken off, so the weights of a compiled (or
    DDP-wrapped) model saved by other code load into the plain module; expkit writes plain keys."""
    if not isinstance(weights, dict) or not weights:
        return weights
    for prefix in WRAPPER_PREFIXES:
        if all(isinstance(k, str) and k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights



def named_file(folder: Path, name: str) -> Path:
    """checkpoints/best.pt or checkpoints/last.pt."""
    return folder / f"{name}.pt"


class UnsafeCheckpoint(CheckpointError):
    """The file would run code when unpickled; never fall back past it silently."""


def _slow() -> float:
    return float(os.environ.get("EXPKIT_TEST_SLOW_WRITE", "0") or 0)  # test hook


def _pause() -> None:
    slow = _slow()
    if slow:
        time.sleep(slow)


def _link_atomic(target: Path, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.link(target, tmp)
    os.replace(tmp, link)


def _clean_leftovers(folder: Path) -> None:
    """Temporary files and orphan checksums that a killed save left behind."""
    for p in folder.iterdir():
        m = SIDECAR.match(p.name)
        if (p.name.startswith(".") and p.name.endswith(".tmp")) or (
                m and not (folder / p.name[: -len(".sha256")]).exists()):
            p.unlink(missing_ok=True)


def on_cpu(obj: Any) -> Any:
    """`obj` with every tensor on the CPU (strides kept): a GPU run's checkpoint loads with a
    plain `torch.load(..., weights_only=True)` on a machine without a GPU. torch.save copies
    GPU tensors to the host to write them anyway; resuming puts them back on the device."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.cpu()
    if isinstance(obj, dict):
        moved = {k: on_cpu(v) for k, v in obj.items()}
        if all(moved[k] is v for k, v in obj.items()):
            return obj  # the same object: a CPU run's checkpoint is written as before
        out = copy.copy(obj)  # keeps an OrderedDict's _metadata (module versions)
        out.update(moved)
        return out
    if isinstance(obj, (list, tuple)):
        moved = [on_cpu(v) for v in obj]
        return obj if all(a is b for a, b in zip(moved, obj, strict=True)) else type(obj)(moved)
    return obj


def without_zip_crcs():
    """torch.save stores a CRC-32 with every record of its zip file, which torch.load never
    checks; computing them is a large share of torch.save's time. The SHA-256 beside each
    checkpoint is the checksum that is checked, so checkpoints skip them where torch can
    (2.6 and later; a zip tool then reports the records' CRCs as wrong). Recent torch keeps
    the setting per thread; before that, a torch.save on another thread during the save
    (about a millisecond) skips them too, which torch.load does not notice either."""
    if not hasattr(torch.serialization, "get_crc32_options"):
        return contextlib.nullcontext()
    from torch.utils.serialization import config

    return config.patch({"save.compute_crc32": False})


def to_bytes(checkpoint: Checkpoint) -> bytes:
    buffer = io.BytesIO()
    with without_zip_crcs():
        torch.save(on_cpu(checkpoint.to_state()), buffer)
    return buffer.getvalue()


def save(folder: Path, checkpoint: Checkpoint, best: bool, keep_last: int) -> Path:
    """Write `checkpoint` as checkpoints/step-<step>.pt; last.pt (and best.pt) point at it."""
    return write(folder, to_bytes(checkpoint), checkpoint.step, best, keep_last)


def write(folder: Path, data: bytes, step: int, best: bool, keep_last: int) -> Path:
    """Write a serialized state (`to_bytes`) as checkpoints/step-<step>.pt, by the rules above."""
    folder.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(folder)
    path = folder / f"step-{step:09d}.pt"
    sidecar = folder / f"{path.name}.sha256"
    # The checksum goes in first, so a numbered checkpoint never exists without it.
    try:
        write_atomic(sidecar, hashlib.sha256(data).hexdigest(), slow=_slow())
        _pause()
        write_atomic(path, data, slow=_slow())
    except OSError as e:
        # Nothing of this checkpoint stays (write_atomic removed its temp file): no checksum
        # of a file that was never written. last.pt still points at the previous one.
        sidecar.unlink(missing_ok=True)
        import errno
        import shutil

        free = shutil.disk_usage(folder).free
        previous = named_file(folder, LAST)
        kept = (f"the previous checkpoint ({previous.name}) is intact" if previous.exists()
                else "there is no earlier checkpoint")
        room = ("a file-size limit (ulimit -f) stops files this large" if e.errno == errno.EFBIG
                else f"{free / 1e6:.1f} MB free there")
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e} (it needs "
                              f"{len(data) / 1e6:.1f} MB, {room}); {kept}") from None
    for name in (LAST, BEST) if best else (LAST,):
        link = named_file(folder, name)
        _pause()
        _link_atomic(path, link)
        _pause()
        _link_atomic(sidecar, folder / f"{link.name}.sha256")
    fsync_dir(folder)
    _pause()
    # Only now that the new one is complete: the numbered ones beyond the newest keep_last.
    # Numbers above this step are left alone: they are from before a resume that fell back
    # past them (so damaged), and get overwritten when training reaches them again.
    older = [p for p in numbered(folder) if _number(p) <= step]
    for old in older[max(1, keep_last):]:
        old.unlink(missing_ok=True)
        Path(f"{old}.sha256").unlink(missing_ok=True)
    return path


class BackgroundSaver:
    """`write` on a thread of its own. The state is serialized on the calling thread (so it
    cannot change under the write, and the thread holds the GIL only briefly: hashing, writing
    and fsyncing release it). At most one write is in flight; a failed write is raised by
    the next `submit` or `wait` on the calling thread."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, folder: Path, checkpoint: Checkpoint, best: bool, keep_last: int) -> None:
        self.wait()
        data, step = to_bytes(checkpoint), checkpoint.step

        def run() -> None:
            started = time.perf_counter()
            try:
                write(folder, data, step, best, keep_last)
            except BaseException as e:  # handed to the calling thread
                self.error = e
                return
            log.debug("checkpoint at step %d written in %.3f s (in the background)", step,
                      time.perf_counter() - started)

        self.thread = threading.Thread(target=run, name=f"expkit-checkpoint-{step}")
        self.thread.start()

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error if it failed."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _number(path: Path) -> int:
    return int(NUMBERED.match(path.name).group(1))


def has_any(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint to continue from (complete or not: loading decides)."""
    return bool(numbered(folder)) or named_file(folder, LAST).exists()


def numbered(folder: Path) -> list[Path]:
    """Numbered checkpoints, newest first (temporary files never match)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if NUMBERED.match(p.name)]
    return sorted(files, key=_number, reverse=True)


def load_file(path: Path, map_location: Any = "cpu", require_checksum: bool = True) -> Checkpoint:
    """The one reader of checkpoints: verify the checksum, load with weights_only=True,
    check the format. `require_checksum=False`: a file copied out of its run folder without
    its .sha256 is loaded unverified."""
    sidecar = Path(f"{path}.sha256")
    if not sidecar.exists():
        if require_checksum:
            raise CheckpointError(f"{path.name} has no checksum file {sidecar.name} (its write did not finish)")
    elif sidecar.read_text().strip() != sha256_file(path):
        raise CheckpointError(f"{path.name} does not match its checksum (truncated or damaged)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL (\S+)", text)
        if found:  # a pickled global (a function, a class): what loading it would call
            what = f" ({found.group(1)})"
            raise UnsafeCheckpoint(
                f"{path} holds a pickled Python object{what} that would run code when loaded; refusing to "
                "load it. expkit checkpoints hold only tensors and plain data, so this file was not written "
                "by expkit: delete it or move it away to resume from an older checkpoint.") from None
        reason = next((line.strip() for line in text.splitlines() if "Unsupported" in line or "invalid" in line),
                      text.splitlines()[0] if text else "")
        raise CheckpointError(f"{path} is not a checkpoint torch can read ({reason})") from None
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path.name} could not be loaded: {type(e).__name__}: {first}") from None
    return Checkpoint.from_state(state, path)


def load_latest(folder: Path, map_location: Any = "cpu", problems: list[str] | None = None,
                warn: bool = True) -> Checkpoint:
    """The newest valid checkpoint. A damaged newer one is skipped with a warning naming
    it (and appended to `problems`; `warn=False`: only that); a file that would run code
    stops everything."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} does not exist: this run wrote no checkpoint to resume from")
    # The newest numbered file first: last.pt and best.pt are hard links to numbered files,
    # and their .sha256 links are swapped in a moment after the data links.
    # last.pt right after the newest numbered file: in a copy that did not keep the hard
    # links (cp -r, rsync without -H) it is a good second choice.
    newest = numbered(folder)
    candidates = newest[:1] + [named_file(folder, LAST)] + newest[1:] + [named_file(folder, BEST)]
    candidates = [p for p in candidates if p.exists()]
    if not candidates:
        raise CheckpointError(f"{folder} holds no checkpoint to resume from")
    problems = [] if problems is None else problems
    tried: set[tuple[int, int]] = set()
    for path in candidates:
        st = path.stat()
        if (st.st_dev, st.st_ino) in tried:
            continue  # a link to a file already tried
        tried.add((st.st_dev, st.st_ino))
        try:
            checkpoint = load_file(path, map_location)
        except UnsafeCheckpoint:
            raise
        except CheckpointError as e:
            if warn:
                log.warning("checkpoint %s is unusable, trying an older one: %s", path, e)
            problems.append(str(e))
            continue
        if problems and warn:
            log.warning("resuming from %s (step %s) instead", path, checkpoint.step)
        return checkpoint
    raise CheckpointError(f"no usable checkpoint in {folder}: " + "; ".join(problems))
