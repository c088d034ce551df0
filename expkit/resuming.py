"""Continue a run in its own folder, from its newest
valid checkpoint, with the config saved there.

Overrides that would change what was trained so far (model, data, optimizer, ...) are
refused unless --force; the safe ones (how long, how often to evaluate and log, devices)
are allowed. The code's git commit is compared with the run's: a different commit, or
uncommitted changes to tracked files other than the ones recorded in git.diff, is a
warning recorded in meta.json (under `resumes`), refused with --strict. (Untracked files
are not compared: the run folders themselves usually are untracked.)

Nothing in the run folder changes until the checkpoint has loaded into the model: a
refused resume leaves status, config.yaml and the event files as they were.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from expkit.config.compose import SAFE_KEYS, training_differences, upgrade_saved, with_overrides
from expkit.errors import ConfigError, did_you_mean
from expkit.run.folder import RunDir, now
from expkit.run.provenance import command_line, git_info
from expkit.run.provenance import tracked_diff as _tracked_diff
from expkit.training.dist import is_main

if TYPE_CHECKING:
    from expkit.run.checkpoint import Checkpoint

log = logging.getLogger("expkit")


def git_difference(path: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the git facts now, a warning when the code differs from the run's, else None)."""
    git_now, diff_now = git_info(None, exclude=(Path.cwd() / "runs", path))  # the project: here, never a record
    recorded = meta.get("git", {})
    problems = []
    if git_now.get("commit") != recorded.get("commit"):
        problems.append(f"the run was trained at commit {recorded.get('commit')}, the code is now at "
                        f"{git_now.get('commit') or 'no commit (' + str(git_now.get('note')) + ')'}")
    recorded_diff = RunDir(path).read_git_diff()
    if _tracked_diff(diff_now) != _tracked_diff(recorded_diff):
        problems.append("the uncommitted changes differ from the run's git.diff" if _tracked_diff(recorded_diff)
                        else "the working tree has uncommitted changes")
    return git_now, ("; ".join(problems) if problems else None)


def check_overrides(cfg, overrides: list[str], force: bool) -> str | None:
    """None when the overrides may be applied, else the reason they may not."""
    unsafe = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            return f"override {item!r} is not of the form key=value."
        plus, key = key.startswith("+"), key.lstrip("+")
        current = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if not plus and "." not in key and OmegaConf.is_dict(current):
            return (f"{item!r} picks a config group; resume continues the config saved in the run folder, so "
                    "only key=value overrides of it are possible (e.g. trainer.epochs=20).")
        if not plus and current is None and not _has_key(cfg, key):
            parent, _, leaf = key.rpartition(".")
            siblings = OmegaConf.select(cfg, parent, default=None) if parent else cfg
            keys = list(siblings) if OmegaConf.is_dict(siblings) else []
            hint = did_you_mean(leaf, keys, f"{parent}." if parent else "")
            return f"{key!r} is not a key of this run's config{hint} (add it with +{key}=... and --force)."
        if key not in SAFE_KEYS:
            unsafe.append(item)
    if unsafe and not force:
        return (f"override(s) {', '.join(unsafe)} would change what this run trained so far; pass --force to "
                f"accept that. Allowed without --force: {', '.join(sorted(SAFE_KEYS))}.")
    return None


def check_epochs(cfg, saved: Checkpoint, force: bool) -> str | None:
    """trainer.epochs may grow, unless the LR schedule is spread over the whole run."""
    epochs, trained = cfg.trainer.get("epochs"), saved.epoch
    started_with = (saved.config or {}).get("trainer", {}).get("epochs", epochs)
    if epochs < trained:
        return f"trainer.epochs={epochs} is less than the {trained} epochs this run has trained already."
    sched = cfg.get("sched", {}).get("name")
    if epochs != started_with and sched == "onecycle":
        return (f"trainer.epochs: sched=onecycle spreads its schedule over the {started_with} epochs the run "
                "started with and cannot step past its end; start a new run to train longer.")
    if epochs != started_with and sched == "cosine" and not force:
        return (f"trainer.epochs: sched=cosine anneals over the {started_with} epochs the run started with; "
                "changing it would not give the schedule of a longer run (the learning rate would rise again "
                f"after epoch {started_with}). Pass --force to accept that, or start a new run.")
    return None


