"""`expkit compare RUN_A RUN_B [RUN ...] [--plot FILE.png] [--json]`."""

from __future__ import annotations

import argparse
import json

HELP = "what differs between runs: config keys, metrics, code, data"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help=HELP, description=HELP + ". Shows only the config keys that differ (with each run's "
        "value), the final and best metrics side by side, each run's git commit with the files changed between "
        "the commits and each run's uncommitted changes, and the data fingerprints.",
        epilog="Example: expkit compare runs/2026-11-28/12-00-00 runs/2026-11-28/12-05-00 --plot cmp.png")
    p.add_argument("runs", metavar="RUN", nargs="+", help="two or more run folders")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the runs' main metric (val/acc, val/rmse, ...) and train/loss into this PNG")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.compare import compare, plot, report
    from expkit.errors import ConfigError
    from expkit.printable import printable

    if len(args.runs) < 2:
        raise ConfigError("give at least two run folders (RUN_A RUN_B [RUN ...]).")
    result = compare(args.runs)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1, default=str))
    else:
        print(printable(report(result)), end="")
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0
