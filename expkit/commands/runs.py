"""`expkit runs [ROOT] [--status S] [--where KEY=VALUE ...] [--sort METRIC] [--limit N] [--json]`."""

from __future__ import annotations

import argparse
import json

HELP = "every run folder under ROOT in one table (sweep jobs included)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "runs", help=HELP, description=HELP + ": status, start, duration, git commit (* when the tree was "
        "dirty), overrides (+N resumes and the last resume's), val/acc, best val/acc, test/acc (with runs of "
        "other tasks among them: each run's task and main metric, val, best, test); the duration is the time it "
        "trained, without the pauses between resumes. Newest first, or best first with --sort.",
        epilog="Examples: expkit runs --status completed --sort val/acc --limit 10; "
               "expkit runs --where optim=adamw --where optim.lr=0.001; expkit runs runs/multirun --json")
    p.add_argument("root", metavar="ROOT", nargs="?", default="runs", help="folder to search (default: runs)")
    p.add_argument("--status", action="append", metavar="S",
                   help="only runs with this status (running, completed, failed, interrupted, crashed: marked "
                        "running, but its process is gone); repeat or comma-separate for several")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only runs whose resolved config (config.yaml) has KEY=VALUE; a group stands for its "
                        "choice (optim=adamw); VALUE may list choices (optim=adam,adamw); repeat to combine")
    p.add_argument("--sort", metavar="METRIC", help="best first by this metric of metrics.json (losses ascending)")
    p.add_argument("--limit", metavar="N", type=int, help="show the first N rows only")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects (one per run) for scripts")
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.printable import printable
    from expkit.runlist import list_runs, table

    rows = list_runs(args.root, status=args.status, where=args.where, sort=args.sort, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=1, allow_nan=False))
    elif not rows:
        print(f"no run folders under {args.root}" + (" match" if args.status or args.where else ""))
    else:
        print(printable(table(rows, args.sort)), end="")
    return 0
