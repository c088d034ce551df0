"""`expkit lesson NAME [OVERRIDES] [--seeds N] [--out DIR]`, `expkit lesson --list`."""

from __future__ import annotations

import argparse
import sys

HELP = "a course lesson: its sweep (every arm with its seeds) and its report, in one command"
EPILOG = """The same as `expkit train -m experiment=NAME [OVERRIDES]` into runs/lessons/NAME/<date>_<time>,
then `expkit report` on that folder. Examples:
  expkit lesson --list
  expkit lesson dropout
  expkit lesson dropout --seeds 10 trainer.accelerator=cuda
  expkit lesson skip +debug=fast seed=0,1          (sample mode, two seeds: seconds)
Exit status: 0 when the report was written (jobs that failed, e.g. runs that blew up on
purpose, are in it), 2 bad input, 128+N stopped by signal N."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("lesson", help=HELP, description=HELP + ".", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", nargs="?", help="the lesson (a preset in conf/experiment/)")
    p.add_argument("overrides", metavar="OVERRIDES", nargs="*", help="key=value changes, as for expkit train -m")
    p.add_argument("--list", action="store_true", help="each lesson and its claim in one line")
    p.add_argument("--seeds", metavar="N", type=int, help="seeds per arm (default: the preset's, 3)")
    p.add_argument("--out", metavar="DIR", help="where the PNG and markdown go (default: the sweep folder)")
    return p


def check_first_job(train_args: list[str]) -> None:
    """`expkit train -m` lets a sweep job with a bad value fail on its own; a lesson whose every
    job would fail is bad input: its first job is composed and validated now."""
    from expkit.config.compose import check_overrides, hydra_overrides, task_config
    from expkit.config.schema import validate

    validate(task_config(check_overrides(hydra_overrides(train_args), multirun=True, hydra=True)))


def run(args: argparse.Namespace) -> int:
    from expkit.errors import ConfigError
    from expkit.lessons import catalog

    if args.list:
        print("\n".join(catalog.listing()))
        return 0
    try:
        name = catalog.check_name(args.name)
        check_first_job(catalog.train_args(name, args.overrides, args.seeds, None))  # before any folder is made
        folder = catalog.given_sweep_dir(args.overrides)
        train_args = catalog.train_args(name, args.overrides, args.seeds, None if folder else catalog.sweep_dir(name))
        folder = folder or catalog.given_sweep_dir(train_args)
    except ConfigError as e:
        print(f"expkit lesson: {e}", file=sys.stderr)
        return 2
    from expkit.commands import train

    print(f"expkit lesson {name}: expkit train {' '.join(train_args)}", flush=True)
    code = train.main(train_args)
    if code not in (0, 1) or folder is None or not folder.is_dir():  # bad input or a stop signal
        return code
    from expkit.lessons.jobs import ReportError
    from expkit.lessons.report import report

    try:
        png, md = report(folder, args.out, name)
    except ReportError as e:
        print(f"expkit lesson: {e}", file=sys.stderr)
        return 2
    print(md.read_text())
    if code == 1:
        print("expkit lesson: some jobs did not complete; the report counts them as its rule says", file=sys.stderr)
    print(f"wrote {png} and {md}")
    return 0
