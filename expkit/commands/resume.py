"""`expkit resume RUN_DIR [OVERRIDES] [--force] [--strict]`."""

from __future__ import annotations

import argparse
import sys

from expkit.commands import add_trust_flag
from expkit.errors import EXIT_OK, ConfigError, RunFailed

HELP = "continue a run in its own folder from its newest valid checkpoint"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "resume", help=HELP, description=HELP + ", with the config saved there.",
        epilog="Safe overrides need no flag: trainer.epochs, trainer.eval_every, trainer.log_every, "
               "trainer.devices (the same number of processes unless --force), ... "
               "Example: expkit resume runs/2026-11-28/12-00-00 trainer.epochs=20")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (it holds meta.json and checkpoints/)")
    p.add_argument("overrides", metavar="OVERRIDES", nargs="*", help="key=value changes to the saved config")
    p.add_argument("--force", action="store_true", help="allow overrides that change what the run trained so far")
    p.add_argument("--strict", action="store_true", help="refuse when the code differs from the run's git commit")
    add_trust_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.resuming import resume

    try:
        resume(args.run_dir, args.overrides, force=args.force, strict=args.strict, trust=args.trust_code)
    except ConfigError as e:
        print(f"expkit resume: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"expkit resume: {e}", file=sys.stderr)
        return e.exit_code
    return EXIT_OK
