"""`expkit predict RUN_DIR PATH... [--checkpoint best|last|FILE] [--top K] [--out FILE.csv]`."""

from __future__ import annotations

import argparse

from expkit.commands import add_trust_flag

HELP = "predict the class of image files (or folders of them) with a run's checkpoint"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help=HELP, description=HELP + ", preprocessed as in training (channels, size, the run's "
        "normalization). One row per image: path, class, probability and the top K.",
        epilog="Example: expkit predict runs/2026-11-28/12-00-00 my_digits/ --top 3 --out predictions.csv")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files, or folders searched for images")
    p.add_argument("--checkpoint", default="best", metavar="best|last|FILE", help="which weights (default %(default)s)")
    p.add_argument("--top", type=int, default=3, metavar="K", help="the K most probable classes (default %(default)s)")
    p.add_argument("--out", metavar="FILE.csv", help="also write the rows to this CSV file")
    add_trust_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.afterwards.loading import run_code
    from expkit.afterwards.predict import predict, table

    with run_code(args.run_dir, trust=args.trust_code):
        rows = predict(args.run_dir, args.paths, checkpoint=args.checkpoint, top=args.top, out=args.out)
    print(table(rows))
    if args.out:
        print(f"wrote {args.out}")
    return 0
