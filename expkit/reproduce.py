"""`expkit reproduce RUN_DIR [--check]`: make a recorded run again and compare.

    check     a completed run folder; its commit in the repository that holds the
              current folder; the data it read still has the recorded fingerprint
    rebuild   a temporary git worktree at the recorded commit + git.diff + the untracked
              files of untracked.json (binary or large ones copied from the repository
              when their sha256 matches)
    re-run    the run's config.yaml, on CPU, in a new process whose current folder is
              the worktree (so the project's own code, and expkit's when the repository
              is expkit, is the recorded one)
    compare   final weights (bitwise), metrics (exactly), package versions, data
              fingerprint; the report is also written to RUN_DIR/reproduce.json

Exit status: 0 reproduces, 1 differs, 2 cannot (not a run folder, no git, the commit is
not in this repository, the data changed, the tree cannot be rebuilt): a one-line
message, and nothing changed. With --check only the first two steps run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expkit.app import Stopped
from expkit.config.imports import installed
from expkit.errors import ConfigError
from expkit.run.folder import RunDir, now, write_json
from expkit.run.provenance import has_commit, read_packages, repo_root, run_git, tracked_diff

EXIT_REPRODUCES, EXIT_DIFFERS = 0, 1
# The re-run: the recorded config in the worktree's code, through the run lifecycle.
CHILD = """import sys
from pathlib import Path
from omegaconf import OmegaConf
from expkit.app import execute
from expkit.data.sources import reading_only
from expkit.errors import RunFailed
try:
    with reading_only(training=True):  # a received config makes no download or cache outside the worktree
        execute(OmegaConf.load(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:], discard_on_bad_input=False)
except RunFailed as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


@dataclass
class Result:
    run_dir: Path
    status: str = "reproduces"  # reproduces, differs, ready (--check)
    matched: list[str] = field(default_factory=list)
    differed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rerun_dir: Path | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_DIFFERS if self.differed else EXIT_REPRODUCES

    def text(self) -> str:
        lines = [f"expkit reproduce {self.run_dir}: {self.status}"]
        lines += [f"  same:    {m}" for m in self.matched]
        lines += [f"  differs: {d}" for d in self.differed]
        lines += [f"  note:    {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {"at": now(), "status": self.status, "matched": self.matched, "differed": self.differed,
                "notes": self.notes, "rerun_dir": str(self.rerun_dir) if self.rerun_dir else None}


def _read_run(run_dir: Path) -> tuple[dict[str, Any], str]:
    rundir = RunDir(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"RUN_DIR {str(run_dir)!r} does not exist.")
    if not run_dir.is_dir() or not rundir.is_run() or not rundir.config.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not an expkit run folder (it has no {rundir.meta_path.name} and "
                          f"{rundir.config.name}).")
    meta = rundir.meta_or_empty()
    if not meta:
        raise ConfigError(f"{str(run_dir)!r}: its {rundir.meta_path.name} cannot be read.")
    if meta.get("status") != "completed":
        raise ConfigError(f"{str(run_dir)!r} has status {meta.get('status')!r}; only a completed run can be "
                          "reproduced (its final weights and metrics are what the re-run is compared with).")
    return meta, rundir.config_text()


def _repository(meta: dict[str, Any]) -> tuple[str, str]:
    """(the repository holding the current folder, the recorded commit), or ConfigError."""
    if not isinstance(meta.get("git"), dict):
        raise ConfigError("meta.json: its git record is missing or not an object; the run cannot be rebuilt.")
    git = meta["git"]
    commit = git.get("commit")
    if not commit:
        raise ConfigError(f"the run recorded no git commit ({git.get('note') or 'no git facts in meta.json'}); "
                          "its code cannot be rebuilt.")
    repo = repo_root(os.getcwd())
    if repo is None:
        where = "git is not installed" if shutil.which("git") is None else f"{os.getcwd()} is not in a git repository"
        raise ConfigError(f"{where}; run expkit reproduce inside the repository the run was trained from "
                          f"({git.get('repo')}).")
    if not has_commit(repo, commit):
        raise ConfigError(f"commit {commit[:12]} of the run is not in the repository at {repo}: the run comes "
                          "from another repository, or the commit is gone (rebased away, or not fetched).")
    return repo, commit


