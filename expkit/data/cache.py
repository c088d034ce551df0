"""data.cache: a folder data set decoded once into a uint8 array on disk, memory-mapped by
every run and every DDP rank that asks for the same images at the same size.

One map per image folder (train/, test/ or the root itself), named by a key over what
decoding it depends on: each file's path below the data root, its label, size and
modification time, the image size and the channels. A file that changes gives a new key,
so the map is rebuilt; maps of older keys of the same folder are removed after it.

Building takes an exclusive flock on the map's lock file, so of two runs that start at
once one decodes and the other waits and then opens the result. The map is written to a
temporary file in the cache folder and renamed into place: a map under its final name is
always complete. Beside it, each file's SHA-256 (read while decoding), so the data's
fingerprint in meta.json needs no second pass over the files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from expkit.errors import ConfigError

log = logging.getLogger("expkit")
FORMAT = 1  # bump when the map's layout or the decoding changes: old maps are then rebuilt
SUFFIX = ".expkit-cache"
CHUNK = 512  # images decoded per write: bounds the memory of a build


def cache_folder(root: Path, cache_dir: str | None, make: bool = True) -> Path:
    """Where the maps of the data set at `root` live: data.cache_dir, else ROOT.expkit-cache
    beside the root (not inside it, where ImageFolder would take it for a class); made
    unless `make` is false."""
    folder = Path(cache_dir).expanduser() if cache_dir else root.parent / f"{root.name}{SUFFIX}"
    if not make:
        return folder
    for part in (folder, *folder.parents):
        if part.is_symlink():
            raise ConfigError(f"data.cache_dir: {folder} goes through the link {part}; expkit writes its "
                              "cache only into a real folder. Set data.cache_dir=DIR to another place.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"data.cache_dir: cannot make {folder} ({e.strerror}); set data.cache_dir=DIR to a "
                          "folder you can write, or data.cache=false.") from None
    return folder


def map_key(samples: list[tuple[str, int]], root: Path, image_size: int, channels: int) -> str:
    digest = hashlib.sha256(f"expkit-cache {FORMAT} {image_size} {channels}\n".encode())
    for path, label in samples:
        st = os.stat(path)
        digest.update(f"{below(path, root)} {label} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def below(path: str, root: str | os.PathLike) -> str:
    """os.path.relpath for a path under root, as ImageFolder joins them, at a fraction of its
    cost (a data set has every one of its files' paths taken apart)."""
    prefix = os.path.join(str(root), "")
    return path[len(prefix):] if path.startswith(prefix) and ".." not in path else os.path.relpath(path, root)


class ImageMap:
    """The decoded images of one folder, (N, C, H, W) uint8, and each file's SHA-256.
    `take(rows)` copies those rows out. A map that fits in `max_bytes` is memory-mapped
    (read-only: every process on the machine shares the one copy in the page cache); a
    larger one is read row by row with pread, so this process never holds more of it than
    the batches it has in hand (the kernel maps pages of a file mapping in large runs and
    keeps them until the mapping goes, which would grow a process to the map's size)."""

    def __init__(self, path: Path, max_bytes: int):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, _, _ = read_header(f)
            self.offset = f.tell()
        self.row_bytes = int(np.prod(self.shape[1:]))
        self.nbytes = self.row_bytes * self.shape[0]
        self.mapped = self.nbytes <= max_bytes
        self.digests = np.load(digest_path(path))
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        if self.mapped:
            self._mmap = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            self.images = np.ndarray(self.shape, dtype=np.uint8, buffer=self._mmap, offset=self.offset)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        if self.mapped:
            return self.images[rows]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(rows), -1)
        for k in np.argsort(rows, kind="stable"):  # in file order: the disk reads ahead
            got = os.preadv(self._fd, [flat[k]], self.offset + int(rows[k]) * self.row_bytes)
            if got != self.row_bytes:
                raise ConfigError(f"data.cache: {self.path} is shorter than its header says; remove it, it is "
                                  "rebuilt on the next run.")
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def digest_path(map_path: Path) -> Path:
    return map_path.with_name(map_path.name.replace(".npy", ".sha256.npy"))


def _map_path(folder, root: Path, where: Path, image_size: int, channels: int) -> tuple[str, Path]:
    """(the stem of the folder's maps, the path of its map of the files as they are now)."""
    name = os.path.relpath(folder.root, root.parent).replace(os.sep, "_").lstrip(".") or "root"
    stem = f"{name}-{image_size}px-{channels}ch"
    return stem, where / f"{stem}-{map_key(folder.samples, root, image_size, channels)}.npy"


