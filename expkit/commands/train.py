"""`expkit train [OVERRIDES]`: what follows `train` belongs to Hydra (-m, --cfg, --info,
--config-dir, sweepers and launchers work as Hydra users expect). Before Hydra runs,
this command checks the overrides (bad input: exit 2, nothing made) and claims the run
or sweep folder, so resolving the config never makes one.

    check overrides (config/compose.py) -> claim the folder -> @hydra.main -> hydra_task
      -> one run: app.execute        a sweep job: sweep.run_job -> app.execute
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

HELP = "compose conf/ with Hydra and train; one run folder under runs/ (-m: a sweep)"
# Hydra's flags that print something and exit without training.
PRINT_ONLY_FLAGS = {"--cfg", "-c", "--info", "-i", "--help", "--shell-completion", "-sc"}


def add_parser(subparsers) -> None:
    # Listed in `expkit --help`; its arguments are parsed here and by Hydra, not by argparse.
    subparsers.add_parser("train", help=HELP, add_help=False)


def main(args: list[str]) -> int:
    from expkit.run.provenance import typed_command

    with typed_command([sys.argv[0], "train", *args]):  # recorded in meta.json and sweep.json
        return train(args)


def train(args: list[str]) -> int:
    if "--help" in args or "-h" in args:
        print_help(config_dirs(args))
        return 0
    if "--hydra-help" in args:
        args = [a for a in args if a != "--hydra-help"] + ["--help"]
    print_only = any(a.split("=")[0] in PRINT_ONLY_FLAGS for a in args)
    if print_only:
        # Only printing (Hydra logs it line by line): when the reader leaves, as in
        # `expkit train --info | head`, end quietly as cat does, instead of one "Logging
        # error" traceback per remaining line. Training keeps Python's handling: a closed
        # pipe must not kill a run before its checkpoint.
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    import hydra

    from expkit import sweep
    from expkit.app import Stopped, StopSignals
    from expkit.config.compose import (
        CONFIG_MODULE,
        PRIMARY,
        check_overrides,
        hydra_overrides,
        is_multirun,
        split_command_line,
    )
    from expkit.run.folder import RunDir

    args = sweep.prepare_args(args)  # -m ... sweep.resume=true: find the sweep folder to continue
    multirun = is_multirun(args)
    with StopSignals():  # from the folder's claim on: a signal never leaves a false record
        folder = None
        try:
            if "--help" not in args:
                cfg = check_overrides(hydra_overrides(args), config_dirs(args), multirun=multirun, hydra=True)
                if not print_only:
                    claimed = claim_folder(cfg, args)
                    folder = Path(claimed[0].split("=", 1)[1].strip("'")) if claimed else None
                    flags, overrides = split_command_line(args)
                    args = [*flags, *overrides, *claimed]  # the overrides as one run of words, as argparse needs
                    if folder is None and not multirun:
                        check_given_run_dir(cfg)
            sys.argv = [sys.argv[0], *args]  # Hydra reads sys.argv: show it exactly what follows `expkit train`
            hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=PRIMARY, version_base="1.3")(hydra_task)()
        except (Stopped, SystemExit) as e:
            code = e.exit_code if isinstance(e, Stopped) else e.code
            sweep_dir = folder or given_dir(args, "hydra.sweep.dir")
            if multirun and isinstance(code, int) and code >= 128 and sweep_dir is not None:
                sweep.stopped(sweep_dir)  # the summary says which jobs will not run
            elif isinstance(e, Stopped) and folder is not None and not RunDir(folder).is_run():
                from expkit.app import remove_run_folder

                remove_run_folder(folder)  # stopped before the run began: nothing to keep
            if isinstance(e, Stopped):
                print(f"expkit: stopped by {e.signal_name}", file=sys.stderr)
                return code
            raise
    return sweep.exit_status()  # -m: 1 when a job did not complete (after every job ran)


def config_dirs(args: list[str]) -> list[str]:
    found = [a.split("=", 1)[1] for a in args if a.startswith(("--config-dir=", "-cd="))]
    found += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config-dir", "-cd")]
    return found


def claim_folder(cfg: DictConfig, args: list[str]) -> list[str]:
    """The run (or sweep) folder, made now with a fresh name (`-1`, `-2`, ... when two runs
    start in the same second), passed to Hydra as hydra.run.dir (hydra.sweep.dir). Under
    torchrun rank 0 makes it and the other ranks get its name. A folder the user named
    is taken as given."""
    from expkit.config.compose import is_multirun
    from expkit.run.folder import unique_dir

    key = "hydra.sweep.dir" if is_multirun(args) else "hydra.run.dir"
    if any(a.lstrip("+").startswith(f"{key}=") for a in args):
        return []
    pattern = str(cfg.hydra.sweep.dir if key == "hydra.sweep.dir" else cfg.hydra.run.dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ:
        from expkit.training.dist import agree_on_run_dir

        chosen = agree_on_run_dir(pattern, unique_dir)
    else:
        chosen = unique_dir(pattern)
    return [f"{key}={quote(chosen)}"]


def given_dir(args: list[str], key: str) -> Path | None:
    values = [a.split("=", 1)[1].strip("'\"") for a in args if a.lstrip("+").startswith(f"{key}=")]
    return Path(values[-1]) if values else None


def check_given_run_dir(cfg: DictConfig) -> None:
    """hydra.run.dir=DIR given on the command line: a folder that can be made and written,
    and that holds no run yet (continue one with `expkit resume DIR`)."""
    from expkit.errors import ConfigError
    from expkit.run.folder import RunDir

    path = Path(str(cfg.hydra.run.dir))
    if RunDir(path).is_run():
        raise ConfigError(f"hydra.run.dir: {str(path)!r} holds a run already; continue it with "
                          f"`expkit resume {path}`, or choose another folder.")
    if path.is_dir() and any(path.iterdir()):
        # A run folder is expkit's alone: a refused or stopped run removes it again.
        raise ConfigError(f"hydra.run.dir: {str(path)!r} is a folder that holds files already; give a new "
                          "or empty folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"hydra.run.dir: cannot make the folder {str(path)!r}: {e.strerror or e}.") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"hydra.run.dir: {str(path)!r} is not a folder this user can write to.")


def quote(path: str) -> str:
    """A path as a Hydra override value (quoted when it holds characters the grammar uses)."""
    if all(c.isalnum() or c in "/._-:+" for c in path):
        return path
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def hydra_task(cfg: DictConfig) -> float | None:
    """Body of `expkit train`, called by Hydra once per job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from expkit.errors import RunFailed

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:  # skip/resume on sweep.resume, None for a failed job, the summary
        from expkit.sweep import run_job

        return run_job(cfg, run_dir, overrides, Path(hc.sweep.dir))
    from expkit.app import execute

    try:
        metrics = execute(cfg, run_dir, overrides, discard_on_bad_input=True)
    except RunFailed as e:
        print(f"expkit: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    return metrics.get(cfg.get("sweep", {}).get("metric", "val/acc"))


def print_help(extra_dirs: list[str]) -> None:
    from expkit.config.groups import list_choices
    from expkit.config.reference import key_rows

    print("usage: expkit train [group=choice ...] [key=value ...] [-m] [--cfg job] [--config-dir DIR]\n")
    print("Compose conf/ with Hydra and train; one run folder under runs/. With -m, a sweep: one job")
    print("per combination (optim=adam,adamw optim.lr=1e-3,3e-4), one folder each under runs/multirun/.\n")
    print("config groups (pick with group=choice):")
    for group, choices in list_choices(extra_dirs).items():
        print(f"  {group:<15} {', '.join(choices)}")
    print("\nkeys (set with key=value; the default is what the default choice composes, with other")
    print("choices' values in brackets; full reference: docs/reference.md):")
    for row in key_rows():
        print(f"  {row.key:<26} {row.type:<12} {row.default_text():<14} {row.help}")
    print("\nexit status: 0 completed, 1 training failed, 2 bad input, 128+N stopped by signal N")
    print("Hydra's own help: expkit train --hydra-help")
