"""`expkit reproduce RUN_DIR [--check]`."""

from __future__ import annotations

import argparse
import sys

from expkit.commands import add_trust_flag

HELP = "rebuild a run's recorded code in a git worktree, re-run it on CPU and compare"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "reproduce", help=HELP, description=HELP + ": the recorded commit + git.diff + untracked files, the "
        "same config, then final weights (bitwise), metrics, package versions and data fingerprint compared. "
        "Run it inside the run's git repository.",
        epilog="Exit status: 0 reproduces, 1 differs, 2 cannot (not a run folder, no git, the commit is not in "
               "this repository, the data changed). Example: expkit reproduce runs/2026-11-28/12-00-00")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a completed run folder")
    p.add_argument("--check", action="store_true",
                   help="only check that the run can be made again (commit present, code rebuilds, data "
                        "unchanged); no training")
    add_trust_flag(p, help="rebuild with the run's git.diff and untracked files even where they are not what "
                           "this repository holds now (a received run folder): that code then runs in the re-run")
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.printable import printable
    from expkit.reproduce import reproduce
    from expkit.run.folder import RunDir

    def say(folder) -> None:
        print(f"expkit reproduce: code rebuilt; re-running on CPU. Follow it in {RunDir(folder).log} while it "
              "runs; that folder is removed at the end unless the result differs.", file=sys.stderr, flush=True)

    from expkit.app import Stopped

    try:
        result = reproduce(args.run_dir, check=args.check, on_rerun=say, trust=args.trust_code)
    except Stopped as e:
        print(f"expkit reproduce: stopped by {e.signal_name}; the re-run was stopped, its worktree removed "
              "(reproduce.json says so)", file=sys.stderr)
        return e.exit_code
    print(printable(result.text()), end="")
    return result.exit_code
