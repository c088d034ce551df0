"""`expkit resume RUN_DIR [OVERRIDES]`: continue a run in its own folder, from its newest
valid checkpoint, with the config saved there.

Overrides that would change what was trained so far (model, data, optimizer, ...) are
refused unless --force; the safe ones (how long, how often to evaluate and log, devices)
are allowed. A different or dirty git tree is a warning recorded in meta.json, refused
with --strict.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from expkit.rundir import RunDir, git_info, now, write_atomic

SAFE_KEYS = {
    "trainer.epochs", "trainer.eval_every", "trainer.log_every", "trainer.devices",
    "trainer.progress", "trainer.keep_last", "trainer.checkpoint", "trainer.histogram_every",
    "trainer.max_steps", "trainer.num_threads", "trainer.graph", "data.num_workers",
}


def fail(message: str) -> int:
    print(f"expkit resume: {message}", file=sys.stderr)
    return 2


def resume(run_dir: str, overrides: list[str], force: bool = False, strict: bool = False) -> int:
    from expkit.app import RunFailed, execute

    path = Path(run_dir)
    if not path.is_dir():
        return fail(f"RUN_DIR {run_dir!r} does not exist or is not a folder.")
    if not (path / "meta.json").exists() or not (path / "config.yaml").exists():
        return fail(f"{run_dir!r} is not an expkit run folder (it has no meta.json and config.yaml).")
    pairs = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            return fail(f"override {item!r} is not of the form key=value.")
        pairs.append(key.lstrip("+"))
    unsafe = [k for k in pairs if k not in SAFE_KEYS]
    if unsafe and not force:
        return fail(f"override(s) {', '.join(unsafe)} would change what this run trained so far; "
                    f"allowed without --force: {', '.join(sorted(SAFE_KEYS))}.")
    cfg = OmegaConf.load(path / "config.yaml")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))

    from expkit.checkpoint import CheckpointError, load_latest
    from expkit.logs import setup_logging

    setup_logging(None)  # checkpoint warnings reach the console before the run's log opens
    try:
        state, ckpt_path = load_latest(path / "checkpoints")
    except CheckpointError as e:
        return fail(str(e))
    rundir = RunDir(path)
    meta = rundir.read_meta()
    saved_world, world = state.get("world_size", 1), cfg.trainer.get("devices", 1)
    if saved_world != world and not force:
        return fail(f"trainer.devices: the run trained with {saved_world} process(es) and would resume with "
                    f"{world}; the data order and RNG streams would differ. Pass --force to accept that.")
    git_now, _ = git_info(meta.get("cwd"))
    recorded = meta.get("git", {})
    git_warning = None
    if git_now.get("commit") != recorded.get("commit") or git_now.get("dirty"):
        git_warning = (f"code differs from the run's: recorded commit {recorded.get('commit')}, now "
                       f"{git_now.get('commit')}{' with uncommitted changes' if git_now.get('dirty') else ''}")
        if strict:
            return fail(git_warning + " (--strict)")
        print(f"expkit resume: warning: {git_warning}", file=sys.stderr)
    epochs = cfg.trainer.get("epochs")
    if meta.get("status") == "completed" and state["epoch"] >= epochs:
        return fail(f"the run already completed its {epochs} epochs; extend it with trainer.epochs=N (N > {epochs}).")

    resumes = list(meta.get("resumes", []))
    resumes.append({"at": now(), "checkpoint": ckpt_path.name, "step": state["step"], "overrides": overrides,
                    "git": {k: git_now.get(k) for k in ("commit", "dirty")}, "git_warning": git_warning,
                    "forced": force})
    rundir.update_meta(status="running", ended=None, resumes=resumes)
    if overrides:
        write_atomic(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        execute(cfg, path, overrides, discard_on_bad_input=False,
                resume={"state": state, "path": ckpt_path})
    except RunFailed as e:
        print(f"expkit: {e}", file=sys.stderr)
        return e.exit_code
    return 0
