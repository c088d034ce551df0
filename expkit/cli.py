"""The `expkit` command. Subcommands map to functions; nothing heavy is imported at the
top, so `expkit --help` and `expkit --version` answer at once.

    expkit train [OVERRIDES]          Hydra app: -m, --cfg job, --info, --config-dir work
    expkit resume RUN_DIR [OVERRIDES] continue a run in its own folder
    expkit sched [OVERRIDES]          draw the LR schedule of a config, without training
    expkit list                       config groups and their choices
"""

from __future__ import annotations

import os
import sys

USAGE = """usage: expkit COMMAND [ARGS]

commands:
  train [OVERRIDES]            compose conf/ with Hydra and train; one run folder under runs/
                               (-m for a sweep; --cfg job, --info, --config-dir DIR work;
                               `expkit train --help` lists every config key)
  resume RUN_DIR [OVERRIDES]   continue a run in the same folder from its newest valid
                               checkpoint (--force: allow overrides that change the run;
                               --strict: refuse when the git commit differs)
  sched [OVERRIDES] [--out F]  draw the learning rate over the whole run into a PNG
  summary [SWEEP_DIR]          print a sweep's table (also of one running or killed;
                               default: the newest sweep under runs/multirun)
  report SWEEP_DIR [--out DIR] a sweep's curves as a PNG and its jobs as a markdown table,
                               with the course's claim and what the sweep measured
  list                         config groups and their choices
  --version                    print the version

examples:
  expkit train model=mlp optim=sgd optim.lr=0.05 trainer.epochs=3
  expkit train -m optim=adam,adamw optim.lr=1e-3,3e-4
  expkit resume runs/2026-11-28/12-00-00 trainer.epochs=20

Set EXPKIT_TRACEBACK=1 to see Python tracebacks on errors.
"""


