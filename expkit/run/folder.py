"""The run folder on disk: its paths, one atomic-write helper, JSON/YAML read and write,
and its status. Everything that writes a run's record goes through here.

    config.yaml   the resolved config, plain YAML
    .hydra/       Hydra's config.yaml, hydra.yaml, overrides.yaml
    meta.json     git, command, overrides, status, times, host, versions, world size
    git.diff      only when the tree was dirty: `git diff HEAD` + untracked files' names
    untracked.json  the untracked files: text up to a size cap, size and sha256 of all
    packages.txt  every installed distribution, `name==version`
    train.log     the log; TensorBoard's event files sit beside it
    metrics.json  the last evaluation's metrics, the best, the test split's
    checkpoints/  run/checkpoint.py's files
    eval/ export/ what `expkit eval` and `expkit export` write
    profile/      trace.json: trainer.profile's torch.profiler trace (Perfetto, chrome://tracing)
    reproduce.json  `expkit reproduce`'s report
    .lock         names the process that holds the folder (FolderLock)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from pathlib import Path
from typing import Any

STATUSES = ("running", "completed", "failed", "interrupted")


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def unique_dir(path: str) -> str:
    """Claim `path`, or `path-1`, `path-2`, ... if taken. mkdir is atomic, so two
    processes starting in the same second never get the same folder."""
    candidate, n = Path(path), 0
    candidate.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            n += 1
            candidate = Path(f"{path}-{n}")


CHUNK = 1 << 16


def write_atomic(path: Path, data: str | bytes, durable: bool = True, slow: float = 0.0) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new one, never
    half of either: a temp file in the same folder, renamed over `path`. The temp name holds
    the process id (workers of a parallel launcher may write the same file at once).
    `durable`: fsync the file before the rename and the folder after it, so the new file
    survives a crash or power cut (records, checkpoints); summaries that are rewritten
    anyway skip it. `slow` (a test hook): sleep after every 64 KiB written."""
    data = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # A new file of our own, never one that is there already: a link planted under the temp
    # name would otherwise be followed and the file it points to overwritten.
    tmp.unlink(missing_ok=True)
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as f:
            if slow:
                for i in range(0, len(data), CHUNK):
                    f.write(data[i : i + CHUNK])
                    f.flush()
                    time.sleep(slow)
            else:
                f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when it is missing or unreadable (a run still starting,
    or nested deeper than Python's parser goes)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


# meta.json's fields and the type each has as expkit writes it. A record from someone else
# may hold anything, so `RunDir.read_meta` and `meta_or_empty` give a field of another type
# as not recorded (and keep only the entries of the right type in resumes, restarts,
# imports and metrics): every reader may then take the types for granted.
META_TYPES: dict[str, type | tuple[type, ...]] = dict(  # as the fields are written: update_meta(git=...)
    git=dict, command=list, overrides=list, status=str, started=str, ended=(str, type(None)), host=str,
    versions=dict, environment=dict, world_size=int, cwd=str, data=dict, task=dict, metrics=dict, error=str,
    signal=str, resumes=list, restarts=list, imports=dict, stopped_early=dict,
)


def well_typed(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` without the fields whose type is not META_TYPES' (see there)."""
    out = {}
    for key, value in meta.items():
        wanted = META_TYPES.get(key)
        if wanted is not None and (not isinstance(value, wanted) or (wanted is int and isinstance(value, bool))):
            continue
        if key in ("resumes", "restarts"):
            value = [entry for entry in value if isinstance(entry, dict)]
        elif key == "imports":
            value = {k: entry for k, entry in value.items() if isinstance(entry, dict)}
        elif key == "metrics":
            value = {k: v for k, v in value.items()
                     if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
        out[key] = value
    return out


def strict(value: Any) -> Any:
    """`value` with every NaN and Inf float as None: strict JSON parsers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(path: Path, value: Any, durable: bool = True) -> None:
    """Strict JSON (null for a missing or non-finite number), written atomically."""
    write_atomic(path, json.dumps(strict(value), indent=2, default=str, allow_nan=False) + "\n", durable)


def read_yaml(path: Path) -> Any:
    """Plain YAML (no OmegaConf interpolation); None when missing or malformed, or when it
    uses aliases (`has_aliases`)."""
    import yaml

    try:
        text = path.read_text()
        # libyaml's loader where PyYAML has it: `expkit runs --where` reads thousands of configs.
        return None if has_aliases(text) else yaml.load(text, Loader=_safe_loader())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _safe_loader():
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def has_aliases(text: str) -> bool:
    """Whether YAML text uses aliases (*name). The records expkit writes have none; in a file
    someone else wrote, a few nested ones expand to billions of values in whatever walks
    the result (a "billion laughs"), so such a file is not read as a record."""
    import yaml

    if "*" not in text:
        return False
    return any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=_safe_loader()))


def hard_links_message(path: Path, links: int) -> str:
    return (f"{path}: has {links} hard links, so writing to it would change a file elsewhere too; copy it "
            "(cp) to break the link, or remove it.")


def _inside(*parts: str) -> property:
    return property(lambda self: self.path.joinpath(*parts))


class RunDir:
    """A run folder: the one place that names its files. Every other module asks it for a
    path (`RunDir(path).metrics`) rather than joining a name itself."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # The files of a run folder (see the module's docstring).
    CONFIG, META, HYDRA, CHECKPOINTS = "config.yaml", "meta.json", ".hydra", "checkpoints"
    config = _inside(CONFIG)
    hydra_dir = _inside(HYDRA)
    hydra_config = _inside(HYDRA, CONFIG)
    hydra_settings = _inside(HYDRA, "hydra.yaml")
    hydra_overrides = _inside(HYDRA, "overrides.yaml")
    meta_path = _inside(META)
    git_diff = _inside("git.diff")
    untracked = _inside("untracked.json")
    packages = _inside("packages.txt")
    log = _inside("train.log")
    metrics = _inside("metrics.json")
    checkpoints = _inside(CHECKPOINTS)
    eval_dir = _inside("eval")
    export_dir = _inside("export")
    profile_dir = _inside("profile")
    profile_trace = _inside("profile", "trace.json")
    reproduce_report = _inside("reproduce.json")
    lock = _inside(".lock")

    def refuse_links(self) -> None:
        """Bad input when a path expkit writes in this folder is a symbolic link, or the log
        it appends to has a second hard link: a received folder must not make expkit write,
        append to or delete a file outside it. Called before a command writes here."""
        from expkit.errors import ConfigError

        paths = [getattr(self, name) for name, value in vars(RunDir).items() if isinstance(value, property)]
        for folder in (self.checkpoints, self.eval_dir, self.export_dir, self.hydra_dir, self.profile_dir):
            if folder.is_dir() and not folder.is_symlink():
                paths += list(folder.iterdir())
        for path in paths:
            if path.exists() and not path.is_symlink() and not (path.is_file() or path.is_dir()):
                raise ConfigError(f"{path}: is neither a file nor a folder (a FIFO, a device); expkit writes only "
                                  "files and folders of its own in a run folder.")
            if path.is_symlink():
                raise ConfigError(f"{path}: a symbolic link in the run folder (to {os.readlink(path)}); expkit "
                                  "writes only inside the folder and never through a link. Replace it with a file "
                                  "or folder of its own, or remove it.")
        for path in (self.log, self.lock):  # the files written in place (the others are replaced whole)
            if path.is_file() and path.stat().st_nlink > 1:
                raise ConfigError(hard_links_message(path, path.stat().st_nlink))

    def output_folder(self, folder: Path) -> Path:
        """`folder` (eval/, export/) made ready for a command's files: no link in the run folder
        is written through, and a file in its place is bad input, not a traceback."""
        from expkit.errors import ConfigError

        self.refuse_links()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder}: is a file, where expkit keeps the {folder.name}/ folder of this run; move "
                              "it away.")
        folder.mkdir(exist_ok=True)
        return folder

    def writer_alive(self) -> bool:
        """Whether a process holds this folder's lock now (a run still training, a resume)."""
        import fcntl

        try:
            fd = os.open(self.lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the shared lock taken to ask
        return False

    @staticmethod
    def holds_run(path: Path) -> bool:
        """Whether `path` is a run folder by both of its records (meta.json and config.yaml): a
        meta.json alone (in a home folder, say) does not make every folder below it a run's."""
        rundir = RunDir(path)
        return rundir.meta_path.is_file() and rundir.config.is_file()

    def is_run(self) -> bool:
        """A run folder, not a sweep's or a date's: it has its meta.json."""
        return self.meta_path.is_file()

    def config_text(self) -> str:
        """config.yaml's text, to train or score the run again; bad input when it uses YAML
        aliases (`has_aliases`)."""
        from expkit.errors import ConfigError

        text = self.config.read_text()
        if has_aliases(text):
            raise ConfigError(f"{self.config}: uses YAML aliases (*name), which expkit never writes; a config with "
                              "them can expand without bound. Write the values out.")
        return text

    def load_config(self) -> Any:
        """config.yaml as OmegaConf reads it (`config_text`)."""
        from omegaconf import OmegaConf

        return OmegaConf.create(self.config_text())

    def read_config(self) -> Any:
        """The resolved config as plain YAML (Hydra's copy for a job still starting); None if neither reads."""
        found = read_yaml(self.config)
        return found if found is not None else read_yaml(self.hydra_config)

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.metrics)

    def read_untracked(self) -> list[dict[str, Any]]:
        files = read_json(self.untracked).get("files", [])
        return files if isinstance(files, list) else []

    def read_git_diff(self) -> str:
        return self.git_diff.read_text() if self.git_diff.is_file() else ""

    def read_meta(self) -> dict[str, Any]:
        """meta.json, its fields of the types expkit writes (`well_typed`); bad input when it is
        not a JSON object."""
        return well_typed(self._read_meta_as_written())

    def _read_meta_as_written(self) -> dict[str, Any]:
        """meta.json with every field as it stands, for the updates that write it back."""
        from expkit.errors import ConfigError

        try:
            meta = json.loads(self.meta_path.read_text())
        except RecursionError:
            raise ConfigError(f"{self.meta_path}: is nested deeper than a record of expkit's can be.") from None
        if not isinstance(meta, dict):
            raise ConfigError(f"{self.meta_path}: is not a JSON object (it holds a {type(meta).__name__}).")
        return meta

    def meta_or_empty(self) -> dict[str, Any]:
        """meta.json (`well_typed`), or {} while it is missing or unreadable (a run still starting)."""
        return well_typed(read_json(self.meta_path))

    def update_meta(self, **fields: Any) -> dict[str, Any]:
        meta = self._read_meta_as_written() if self.meta_path.exists() else {}
        meta.update(fields)
        try:
            write_json(self.meta_path, meta)
        except OSError as e:
            import errno

            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.meta_path.is_file():
                raise
            # A full disk has no room for the temporary copy; the record is rewritten where it
            # is, compact, when it fits in the blocks the file has already, so how the run
            # ended is still on disk (never half of it).
            text = json.dumps(strict(meta), default=str, allow_nan=False) + "\n"
            st = self.meta_path.stat()
            if len(text.encode()) > max(st.st_size, st.st_blocks * 512) or st.st_nlink > 1:
                raise
            with open(self.meta_path, "r+", encoding="utf-8") as f:
                f.write(text)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
        return meta

    def write_provenance(self, resolved_yaml: str, command: list[str], overrides: list[str],
                         world_size: int, cwd: str | None = None,
                         untracked_max_bytes: int = 256 * 1024) -> dict[str, Any]:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config, resolved_yaml)
        from expkit.run.provenance import environment, git_info, packages, packages_text, untracked_files, versions

        here = Path(cwd or os.getcwd())
        git, diff = git_info(cwd, exclude=(here / "runs", self.path))
        if diff is not None:
            write_atomic(self.git_diff, diff)
        if git.get("untracked"):
            files = untracked_files(git["repo"], git["untracked"], untracked_max_bytes,
                                    is_run=lambda p: RunDir(p).is_run(), exclude=self.path)
            if files:
                write_json(self.untracked, {"max_bytes": untracked_max_bytes, "files": files})
        write_atomic(self.packages, packages_text(packages()))
        env = environment()
        return self.update_meta(
            git={k: v for k, v in git.items() if k != "untracked"},
            command=command, overrides=overrides, status="running", started=now(), ended=None,
            host=env["host"], versions=versions(), environment=env, world_size=world_size,
            cwd=cwd or os.getcwd(),
        )

    def finish(self, status: str, **fields: Any) -> None:
        assert status in STATUSES
        self.update_meta(status=status, ended=now(), **fields)

    def record_resume(self, entry: dict[str, Any], config_yaml: str | None) -> None:
        """A resume has started: status running again, the resume listed under `resumes`,
        the new config when overrides changed it."""
        meta = self._read_meta_as_written()
        for stale in ("interrupted_at_step", "signal", "error", "stopped_early"):  # from how the run last ended
            meta.pop(stale, None)
        # When the span before this resume ended, so that `expkit runs` sums the time trained,
        # not the pause: its recorded end, or for a killed run (none recorded) the time of the
        # checkpoint resumed from, the last of its work that counts.
        entry = {"previous_end": meta.get("ended") or mtime(self.path / str(entry.get("checkpoint"))), **entry}
        meta.update(status="running", ended=None, resumes=[*well_typed(meta).get("resumes", []), entry])
        write_json(self.meta_path, meta)
        if config_yaml is not None:
            write_atomic(self.config, config_yaml)

    def restart(self) -> None:
        """Empty the folder (but Hydra's .hydra/) to train a job again from scratch, keeping
        how the earlier attempt ended under `restarts`."""
        import shutil

        meta = self.read_meta()
        previous = {k: meta.get(k) for k in ("status", "started", "ended", "error") if meta.get(k) is not None}
        for child in self.path.iterdir():
            if child not in (self.hydra_dir, self.lock):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.update_meta(restarts=[*meta.get("restarts", []), previous])


def mtime(path: Path) -> str | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    except OSError:
        return None


def process_gone(pid: Any, host: Any) -> bool:
    """True only when `pid` names a process on this host that no longer exists, or has
    exited and waits for its parent to collect it (a zombie: signal 0 still reaches it);
    False when it lives, or when that cannot be told from here (another host, no pid)."""
    import socket

    if host != socket.gethostname() or not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    stat = _proc_stat(int(pid))
    return stat is not None and stat[0] == "Z"


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first); None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()  # the name, in parentheses, may hold spaces


def _started_after(pid: int, when: float) -> bool:
    """Whether process `pid` started after the time `when` (Linux /proc; False elsewhere)."""
    stat = _proc_stat(pid)
    try:
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        started = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks after boot
    except (OSError, StopIteration, TypeError, ValueError, IndexError):
        return False
    return started > when + 1.0  # btime is whole seconds


def writer_gone(folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> bool:
    """True when the process that last held the folder's lock is gone: a run still marked
    running was killed (SIGKILL, the OOM killer, a power cut). The file names its holder by
    pid, and pids are reused (soon after a reboot, or a long time after the kill): a live
    process that started after the holder wrote the file, and after the holder's last
    record in meta.json (`started`, a resume's `at`), cannot be that holder. The latest of
    these times is taken, so a file server's clock running behind cannot make a live
    writer look gone."""
    path = RunDir(folder).lock
    try:
        pid, _, host = path.read_text().strip().partition(" on ")
        written = path.stat().st_mtime
    except OSError:
        return False
    if process_gone(pid, host):
        return True
    import contextlib
    import socket

    if host != socket.gethostname() or not pid.isdigit():
        return False
    meta = RunDir(folder).meta_or_empty() if meta is None else meta
    resumes = [r for r in meta.get("resumes") or [] if isinstance(r, dict)]
    for stamp in (meta.get("started"), *(r.get("at") for r in resumes[-1:])):
        with contextlib.suppress(TypeError, ValueError):  # a time not recorded: the others decide
            written = max(written, dt.datetime.fromisoformat(stamp).timestamp())
    return _started_after(int(pid), written)


class FolderLock:
    """One writer per run folder: an exclusive flock on RUN_DIR/.lock, held for the life of
    the run. The kernel releases it when the process ends, however it ends (SIGKILL
    included), so it never stays stuck; the file only names the last holder."""

    def __init__(self, folder: str | os.PathLike):
        self.path = RunDir(folder).lock
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        import fcntl
        import socket

        from expkit.errors import ConfigError

        RunDir(self.path.parent).refuse_links()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        links = os.fstat(fd).st_nlink  # the file opened, not the name checked before
        if links > 1:
            os.close(fd)
            raise ConfigError(hard_links_message(self.path, links))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.path.parent}: another expkit process is writing this run folder "
                              f"(pid {holder}); wait for it to end or stop it first.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

