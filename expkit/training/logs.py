"""Console and train.log. The console gets a rich progress bar in a terminal and plain
periodic lines elsewhere (CI, SLURM, files); train.log never gets ANSI escapes.

train.log gets every record. The console skips records logged with `extra=FILE_ONLY` (the
full config, the model's layer table, git, environment: ~100 lines a run, a wall of text
per sweep job) unless trainer.verbose asks for them; it gets a one-line summary of each."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from expkit.run.folder import RunDir

LOGGER = "expkit"
FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
FILE_ONLY = {"console": False}  # `log.info(..., extra=FILE_ONLY)`: train.log only


def console_extra(verbose: bool) -> dict[str, bool]:
    """The `extra` of a detail record: on the console too with trainer.verbose=true."""
    return {} if verbose else FILE_ONLY


def _on_console(record: logging.LogRecord) -> bool:
    return getattr(record, "console", True)


class RunLogHandler(logging.FileHandler):
    """train.log. A write that fails (a full disk, a quota) is said once on stderr, in one
    line, and the log goes on on the console: logging's own handler would print a
    traceback for every record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            reason = getattr(error, "strerror", None) or error
            print(f"expkit: cannot write {self.baseFilename}: {reason}; the log goes on on the console only",
                  file=sys.stderr)


def setup_logging(run_dir: Path | None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    log = logging.getLogger(LOGGER)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.setLevel(level)
    log.propagate = False
    if rank != 0:
        # Other ranks say only what goes wrong, so a crash on rank 1 still shows.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
        handler.setLevel(logging.WARNING)
        log.addHandler(handler)
        if run_dir is not None:  # their errors (and tracebacks) land in train.log too
            file_handler = RunLogHandler(RunDir(run_dir).log)
            file_handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"))
            file_handler.setLevel(logging.ERROR)
            log.addHandler(file_handler)
        return log
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s" if sys.stdout.isatty() else "[%(asctime)s] %(message)s",
                                           datefmt="%H:%M:%S"))
    console.addFilter(_on_console)
    log.addHandler(console)
    if run_dir is not None:
        file_handler = RunLogHandler(RunDir(run_dir).log)
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        log.addHandler(file_handler)
    return log


def program(name: str) -> str:
    """How the user calls `name` (expkit, tensorboard) from this shell: by its bare name
    when PATH finds the one installed beside the running Python (an activated venv, a
    system-wide install), else by the path of that one (`.venv/bin/tensorboard`) when it
    exists: a venv used without activating it has its bin off PATH, and another
    tensorboard found on PATH would not be this environment's."""
    beside = Path(sys.executable).parent / name  # not resolved: a venv's python is a symlink out of it
    if not beside.is_file():
        return name
    found = shutil.which(name)
    try:
        if found and os.path.samefile(found, beside):
            return name
    except OSError:
        pass
    return shell_path(beside)


def shell_path(path: str | os.PathLike) -> str:
    """A path as the user types it: relative to the current folder when below it, quoted
    for the shell when it must be."""
    path = Path(path)
    with contextlib.suppress(OSError, ValueError):  # elsewhere: the path as given
        path = path.resolve().relative_to(Path.cwd().resolve())
    return shlex.quote(str(path))


def next_steps(run_dir: str | os.PathLike) -> str:
    """The closing line of a run: what to do with it now."""
    where = shell_path(run_dir)
    expkit = program("expkit")
    # `expkit runs` searches runs/ of the current folder; a run elsewhere (hydra.run.dir=...) is named
    runs = "runs" if Path(run_dir).resolve().is_relative_to(Path("runs").resolve()) else f"runs {where}"
    return f"next: {expkit} eval {where}; {expkit} {runs}; {program('tensorboard')} --logdir {where}"


def close_logging() -> None:
    log = logging.getLogger(LOGGER)
    for handler in list(log.handlers):
        handler.flush()
        if isinstance(handler, logging.FileHandler):
            log.removeHandler(handler)
            handler.close()


class Progress:
    """A rich progress bar for one epoch when attached to a terminal; nothing otherwise
    (the trainer's periodic log lines do the job there)."""

    def __init__(self, mode: str, enabled: bool):
        self.active = enabled and (mode == "on" or (mode == "auto" and sys.stdout.isatty()))
        self._progress = None

    def start(self, description: str, total: int, completed: int = 0) -> None:
        if not self.active:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, stats="")

    def update(self, advance: int = 1, stats: str | None = None) -> None:
        if self._progress is not None:
            fields = {"stats": stats} if stats is not None else {}
            self._progress.update(self._task, advance=advance, **fields)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