def run() -> None:
    """The `expkit` console script and `python -m expkit`: main(), then a quick exit."""
    try:
        main()
    finally:
        # Python's shutdown ends with a full garbage collection over every object that torch,
        # Hydra and TensorBoard made (millions once torch._dynamo is imported). After a short
        # `expkit train` here the exit took 1.3-1.5 s with it and 0.35 s without, all of it
        # after everything was written. Freezing the objects skips that pass. By now expkit
        # has closed its files and writers; atexit handlers (logging, multiprocessing, temp
        # files) still run, and the memory goes back with the process.
        # Only here, never in main(): in-process callers keep a collector that works.
        import gc

        gc.freeze()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if argv[0] in ("--version", "-V", "version"):
        from expkit import __version__

        print(f"expkit {__version__}")
        return
    command, rest = argv[0], argv[1:]
    commands = {"train": cmd_train, "resume": cmd_resume, "sched": cmd_sched, "list": cmd_list,
                "summary": cmd_summary, "report": cmd_report, "_worker": cmd_worker}
    if command not in commands or (command == "_worker" and "TORCHELASTIC_RUN_ID" not in os.environ):
        public = [c for c in commands if not c.startswith("_")]
        print(f"expkit: unknown command {command!r}; choose one of {', '.join(public)}.\n", file=sys.stderr)
        print(USAGE, end="", file=sys.stderr)
        sys.exit(2)
    try:
        commands[command](rest)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `expkit train --help | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as e:
        from expkit.schema import ConfigError

        if os.environ.get("EXPKIT_TRACEBACK") or not isinstance(e, ConfigError):
            raise
        print(f"expkit: {e}", file=sys.stderr)
        sys.exit(2)


# Hydra's flags that print something and exit without training.
PRINT_ONLY_FLAGS = {"--cfg", "-c", "--info", "-i", "--help", "--shell-completion", "-sc"}


def cmd_train(args: list[str]) -> None:
    if "--help" in args or "-h" in args:
        print_train_help()
        return
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
    problem = precheck_overrides(args)
    if problem:
        print(f"expkit: {problem}", file=sys.stderr)
        sys.exit(2)
    import hydra

    from expkit import app, sweep
    from expkit.app import hydra_task

    app.CLAIM_RUN_DIRS = not print_only
    args = sweep.prepare_args(args)  # -m ... sweep.resume=true: find the sweep folder to continue
    # Hydra reads sys.argv; show it exactly what follows `expkit train`.
    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path="pkg://expkit.conf", config_name="config", version_base="1.3")(hydra_task)()
    sys.exit(sweep.exit_status())  # -m: 1 when a job did not complete (after every job ran)


def precheck_overrides(args: list[str]) -> str | None:
    """Catch the two commonest typos, an unknown choice (`model=cnnn`) and an unknown key
    (`trainer.foo=1`), with a message that names what is allowed. Hydra still composes
    and schema.validate still checks everything else; fancy sweep syntax is left to them."""
    import dataclasses

    from expkit.schema import BASES, SCHEMAS, SINGLE

    choices = list_choices(extra_dirs=[a.split("=", 1)[1] if "=" in a else "" for a in args
                                       if a.startswith("--config-dir")] + _following(args, "--config-dir", "-cd"))
    for arg in args:
        if arg.startswith("-") or "=" not in arg or arg.startswith(("+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        if key in choices and "." not in key:
            if "(" in value or "[" in value:
                continue
            unknown = [v for v in value.split(",") if v not in choices[key]]
            if unknown:
                return (f"{key}: value {unknown[0]!r} is not a known {key} choice; "
                        f"choose one of {', '.join(choices[key])}.")
        group, _, name = key.partition(".")
        if name and "." not in name and (group in SCHEMAS or group in SINGLE):
            schemas = list(SCHEMAS.get(group, {}).values()) + [BASES.get(group) or SINGLE[group]]
            fields = sorted({f.name for sc in schemas if sc for f in dataclasses.fields(sc)})
            if name not in fields:
                return f"{key}: unknown key (value {value!r}). Keys of {group}: {', '.join(fields)}."
    return None


def _following(args: list[str], *flags: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in flags]


def print_train_help() -> None:
    from expkit.schema import key_reference

    print("usage: expkit train [group=choice ...] [key=value ...] [-m] [--cfg job] [--config-dir DIR]\n")
    print("config groups (pick with group=choice):")
    for group, choices in list_choices().items():
        print(f"  {group:<15} {', '.join(choices)}")
    print("\nkeys (set with key=value):")
    for k, typ, default, help_ in key_reference():
        print(f"  {k:<26} {typ:<12} {default:<14} {help_}")
    print("\nHydra's own help: expkit train --hydra-help")


GROUPS = ("data", "model", "optim", "sched", "init", "reg", "trainer", "experiment", "debug", "hparams_search")


def list_choices(extra_dirs: list[str] = ()) -> dict[str, list[str]]:
    """Config groups and their choices: expkit's conf/ plus a user's --config-dir."""
    from importlib.resources import files
    from pathlib import Path

    roots = [files("expkit.conf"), *(Path(d) for d in extra_dirs if d)]
    groups: dict[str, set[str]] = {}
    for group in GROUPS:
        for root in roots:
            folder = root / group
            if folder.is_dir():
                names = {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")}
                groups.setdefault(group, set()).update(names)
    return {g: sorted(names) for g, names in groups.items()}


def cmd_list(args: list[str]) -> None:
    for group, choices in list_choices().items():
        print(f"{group:<15} {', '.join(choices)}")


def cmd_resume(args: list[str]) -> None:
    from expkit.resume import resume

    flags = {a for a in args if a.startswith("--")}
    unknown = flags - {"--force", "--strict"}
    positional = [a for a in args if not a.startswith("--")]
    if unknown or not positional:
        print("usage: expkit resume RUN_DIR [key=value ...] [--force] [--strict]", file=sys.stderr)
        sys.exit(2)
    code = resume(positional[0], positional[1:], force="--force" in flags, strict="--strict" in flags)
    sys.exit(code)


def cmd_summary(args: list[str]) -> None:
    from expkit.sweep import cmd_summary as summary

    sys.exit(summary(args))


def cmd_report(args: list[str]) -> None:
    from expkit.report import main as report_main  # imports matplotlib only when drawing

    sys.exit(report_main(args))


def cmd_sched(args: list[str]) -> None:
    from expkit.schedplot import main as sched_main

    sched_main(args)


def cmd_worker(args: list[str]) -> None:
    """One DDP worker started by expkit's own launch (expkit/launch.py); not for users."""
    from expkit.app import run_worker

    checkpoint = args[args.index("--resume") + 1] if "--resume" in args else None
    sys.exit(run_worker(args[0], checkpoint))