def _has_key(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not OmegaConf.is_dict(node) or part not in node:
            return False
        node = node[part]
    return True


def resume(run_dir: str | Path, overrides: list[str], force: bool = False, strict: bool = False,
           objects: dict[str, Any] | None = None, trust: bool = False) -> dict[str, float]:
    """Continue the run in `run_dir`; its final metrics. Raises ConfigError when the resume
    is refused (nothing in the folder changed) and RunFailed when the run then fails.
    Own code (model.factory, ...) is imported from the project folder (the current
    directory) once it is found to be the file the run recorded, or with `trust`
    (--trust-code); `objects` (group -> object, from the Python API) stand for it instead."""
    from expkit.app import execute
    from expkit.config.imports import check_trust, using

    rundir, cfg, meta = open_run_folder(run_dir)
    cfg = resumed_config(cfg, overrides, force, objects)
    with using(objects=objects):
        from expkit.config.schema import validate

        check_trust(cfg, meta, rundir.path, trust, is_run=RunDir.holds_run)
        typed = validate(cfg)  # a bad value (trainer.epochs=abc) is refused before anything reads it
    saved, skipped = newest_checkpoint(rundir, meta)
    check_fits(cfg, saved, meta, force)
    check_same_run(saved, typed.plain, overrides, meta)
    git_now, git_warning = git_difference(rundir.path, meta)
    if git_warning:
        if strict:
            raise ConfigError(f"the code differs from the run's: {git_warning} (refused with --strict).")
        if is_main():  # once, not once per rank under torchrun
            print(f"expkit resume: warning: the code differs from the run's: {git_warning}", file=sys.stderr)

    def on_resume() -> None:
        """Called by execute once the checkpoint has loaded into the model."""
        entry = {"at": now(), "checkpoint": str(saved.path.relative_to(rundir.path)), "epoch": saved.epoch,
                 "batch": saved.batch, "step": saved.step, "overrides": overrides, "command": command_line(),
                 "skipped": skipped, "git": {k: git_now.get(k) for k in ("commit", "dirty")},
                 "git_warning": git_warning, "forced": force}
        rundir.record_resume(entry, typed.to_yaml() if overrides else None)
        for problem in skipped:  # said on the console before train.log was open: said there too
            log.warning("skipped a damaged checkpoint: %s", problem)

    from expkit.data.sources import reading_only

    with using(objects=objects), reading_only(training=True):
        return execute(cfg, rundir.path, overrides, discard_on_bad_input=False, resume=saved, on_resume=on_resume,
                       typed=typed)


def open_run_folder(run_dir: str | Path) -> tuple[RunDir, Any, dict[str, Any]]:
    """(the folder, its saved config, its meta.json); bad input when it is not a run folder."""
    rundir = RunDir(run_dir)
    if not rundir.path.exists():
        raise ConfigError(f"RUN_DIR {str(run_dir)!r} does not exist.")
    if not rundir.path.is_dir():
        raise ConfigError(f"RUN_DIR {str(run_dir)!r} is not a folder.")
    if not rundir.meta_path.exists() or not rundir.config.exists():
        raise ConfigError(f"{str(run_dir)!r} is not an expkit run folder (it has no "
                          f"{rundir.meta_path.name} and {rundir.config.name}).")
    try:
        return rundir, upgrade_saved(rundir.load_config()), rundir.read_meta()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{str(run_dir)!r}: cannot read its {rundir.config.name} or {rundir.meta_path.name}: "
                          f"{str(e).splitlines()[0]}") from None


def resumed_config(cfg, overrides: list[str], force: bool, objects: dict[str, Any] | None):
    """The saved config with the overrides applied, once they are allowed."""
    from expkit.config.imports import OWN

    problem = check_overrides(cfg, overrides, force)
    if problem:
        raise ConfigError(problem)
    lr = next((o.partition("=")[2] for o in overrides if o.lstrip("+").partition("=")[0] == "optim.lr"), None)
    sched = OmegaConf.select(cfg, "sched.name", default="none")
    warmup = OmegaConf.select(cfg, "sched.warmup_epochs", default=0) or 0
    if lr is not None and (sched != "none" or warmup > 0):
        what = f"sched={sched}" if sched != "none" else f"sched.warmup_epochs={warmup}"
        raise ConfigError(f"optim.lr: value {lr!r}: a resume cannot change the LR under {what}, whose LRs so far "
                          "come from the checkpoint; with sched=none and no warm-up it can (--force), or start a "
                          "new run.")
    for group in objects or {}:
        choice_key, own, _ = OWN[group]
        if cfg.get(group, {}).get(choice_key) != own:
            raise ConfigError(f"{group}: this run's {group} is {cfg.get(group, {}).get(choice_key)!r}, not own code; "
                              f"the {group} argument is for runs trained with {group}={own}.")
    return with_overrides(cfg, overrides)


