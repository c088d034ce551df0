"""`expkit list`: config groups and their choices."""

from __future__ import annotations

import argparse

HELP = "config groups and their choices"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("list", help=HELP, description=HELP + " (expkit's conf/ and --config-dir DIR).")
    p.add_argument("--config-dir", metavar="DIR", action="append", default=[], help="a folder of your own configs")
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.config.groups import list_choices

    for group, choices in list_choices(args.config_dir).items():
        print(f"{group:<15} {', '.join(choices)}")
    return 0
