"""Config groups and their choices: the YAML files of expkit's conf/ plus a user's
--config-dir folders. Reads file names only, so it answers at once."""

from __future__ import annotations

from pathlib import Path

GROUPS = ("data", "model", "optim", "sched", "init", "reg", "trainer", "task", "experiment", "debug",
          "hparams_search")


def list_choices(extra_dirs: list[str] | tuple[str, ...] = ()) -> dict[str, list[str]]:
    from importlib.resources import files

    roots = [files("expkit.conf"), *(Path(d) for d in extra_dirs if d)]
    groups: dict[str, set[str]] = {}
    for group in GROUPS:
        for root in roots:
            folder = root / group
            if folder.is_dir():
                names = {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")}
                groups.setdefault(group, set()).update(names)
    return {g: sorted(names) for g, names in groups.items()}