def _rerun_config(config_yaml: str, meta: dict[str, Any]) -> Any:
    """The recorded config, on CPU, with a relative data.root made absolute (data is rarely
    in git, so it is read where the run read it)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(config_yaml)
    root = OmegaConf.select(cfg, "data.root", default=None)
    if root and not os.path.isabs(os.path.expanduser(str(root))):
        cfg.data.root = os.path.join(meta.get("cwd") or os.getcwd(), str(root))
    if "trainer" in cfg:
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.progress = "off"
    return cfg


def _check_data(cfg: Any, meta: dict[str, Any], result: Result) -> None:
    """The data the run read must still be the same examples: recompute the fingerprint."""
    recorded = (meta.get("data") or {}).get("sha256")
    if not recorded:
        result.notes.append("data fingerprint: not recorded by the run (it predates them); not checked")
        return
    from expkit.config.schema import validate
    from expkit.data import build_data
    from expkit.data.sources import reading_only

    try:
        typed = validate(cfg)
        with reading_only():
            now_sha = build_data(typed["data"], typed["seed"], task=typed["task"].name).info.get("sha256")
    except ConfigError as e:
        raise ConfigError(f"the run's data cannot be read any more: {str(e).splitlines()[0]}") from None
    if now_sha != recorded:
        raise ConfigError(f"the data changed: data {typed['data'].name!r} now has fingerprint {now_sha[:12]}, the "
                          f"run recorded {recorded[:12]} (meta.json data.sha256); the run cannot be made again.")
    result.matched.append(f"data fingerprint {recorded[:12]} ({typed['data'].name})")


def _rebuild_tree(repo: str, commit: str, run_dir: Path, tree: Path, result: Result, start: Path,
                  trust: bool) -> None:
    """The recorded code in `tree`: worktree at the commit, git.diff applied, untracked files.
    `start`: where in the tree the re-run starts. Without `trust` (--trust-code), code is
    taken from the run folder only where the repository holds the same now."""
    recorded = RunDir(run_dir)
    diff = recorded.read_git_diff()
    patch = tracked_diff(diff) if diff else ""
    untracked = recorded.read_untracked()
    targets = [_untracked_target(tree, start, entry) for entry in untracked]  # all checked before any write
    if not trust:
        _check_foreign_code(repo, patch, untracked)
    proc = run_git(repo, "worktree", "add", "--detach", str(tree), commit)
    if proc.returncode != 0:
        raise ConfigError(f"git worktree add failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    if patch:
        patch_file = tree.parent / recorded.git_diff.name
        patch_file.write_text(patch + "\n")
        proc = run_git(tree, "apply", "--binary", "--whitespace=nowarn", str(patch_file))
        if proc.returncode != 0:
            raise ConfigError(f"the run's git.diff does not apply to commit {commit[:12]}: "
                              f"{(proc.stderr.strip().splitlines() or ['?'])[0]}")
    for entry, target in zip(untracked, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or not target.parent.resolve().is_relative_to(tree.resolve()):
            # a link in the tree (committed, or made by the applied diff) would lead the write out
            raise ConfigError(f"untracked.json: path {entry['path']!r} leads through a link out of the worktree; "
                              "refusing to write it.")
        if "text" in entry:
            target.write_bytes(entry["text"].encode("utf-8"))
            continue
        source = Path(repo) / entry["path"]
        if not source.is_file() or hashlib.sha256(source.read_bytes()).hexdigest() != entry["sha256"]:
            raise ConfigError(f"untracked file {entry['path']} ({entry.get('not_stored')}, {entry['size']} bytes) "
                              f"is not stored in the run folder, and {source} is missing or differs from it "
                              f"(sha256 {entry['sha256'][:12]}).")
        shutil.copy2(source, target)
    what = f"commit {commit[:12]}" + (" + git.diff" if patch else "")
    what += f" + {len(untracked)} untracked file(s)" if untracked else ""
    result.matched.append(f"code rebuilt: {what}")
    named = diff.count("\n#   ")
    if named and not untracked:
        result.notes.append(f"git.diff names {named} untracked file(s) whose content the run did not record "
                            "(untracked.json); they are not in the rebuilt tree")


def _run_child(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The re-run, ended with this process: a SIGTERM, SIGINT, SIGHUP or SIGUSR1 to `expkit reproduce`
    is passed on to it (it checkpoints and stops) and raised here as Stopped, so the
    worktree is removed and nothing trains on without a parent."""
    import signal
    import threading

    # A session of its own: a Ctrl-C in the terminal reaches it once, from here, not twice.
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), start_new_session=True)

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, stop) for s in handled} if main else {}
    try:
        out, err = proc.communicate()
    except Stopped as e:
        for s, handler in previous.items():
            signal.signal(s, handler)
        previous = {}
        proc.send_signal(getattr(signal, e.signal_name))  # the same signal: the re-run ends as it would
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _untracked_target(tree: Path, start: Path, entry: Any) -> Path:
    """Where in the tree an untracked.json entry goes, refused unless its path stays inside
    the tree, and unless it stands in for no installed or standard module in the re-run
    (a file named like one where the re-run starts would be imported instead of it)."""
    import importlib.util

    name = entry.get("path") if isinstance(entry, dict) else None
    rel = Path(name) if isinstance(name, str) and name else None
    if (rel is None or rel.is_absolute() or ".." in rel.parts or not isinstance(entry.get("sha256"), str)
            or not (tree / rel).resolve().is_relative_to(tree.resolve())):
        raise ConfigError(f"untracked.json: path {name!r} is not allowed; expected a path relative to the "
                          "repository, without '..', with its sha256.")
    target = tree / rel
    for folder in {tree, start}:
        if not target.is_relative_to(folder):
            continue
        first = target.relative_to(folder).parts
        module = first[0].removesuffix(".py") if first[0].endswith(".py") or len(first) > 1 else None
        if module and module.isidentifier():
            spec = importlib.util.find_spec(module) if module not in sys.modules else sys.modules[module].__spec__
            origin = getattr(spec, "origin", None) if spec is not None else None
            if spec is not None and (origin in (None, "built-in", "frozen") or installed(Path(origin).resolve())):
                raise ConfigError(f"untracked.json: path {name!r} would stand in for the installed module {module} "
                                  "in the re-run; refusing to write it.")
    return target


