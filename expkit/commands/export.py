"""`expkit export RUN_DIR [--checkpoint best|last|FILE] [--format torchscript|exported]`."""

from __future__ import annotations

import argparse
import sys

from expkit.commands import add_trust_flag

HELP = "write a run's model as a file plain torch loads (torch.export or TorchScript), normalization inside"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help=HELP, description=HELP + ". Written under RUN_DIR/export/, read back and checked against "
        "the checkpoint on a batch.",
        epilog="Load it without expkit: torch.export.load(FILE).module() (exported) or torch.jit.load(FILE) "
               "(torchscript); it takes inputs in [0, 1] shaped (N, *input_shape) and returns logits.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    p.add_argument("--checkpoint", default="best", metavar="best|last|FILE", help="which weights (default %(default)s)")
    # torch.export by default: torch deprecates TorchScript (torch.jit warns from 2.14 on), and
    # a default should not be the format torch asks users to move away from.
    p.add_argument("--format", dest="fmt", default="exported", choices=("exported", "torchscript"),
                   help="exported (torch.export.load, a .pt2 file; the format torch recommends) or torchscript "
                        "(torch.jit.load, a .torchscript.pt file; deprecated by torch) (default %(default)s)")
    add_trust_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.afterwards.export import export
    from expkit.afterwards.loading import run_code
    from expkit.errors import RunFailed

    try:
        with run_code(args.run_dir, trust=args.trust_code):
            info = export(args.run_dir, checkpoint=args.checkpoint, fmt=args.fmt)
    except RunFailed as e:
        print(f"expkit export: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {info['file']} ({info['format']}, checkpoint {info['checkpoint']}, step {info['step']}); "
          f"outputs match the checkpoint's to {info['max_abs_diff']:.2g}")
    print(f"load it with: {info['load'].replace('PATH', repr(info['file']))}; input {info['input']}")
    return 0
