"""The course's lessons as `expkit lesson` runs them: which presets are lessons, their claims
in one line, and the `expkit train -m` arguments of a lesson's sweep (the command layer runs
it, then lessons/report.py judges it)."""

from __future__ import annotations

import time
from pathlib import Path

from expkit.errors import ConfigError
from expkit.lessons.claims import COMPARISONS, SHORT


def names() -> list[str]:
    """The lessons: presets in conf/experiment/ whose claim lessons/claims.py can check."""
    from expkit.config.groups import list_choices

    presets = set(list_choices().get("experiment", []))
    return [n for n in COMPARISONS if n in presets]


def listing() -> list[str]:
    width = max(len(n) for n in names())
    return [f"{n:<{width}}  {SHORT[n]}" for n in names()]


def check_name(name: str | None) -> str:
    if not name:
        raise ConfigError("NAME: a lesson is required; choose one of " + ", ".join(names())
                          + " (expkit lesson --list shows each claim).")
    if name not in names():
        raise ConfigError(f"NAME: value {name!r} is not a lesson; choose one of {', '.join(names())}.")
    return name


def sweep_dir(name: str, root: str | Path = "runs") -> Path:
    """A fresh name for the lesson's sweep folder: runs/lessons/NAME/<date>_<time>[-N]. Not made
    here: `expkit train` makes it once the overrides are checked, so bad input leaves nothing."""
    base = Path(root) / "lessons" / name / time.strftime("%Y-%m-%d_%H-%M-%S")
    candidate, n = base, 0
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def given_sweep_dir(overrides: list[str]) -> Path | None:
    given = [o.split("=", 1)[1].strip("'\"") for o in overrides if o.lstrip("+").startswith("hydra.sweep.dir=")]
    return Path(given[-1]) if given else None


def train_args(name: str, overrides: list[str], seeds: int | None, folder: Path | None) -> list[str]:
    """What follows `expkit train` for the lesson's sweep: the preset, the user's overrides
    (a value for a swept key replaces the preset's sweep, as with `expkit train -m`), N seeds
    per arm when asked, and the sweep folder."""
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds: value {seeds} is not allowed; expected an integer >= 1.")
    if seeds is not None and any(o.lstrip("+").startswith("seed=") for o in overrides):
        raise ConfigError("--seeds: give the seeds once, either --seeds N or seed=... among the overrides.")
    args = ["-m", f"experiment={name}", *overrides]
    if seeds is not None:
        args.append(f"seed=range(0,{seeds})")
    if folder is not None:
        args.append(f"hydra.sweep.dir={folder}")
    return args
