"""`expkit summary [SWEEP_DIR] [--metric KEY]`: a sweep's table from its job folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "print a sweep's table (also of one still running or killed)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("summary", help=HELP, description=HELP + ".")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", nargs="?",
                   help="a sweep folder (default: the newest under runs/multirun)")
    p.add_argument("--metric", metavar="KEY", help="sort by this metric (default: the sweep's sweep.metric)")
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.printable import printable
    from expkit.summary import MULTIRUN_ROOT, collect, newest_sweep

    path = Path(args.sweep_dir) if args.sweep_dir else newest_sweep()
    if path is None:
        print(f"expkit summary: no sweep under {MULTIRUN_ROOT}/; give SWEEP_DIR.", file=sys.stderr)
        return 2
    if not path.is_dir():
        print(f"expkit summary: SWEEP_DIR {str(path)!r} is not a folder.", file=sys.stderr)
        return 2
    summary = collect(path, args.metric)
    if not summary.rows:
        print(f"expkit summary: {str(path)!r} holds no job folders (a sweep folder has one per job).",
              file=sys.stderr)
        return 2
    known = sorted({k for row in summary.rows for k in row.metrics})
    if args.metric and known and args.metric not in known:
        print(f"expkit summary: --metric: value {args.metric!r} is not a metric of this sweep; choose one of "
              f"{', '.join(known)}.", file=sys.stderr)
        return 2
    print(printable(summary.markdown()), end="")
    return 0
