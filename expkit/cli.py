"""The `expkit` command: one argparse subparser per command (expkit/commands/); what
follows `train` goes to Hydra. Nothing heavy is imported here, so `expkit --help` and
`expkit --version` answer at once."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from expkit.printable import printable
from expkit.version import __version__

# The commands that reach the training loop, whose start runs with the collector paused.
TRAINING = ("train", "resume", "lesson", "_worker")
COMMANDS = ("train", "resume", "eval", "predict", "export", "runs", "compare", "reproduce", "sched", "summary",
            "report", "lesson", "list")
EPILOG = """examples:
  expkit train model=mlp optim=sgd optim.lr=0.05 trainer.epochs=3
  expkit train -m optim=adam,adamw optim.lr=1e-3,3e-4
  expkit resume runs/2026-11-28/12-00-00 trainer.epochs=20

`expkit COMMAND --help` for each command. Exit status: 0 completed, 1 training failed,
2 bad input, 128+N stopped by signal N. EXPKIT_TRACEBACK=1 shows Python tracebacks."""


def run() -> None:
    """The `expkit` console script and `python -m expkit`: main(), then a quick exit."""
    training = sys.argv[1:2] and sys.argv[1] in TRAINING
    if training:
        from expkit import collector
        from expkit.training.launch import inside_worker_group, stop_with_the_launcher

        collector.pause()  # until the training loop begins (expkit/collector.py)
        if inside_worker_group():  # expkit's own DDP workers, or torchrun's
            stop_with_the_launcher()
    try:
        code = main()
    except SystemExit as e:  # Hydra's entry point and `train` end with sys.exit
        code = e.code
    finally:
        # Python's shutdown ends with a full garbage collection over every object torch,
        # Hydra and TensorBoard made; everything is written and closed by now, so skip
        # it. Only here, never in main(): in-process callers keep a collector that works.
        import gc

        gc.freeze()
    if training:
        from expkit.training.launch import inside_worker_group

        if code == 0 and inside_worker_group():
            leave_worker()
    sys.exit(code)


def leave_worker() -> None:
    """A DDP worker whose run completed ends without Python's shutdown: once in a while the
    interpreter's finalization aborted such a worker after its process group was destroyed
    (SIGABRT from gloo's C++ threads: "terminate called without an active exception"), and
    torch elastic reported a completed, recorded run as failed. Everything is written by
    now; as Python's shutdown would, this waits for threads that are not daemons, then
    flushes the logs and the standard streams. A failed worker exits as usual: exiting at once, the rank
    whose error brought the group down would tie with its peers' lost-connection errors in
    torch elastic's one-second timestamps, and the report must name the first failure."""
    import logging
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or vanished reader: nothing to say
            stream.flush()
    os._exit(0)


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument said in one line (and where to find the help)."""

    def error(self, message: str):
        message = message.replace(", OVERRIDES", "")  # an optional list, named by argparse's intermixed mode
        usage = " ".join(self.format_usage().split())
        self.exit(2, f"{self.prog}: {message} ({usage}; more: {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = Parser(prog="expkit", description="A config-driven experiment CLI for PyTorch.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", "-V", action="version", version=f"expkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        _module(name).add_parser(subparsers)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # expkit's own DDP launch starts its workers this way
        _module("worker").add_parser(subparsers)
    return parser, subparsers.choices


def _module(name: str):
    return importlib.import_module(f"expkit.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "help":
            argv = [*argv[1:2], "--help"] if len(argv) > 1 else ["--help"]
        if argv and argv[0] == "train":
            return _module("train").main(argv[1:])
        parser, commands = build_parser()
        if not argv:
            parser.print_help()
            return 0
        try:
            if argv[0] not in commands:
                parser.parse_args(argv)  # --help, --version, or an unknown command: argparse says which
                return 2
            # Options and overrides in any order (`resume RUN --force trainer.epochs=5`).
            args = commands[argv[0]].parse_intermixed_args(argv[1:])
        except SystemExit as e:  # argparse ends --help with 0 and bad arguments with 2
            return e.code if isinstance(e.code, int) else 2
        return _module(argv[0].lstrip("_")).run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `expkit train --help | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a path the command cannot read or write (--out into a missing folder, ...)
        if os.environ.get("EXPKIT_TRACEBACK"):
            raise
        command = argv[0] if argv and argv[0] in COMMANDS else ""
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(printable(f"expkit{' ' + command if command else ''}: {where}{e.strerror or e}"), file=sys.stderr)
        return 2
    except Exception as e:
        from expkit.errors import ConfigError

        if os.environ.get("EXPKIT_TRACEBACK") or not isinstance(e, ConfigError):
            raise
        command = argv[0] if argv and argv[0] in COMMANDS else ""
        print(printable(f"expkit{' ' + command if command else ''}: {e}"), file=sys.stderr)  # values of a run folder
        return 2
