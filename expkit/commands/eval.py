"""`expkit eval RUN_DIR [--checkpoint best|last|FILE] [--split test|val|train] [OVERRIDES]`."""

from __future__ import annotations

import argparse

from expkit.commands import add_trust_flag

HELP = "score a run's checkpoint on a split: loss, accuracy, per-class table, confusion matrix"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help=HELP, description=HELP + ". Writes RUN_DIR/eval/<split>-<checkpoint>.json and a "
        "confusion-matrix PNG beside it, and adds the picture to the run's TensorBoard.",
        epilog="Examples: expkit eval runs/2026-11-28/12-00-00; expkit eval RUN --checkpoint last --split val; "
               "expkit eval RUN data=folder data.root=more_digits (another data set of the same shape)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (it holds config.yaml and checkpoints/)")
    p.add_argument("overrides", metavar="OVERRIDES", nargs="*",
                   help="key=value changes to the run's config, or data=CHOICE to score on another data set")
    p.add_argument("--checkpoint", default="best", metavar="best|last|FILE",
                   help="which weights: best.pt, last.pt or a checkpoint file (default %(default)s)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="(default %(default)s)")
    add_trust_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.afterwards.evaluate import evaluate, table
    from expkit.afterwards.loading import run_code
    from expkit.printable import printable

    with run_code(args.run_dir, trust=args.trust_code):
        result = evaluate(args.run_dir, split=args.split, checkpoint=args.checkpoint, overrides=args.overrides)
    print(printable(table(result)))
    print(printable("wrote " + ", ".join(result["files"])))
    return 0