def existing_map(folder, root: Path, where: Path, image_size: int, channels: int, max_bytes: int) -> ImageMap | None:
    """The map of ImageFolder `folder` when one was built already, else None; writes nothing
    (no folder, lock or map is made), for a run folder opened again. A map under its final
    name is complete: it is renamed into place once written."""
    _, path = _map_path(folder, root, where, image_size, channels)
    for p in (path, digest_path(path)):
        if p.is_symlink() or not p.is_file():
            return None
    return ImageMap(path, max_bytes)


def open_map(folder, root: Path, where: Path, image_size: int, channels: int, decode, max_bytes: int) -> ImageMap:
    """The map of ImageFolder `folder` (built first when missing or stale). `decode(file)`
    turns an open image file into the PIL image the decode path would make of it."""
    import fcntl

    stem, path = _map_path(folder, root, where, image_size, channels)
    lock = os.open(where / f"{stem}.build-lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building this map: wait for it
        for p in (path, digest_path(path)):
            if p.is_symlink() or (p.exists() and not p.is_file()):
                raise ConfigError(f"data.cache_dir: {p} is a link or not a file; expkit reads only maps it "
                                  "wrote. Remove it.")
        if not path.exists():
            build_map(folder.samples, path, (channels, image_size, image_size), decode)
            for old in where.glob(f"{stem}-*.npy"):  # the same folder's maps of older keys
                if old.name not in (path.name, digest_path(path).name):
                    old.unlink(missing_ok=True)
        else:
            log.info("data.cache: %d images decoded before, in %s", len(folder.samples), path)
        return ImageMap(path, max_bytes)
    finally:
        os.close(lock)  # releases the flock


def _decode_one(path: str, decode, shape: tuple[int, int, int]) -> tuple[np.ndarray, bytes]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        pixels = np.asarray(decode(io.BytesIO(raw)), dtype=np.uint8)
    except (OSError, ValueError) as e:  # a header that reads, then data that does not (a cut-off file)
        raise ConfigError(f"data.root: {path} could not be decoded ({' '.join(str(e).split())[:80]}); remove or "
                          "replace it.") from None
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return pixels.transpose(2, 0, 1).reshape(shape), hashlib.sha256(raw).digest()


def build_map(samples: list[tuple[str, int]], path: Path, shape: tuple[int, int, int], decode) -> None:
    """Decode every file into a temporary .npy beside `path`, chunk by chunk with a few
    threads (PIL decodes without the GIL), then rename both files into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_digests = path.with_name(f".{path.name}.{os.getpid()}.sha256.tmp")
    started, n = time.perf_counter(), len(samples)
    digests = np.empty((n, 32), dtype=np.uint8)
    progress = _BuildProgress(n, path)
    try:
        with open(tmp, "wb") as f, ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n, *shape)})
            for start in range(0, n, CHUNK):
                part = [p for p, _ in samples[start:start + CHUNK]]
                decoded = list(pool.map(lambda p: _decode_one(p, decode, shape), part))
                f.write(np.stack([x for x, _ in decoded]).tobytes() if decoded else b"")
                digests[start:start + len(decoded)] = np.frombuffer(b"".join(d for _, d in decoded),
                                                                    np.uint8).reshape(-1, 32)
                progress.advance(len(decoded))
            f.flush()
            os.fsync(f.fileno())
        with open(tmp_digests, "wb") as f:
            np.save(f, digests)
        os.replace(tmp_digests, digest_path(path))
        os.replace(tmp, path)  # last: a map under its final name is complete
    finally:
        progress.stop()
        for p in (tmp, tmp_digests):
            p.unlink(missing_ok=True)
    log.info("data.cache: decoded %d images into %s (%.0f MiB) in %.1f s", n, path,
             path.stat().st_size / 2**20, time.perf_counter() - started)


class _BuildProgress:
    """A progress bar on a terminal; a log line every 10 s otherwise."""

    def __init__(self, total: int, path: Path):
        self.total, self.done, self.last = total, 0, time.perf_counter()
        self.bar = None
        log.info("data.cache: decoding %d images once into %s", total, path.parent)
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("data.cache: decoding", total=total)

    def advance(self, k: int) -> None:
        self.done += k
        if self.bar is not None:
            self.bar.update(self.task, advance=k)
        elif time.perf_counter() - self.last >= 10:
            self.last = time.perf_counter()
            log.info("data.cache: %d of %d images decoded", self.done, self.total)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