def _check_foreign_code(repo: str, patch: str, untracked: list[dict[str, Any]]) -> None:
    """Code of the run folder's own (git.diff, untracked files' text) goes into the re-run
    only where the repository holds the same code now, or with --trust-code."""
    from expkit.run.provenance import git_info

    if patch:
        _, now = git_info(repo)
        if tracked_diff(now) != patch:
            raise ConfigError("the run's git.diff holds changes this repository does not have now; the re-run would "
                              "run them. Pass --trust-code to rebuild with them.")
    for entry in untracked:
        if "text" not in entry:
            continue  # copied from the repository only when its sha256 matches (below)
        here = Path(repo) / entry["path"]
        if not here.is_file() or hashlib.sha256(here.read_bytes()).hexdigest() != entry["sha256"] or \
                hashlib.sha256(entry["text"].encode("utf-8")).hexdigest() != entry["sha256"]:
            raise ConfigError(f"untracked file {entry['path']}: the run folder holds a text this repository does "
                              "not have now; the re-run would run it. Pass --trust-code to rebuild with it.")


def _weights(path: Path) -> dict[str, Any] | None:
    """The final weights of a run folder (last.pt), read with the checkpoint's own checks."""
    from expkit.run.checkpoint import LAST, CheckpointError, load_file, named_file

    file = named_file(RunDir(path).checkpoints, LAST)
    if not file.is_file():
        return None
    try:
        return load_file(file).model
    except CheckpointError as e:
        raise ConfigError(f"cannot compare the weights: {e}") from None


def _compare(run_dir: Path, rerun: Path, meta: dict[str, Any], result: Result) -> None:
    import torch

    old, new = _weights(run_dir), _weights(rerun)
    if old is None:
        result.notes.append("weights: the run wrote no checkpoint (trainer.checkpoint=false); not compared")
    elif new is None:
        result.differed.append("weights: the re-run wrote no checkpoint")
    else:
        unequal = [k for k in old if k not in new or old[k].dtype != new[k].dtype or old[k].shape != new[k].shape
                   or not torch.equal(old[k], new[k])]
        unequal += [k for k in new if k not in old]
        if unequal:
            result.differed.append(f"weights: {len(unequal)} of {len(old)} tensors differ ({', '.join(unequal[:5])})")
        else:
            result.matched.append(f"final weights bitwise equal ({len(old)} tensors)")
    old_m, new_m = RunDir(run_dir).read_metrics(), RunDir(rerun).read_metrics()
    keys = [k for k in old_m if isinstance(old_m[k], (int, float))]
    bad = [f"{k} {old_m[k]} -> {new_m.get(k)}" for k in keys if new_m.get(k) != old_m[k]]
    if bad:
        result.differed.append("metrics: " + "; ".join(bad))
    else:
        result.matched.append("metrics: " + ", ".join(f"{k} {old_m[k]:.4g}" for k in keys if "/" in k))
    new_meta = RunDir(rerun).meta_or_empty()
    old_sha, new_sha = (meta.get("data") or {}).get("sha256"), (new_meta.get("data") or {}).get("sha256")
    if old_sha and new_sha and old_sha != new_sha:
        result.differed.append(f"data fingerprint {old_sha[:12]} -> {new_sha[:12]}")
    _compare_packages(run_dir, rerun, meta, new_meta, result)
    if (meta.get("environment") or {}).get("cuda_available") and result.differed:
        result.notes.append("the run may have trained on a GPU and the re-run trains on CPU: bitwise equal "
                            "results are only expected for runs trained on CPU")