def newest_checkpoint(rundir: RunDir, meta: dict[str, Any]) -> tuple[Checkpoint, list[str]]:
    """The checkpoint to continue from and the damaged newer ones skipped on the way."""
    from expkit.run.checkpoint import CheckpointError, load_latest
    from expkit.training.logs import setup_logging

    setup_logging(None)  # checkpoint warnings reach the console before the run's log opens
    skipped: list[str] = []
    try:  # under torchrun every rank gets here; one of them says which checkpoint was skipped
        return load_latest(rundir.checkpoints, problems=skipped, warn=is_main()), skipped
    except CheckpointError as e:
        if meta.get("before_first_checkpoint"):
            again = " ".join(["expkit train", *meta.get("overrides", [])])
            raise ConfigError(f"{str(rundir.path)!r} was stopped while starting, before its first checkpoint: "
                              f"there is nothing to continue. Train it again: {again}") from None
        raise ConfigError(str(e)) from None


def override_keys(overrides: list[str], meta: dict[str, Any] | None = None) -> set[str]:
    """The keys (or groups) changed on purpose: by this command's overrides, and by the
    run's recorded resumes (a --force resume's new optim.lr is in config.yaml, not in the
    checkpoints from before it)."""
    earlier = [str(o) for r in (meta or {}).get("resumes") or [] if isinstance(r, dict)
               for o in r.get("overrides") or []]
    return {o.split("=", 1)[0].lstrip("+~") for o in [*overrides, *earlier] if "=" in o}


RESUME_ADVICE = ("Give those keys as overrides (with --force) to continue with the run's values, or use the run "
                 "folder it came from.")


def check_same_run(saved: Checkpoint, run_plain: dict[str, Any], overrides: list[str],
                   meta: dict[str, Any] | None = None, advice: str = RESUME_ADVICE) -> None:
    """Refuse a checkpoint trained with another config than the run's (a file from another
    run of the same model): the keys named; an explicit override of them stays possible.
    A consistency check of what the folder records, not a signature. Resume and eval."""
    differ = training_differences(saved.config, run_plain, override_keys(overrides, meta))
    if differ:
        raise ConfigError(f"checkpoint {saved.path} was not trained with this run's config.yaml: "
                          f"{'; '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}. {advice}")


def check_fits(cfg, saved: Checkpoint, meta: dict[str, Any], force: bool) -> None:
    """Refuse a resume the checkpoint cannot continue as asked: another number of
    processes, fewer epochs, a completed or early-stopped run without room to go on."""
    from expkit.training.dist import world_size
    from expkit.training.launch import inside_worker_group

    # Under torchrun the group is torchrun's (trainer.devices is not what launched it).
    world = world_size() if inside_worker_group() else cfg.trainer.get("devices", 1)
    if saved.world_size != world and not force:
        how = "processes under torchrun" if inside_worker_group() else "process(es) (trainer.devices)"
        raise ConfigError(f"trainer.devices: the run trained with {saved.world_size} process(es) and would resume "
                          f"with {world} {how}; the data order and RNG streams would differ. Pass --force to "
                          "accept that.")
    epochs = cfg.trainer.get("epochs")
    problem = check_epochs(cfg, saved, force)
    if problem:
        raise ConfigError(problem)
    if meta.get("status") == "completed" and saved.epoch >= epochs:
        raise ConfigError(f"the run already completed its {epochs} epochs; extend it with trainer.epochs=N "
                          f"(N > {epochs}).")
    early = saved.early_stop or {}
    patience = cfg.trainer.get("early_stop", {}).get("patience")
    if meta.get("status") == "completed" and early.get("stopped_epoch") is not None and patience is not None \
            and early["wait"] >= patience:
        raise ConfigError(f"the run stopped early after epoch {early['stopped_epoch']} ({early['monitor']} did "
                          f"not improve for {early['wait']} evaluations); continue it with a larger "
                          "trainer.early_stop.patience, or with trainer.early_stop.patience=null.")


def resume_api(run_dir: str | Path, overrides: list[str], force: bool = False, strict: bool = False,
               model: Any = None, data: Any = None, init: Any = None,
               trust: bool = False) -> tuple[Path, dict[str, float]]:
    """`expkit.resume(run_dir)`: (the run folder, its final metrics). Raises ConfigError when
    the resume is refused and RuntimeError when the run fails."""
    from expkit.config.imports import given
    from expkit.errors import EXIT_BAD_INPUT, RunFailed

    objects, shown = given(model=model, data=data, init=init)
    named = [g for g in shown if g not in objects]
    if named:
        raise ConfigError(f"{named[0]}: resume imports the run's own {named[0]} code from its config; pass an "
                          "object (the class or function itself), or nothing.")
    try:
        metrics = resume(run_dir, list(overrides), force=force, strict=strict, objects=objects, trust=trust)
    except RunFailed as e:
        raise ConfigError(str(e)) if e.exit_code == EXIT_BAD_INPUT else RuntimeError(str(e)) from None
    return Path(run_dir), metrics
