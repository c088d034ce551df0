"""`expkit report SWEEP_DIR [--out DIR] [--lesson NAME]`."""

from __future__ import annotations

import argparse
import sys

HELP = "a sweep's curves as a PNG and its jobs as a markdown table, with the lesson's verdict"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help=HELP, description=HELP + ".")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep folder, e.g. runs/multirun/<date>/<time>")
    p.add_argument("--out", metavar="DIR", help="where to write the PNG and markdown (default: SWEEP_DIR)")
    p.add_argument("--lesson", metavar="NAME", help="judge the sweep as this lesson (default: its experiment=)")
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.lessons.jobs import ReportError
    from expkit.lessons.report import report  # imports matplotlib only when drawing
    from expkit.printable import printable

    try:
        png, md = report(args.sweep_dir, args.out, args.lesson)
    except ReportError as e:
        print(f"expkit report: {e}", file=sys.stderr)
        return 2
    print(printable(md.read_text()))
    print(printable(f"wrote {png} and {md}"))
    return 0