def _compare_packages(run_dir: Path, rerun: Path, meta: dict[str, Any], new_meta: dict[str, Any],
                      result: Result) -> None:
    old_file, new_file = RunDir(run_dir).packages, RunDir(rerun).packages
    if old_file.is_file():
        old = read_packages(old_file.read_text())
        new = read_packages(new_file.read_text()) if new_file.is_file() else {}
        what = "every installed package"
    else:
        old, new, what = meta.get("versions") or {}, new_meta.get("versions") or {}, "package versions in meta.json"
    changed = [f"{k} {old.get(k, '-')} -> {new.get(k, '-')}" for k in sorted({*old, *new}, key=str.lower)
               if old.get(k) != new.get(k)]
    if changed:
        # Reported beside the verdict: they explain a difference, they are not one.
        result.notes.append(f"package versions differ ({len(changed)}): " + "; ".join(changed[:10])
                            + ("; ..." if len(changed) > 10 else ""))
    else:
        result.matched.append(f"{what}: same versions ({len(old)})")


def reproduce(run_dir: str | os.PathLike, check: bool = False,
              on_rerun: Callable[[Path], None] | None = None, trust: bool = False) -> Result:
    """Rebuild the run's code, re-run it and compare (see the module's docstring). Raises
    ConfigError when it cannot (exit status 2); Result.exit_code is 0 or 1 otherwise.
    `on_rerun(folder)` is called as the re-run starts in `folder`. `trust` (--trust-code):
    rebuild with the run folder's git.diff and untracked files even where this repository
    does not hold the same code now."""
    path = Path(run_dir)
    meta, config_yaml = _read_run(path)
    repo, commit = _repository(meta)
    result = Result(run_dir=path)
    if not check:  # before the re-run, not after it: its report goes into the run folder
        RunDir(path).refuse_links()
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{path}: the run folder is not writable, and reproduce writes its report "
                              f"({RunDir(path).reproduce_report.name}) there; use --check, or a copy of the folder.")
    cfg = _rerun_config(config_yaml, meta)
    from expkit.config.imports import check_trust, using

    with using():  # checking the data builds it, which runs own data code: the same rules as eval
        check_trust(cfg, meta, path, trust, is_run=RunDir.holds_run)
        _check_data(cfg, meta, result)
    tmp = Path(tempfile.mkdtemp(prefix="expkit-reproduce-"))
    tree = tmp / "tree"
    git = meta.get("git") or {}
    rel = os.path.relpath(meta.get("cwd") or git.get("repo") or ".", git.get("repo") or ".")
    start = tree / rel if not rel.startswith("..") and not os.path.isabs(rel) else tree
    try:
        _rebuild_tree(repo, commit, path, tree, result, start, trust)
        if check:
            result.status = "ready: the code rebuilds and the data matches (--check: not re-run)"
            return result
        from omegaconf import OmegaConf

        rerun = tmp / "run"
        rerun.mkdir()
        if on_rerun is not None:
            on_rerun(rerun)
        config_file = tmp / "rerun.yaml"  # the config the re-run starts from
        OmegaConf.save(cfg, config_file)
        cwd = start if start.resolve().is_relative_to(tree.resolve()) and start.is_dir() else tree
        result.rerun_dir = rerun
        try:
            proc = _run_child([sys.executable, "-c", CHILD, str(config_file), str(rerun),
                               *(meta.get("overrides") or [])], cwd)
        except Stopped as e:
            result.status, result.rerun_dir = f"interrupted by {e.signal_name}: the re-run was stopped", None
            write_json(RunDir(path).reproduce_report, result.as_dict())
            raise
        if proc.returncode == 2:  # the re-run refused its input (data gone, more devices than here)
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise ConfigError(f"cannot re-run {path}: {tail}")
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            result.differed.append(f"the re-run exited with status {proc.returncode}: {tail}")
        else:
            _compare(path, rerun, meta, result)
        result.status = "reproduces" if not result.differed else "differs"
        if result.differed:  # kept to look into: the re-run's train.log, checkpoints, meta.json
            result.notes.append(f"the re-run's folder is kept: {rerun}")
        RunDir(path).refuse_links()
        write_json(RunDir(path).reproduce_report, result.as_dict())
        return result
    finally:
        if run_git(repo, "worktree", "remove", "--force", str(tree)).returncode != 0 and tree.exists():
            shutil.rmtree(tree, ignore_errors=True)  # then only our entry is stale; the user's are left alone
            run_git(repo, "worktree", "prune")
        if not (result.rerun_dir and result.differed):
            shutil.rmtree(tmp, ignore_errors=True)
