"""Console and train.log. The console gets a rich progress bar in a terminal and plain
periodic lines elsewhere (CI, SLURM, files); train.log never gets ANSI escapes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from expkit.run.folder import RunDir

LOGGER = "expkit"
FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


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
            file_handler = logging.FileHandler(RunDir(run_dir).log)
            file_handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"))
            file_handler.setLevel(logging.ERROR)
            log.addHandler(file_handler)
        return log
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s" if sys.stdout.isatty() else "[%(asctime)s] %(message)s",
                                           datefmt="%H:%M:%S"))
    log.addHandler(console)
    if run_dir is not None:
        file_handler = logging.FileHandler(RunDir(run_dir).log)
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        log.addHandler(file_handler)
    return log


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
