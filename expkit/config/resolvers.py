"""The OmegaConf resolvers conf/config.yaml uses. Pure functions of their arguments:
resolving a config never makes a folder (the command that starts a run claims it)."""

from __future__ import annotations

from typing import Any


def suffix(name: Any) -> str:
    """`-NAME` for the run folder when `name` is set."""
    return f"-{name}" if name else ""


def slug(text: str) -> str:
    """A folder name from Hydra's override_dirname: no slashes, not too long."""
    text = str(text).replace("/", "_").replace(" ", "") or "defaults"
    return text if len(text) <= 120 else text[:120] + "..."


def direction(metric: str) -> str:
    """Losses and errors are minimized, everything else (accuracies, R²) maximized; sorts
    the sweep summary and, through `expkit_direction`, sets Optuna's direction."""
    from expkit.tasks.names import direction as task_direction

    return task_direction(metric)


def main_metric(task: str) -> str:
    """sweep.metric's default: the task's main validation metric."""
    from expkit.tasks.names import main_metric as main

    return main(str(task))


def truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def hydra_subdir(output_dir: str, resume: Any) -> str | None:
    """hydra.output_subdir: `.hydra`, except for a job folder an earlier attempt of a resumed
    sweep made (it has a meta.json): Hydra must not rewrite that folder's files."""
    from expkit.run.folder import RunDir

    if truthy(resume) and output_dir and RunDir(output_dir).is_run():
        return None
    return RunDir.HYDRA


def same_path(path: str) -> str:
    """`expkit_unique`, kept so configs written for older versions still compose; folders
    are now claimed by the command that starts the run, not while resolving."""
    return path


def register() -> None:
    from omegaconf import OmegaConf

    for name, fn in (("expkit_unique", same_path), ("expkit_suffix", suffix), ("expkit_slug", slug),
                     ("expkit_hydra_subdir", hydra_subdir), ("expkit_direction", direction),
                     ("expkit_main_metric", main_metric)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
