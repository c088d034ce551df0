"""`expkit _worker RUN_DIR [--resume FILE]`: one DDP worker started by expkit's own launch
(training/launch.py); not for users, refused outside a torch elastic worker group."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("_worker")
    p.add_argument("run_dir")
    p.add_argument("--resume", metavar="FILE")
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.app import run_worker

    return run_worker(args.run_dir, args.resume)
