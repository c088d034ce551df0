"""Provenance: which code (git commit, uncommitted diff, untracked files) and which
environment (host, versions of every installed distribution, devices) produced a run.

The commit, `git.diff` and `untracked.json` together rebuild the exact tree a run ran
from (`expkit reproduce` does), except other run folders, which are outputs, not code."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

UNTRACKED_HEADER = "# Untracked files"  # git.diff: what follows names the untracked files
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's id of the empty tree
# The command as typed, while `expkit train` runs: Hydra is handed an argv of its own (no
# `train`, plus the run folder expkit claimed), which is not a command to run again.
_typed_command: list[str] | None = None
# The first words of a recorded command that name an expkit command; a record without one
# (made before the subcommand was kept, or Hydra's argv) was an `expkit train`.
COMMAND_WORDS = ("train", "resume", "lesson", "_worker")


@contextlib.contextmanager
def typed_command(command: list[str]) -> Iterator[None]:
    """Within the block, `command_line()` is `command` (`expkit train`'s, as typed)."""
    global _typed_command
    before, _typed_command = _typed_command, list(command)
    try:
        yield
    finally:
        _typed_command = before


def command_line() -> list[str]:
    """The command to record in meta.json and sweep.json: as typed (`expkit train ...`),
    else this process's own (`expkit resume ...`, a script calling expkit.train)."""
    return list(_typed_command if _typed_command is not None else sys.argv)


def shown_command(command: list[str]) -> str:
    """A recorded command as one line to type again: `expkit train -m optim=adam,adamw`."""
    args = [str(a) for a in command[1:]]
    if not args or args[0] not in COMMAND_WORDS:
        args = ["train", *args]
    return " ".join(["expkit", *(shlex.quote(a) for a in args)])


def git_info(cwd: str | os.PathLike | None = None,
             exclude: tuple[str | os.PathLike, ...] = ()) -> tuple[dict[str, Any], str | None]:
    """(git facts for meta.json, the diff text when the tree is dirty). Untracked files
    under `exclude` (the runs root, the run folder: expkit's own output) do not make the
    tree dirty; a note says how many were left out and how to ignore them for good."""
    try:
        import git
    except ImportError:  # gitpython needs the git binary; say so instead of failing
        return {"repo": None, "note": "gitpython or the git executable is unavailable"}, None
    try:
        repo = git.Repo(cwd or os.getcwd(), search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return {"repo": None, "note": "not inside a git repository"}, None
    try:
        return _git_facts(repo, exclude)
    finally:
        repo.close()  # ends the `git cat-file` processes it keeps, so none outlives the command


def _git_facts(repo, exclude: tuple[str | os.PathLike, ...]) -> tuple[dict[str, Any], str | None]:
    info: dict[str, Any] = {"repo": repo.working_tree_dir}
    has_head = repo.head.is_valid()
    info["commit"] = repo.head.commit.hexsha if has_head else None
    info["branch"] = None if repo.head.is_detached else repo.active_branch.name
    info["remote"] = next((r.url for r in repo.remotes), None)
    untracked = repo.untracked_files
    root = Path(repo.working_tree_dir).resolve()
    skip = [Path(e).resolve() for e in exclude]
    output = [u for u in untracked if any((root / u).resolve().is_relative_to(e) for e in skip)]
    if output:
        untracked = [u for u in untracked if u not in set(output)]
        info["note"] = (f"{len(output)} untracked file(s) of expkit's own output left out of the dirty check; "
                        "add runs/ to .gitignore to ignore them for good")
    # Against the empty tree when there is no commit yet, so the diff shows everything.
    diff = repo.git.diff("HEAD" if has_head else EMPTY_TREE,
                         "--binary") if has_head or repo.index.entries else ""
    info["dirty"] = bool(diff) or bool(untracked) or not has_head
    info["untracked"] = untracked
    if not info["dirty"]:
        return info, None
    text = diff + ("\n" if diff and not diff.endswith("\n") else "")
    if untracked:
        text += f"{UNTRACKED_HEADER} (not in the diff above; their content: untracked.json):\n"
        text += "".join(f"#   {u}\n" for u in untracked)
    return info, text


def tracked_diff(text: str | None) -> str:
    """The `git diff HEAD` part of a git.diff text (without the untracked files' names)."""
    if not text:
        return ""
    return text.split(UNTRACKED_HEADER, 1)[0].strip()


def _in_run_folder(path: Path, root: Path, known: dict[Path, bool], is_run: Callable[[Path], bool]) -> bool:
    """Whether `path` lies inside an expkit run folder (`is_run`) below `root`."""
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            return False
        if parent not in known:
            known[parent] = is_run(parent)
        if known[parent]:
            return True
    return False


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (a file may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def untracked_files(repo_root: str | os.PathLike, names: list[str], cap_bytes: int, is_run: Callable[[Path], bool],
                    exclude: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """What rebuilds the untracked, non-ignored files: each one's path, size and sha256,
    and the text itself for text files up to `cap_bytes`. Files inside run folders (those
    `is_run` tells; and inside `exclude`, the run's own folder) are outputs, not code, and
    are left out."""
    root = Path(repo_root)
    skip = Path(exclude).resolve() if exclude is not None else None
    known: dict[Path, bool] = {}
    out = []
    for name in names:
        path = root / name
        if skip is not None and (path.resolve() == skip or skip in path.resolve().parents):
            continue
        if _in_run_folder(path, root, known, is_run) or not path.is_file():
            continue
        size = path.stat().st_size
        entry: dict[str, Any] = {"path": name, "size": size, "sha256": sha256_file(path)}
        if size > cap_bytes:  # never read whole: an untracked data file may be large
            entry["not_stored"] = f"larger than trainer.untracked_max_kb ({cap_bytes} bytes)"
            out.append(entry)
            continue
        data = path.read_bytes()
        if b"\0" in data:
            entry["not_stored"] = "binary"
        else:
            try:
                entry["text"] = data.decode("utf-8")
            except UnicodeDecodeError:
                entry["not_stored"] = "binary"
        out.append(entry)
    return out


def packages() -> dict[str, str]:
    """Every installed distribution -> its version (importlib.metadata), sorted by name."""
    return dict(_packages())


@functools.lru_cache(maxsize=1)
def _packages() -> dict[str, str]:
    # Read once per process: a sweep's jobs share it (every distribution's metadata costs a
    # quarter of a second to read, and nothing installs packages under a running sweep).
    import importlib.metadata

    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def packages_text(found: dict[str, str]) -> str:
    """The package list as `name==version` lines, a file pip can install from."""
    return "".join(f"{name}=={version}\n" for name, version in found.items())


def read_packages(text: str) -> dict[str, str]:
    return dict(line.split("==", 1) for line in text.splitlines() if "==" in line)


def _unimported_version(module: str) -> str | None:
    """A package's __version__ without importing it (importing torchvision just to ask
    costs about as much as importing torch): torch and torchvision keep it, build tag and
    all (e.g. 0.19.0+cu121), in version.py; otherwise the installed distribution's."""
    import importlib.metadata
    import importlib.util
    import re

    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or []:
        path = Path(folder) / "version.py"
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", path.read_text(), re.M) if path.is_file() else None
        if found:
            return found.group(1)
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return getattr(__import__(module), "__version__", "?")


# Beside torch & co, the distributions a run's numbers depend on most: scikit-learn ships
# the default data, pillow decodes folder images, tensorboard writes the curves.
SHORT_LIST_DISTRIBUTIONS = ("scikit-learn", "pillow", "tensorboard", "optuna")


def versions() -> dict[str, Any]:
    """The short list for meta.json; packages.txt holds every distribution."""
    import importlib.metadata

    from expkit.version import __version__

    out = {"python": platform.python_version(), "expkit": __version__}
    for module in ("torch", "torchvision", "hydra", "omegaconf", "numpy"):
        mod = sys.modules.get(module)
        version = getattr(mod, "__version__", "?") if mod is not None else _unimported_version(module)
        if version is not None:
            out[module if module != "hydra" else "hydra-core"] = version
    for dist in SHORT_LIST_DISTRIBUTIONS:  # read from metadata: importing them would be slow
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def environment() -> dict[str, Any]:
    import torch

    env = {"host": socket.gethostname(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


# ------------------------------------------------------------- reading provenance back
def run_git(repo: str | os.PathLike, *args: str) -> subprocess.CompletedProcess:
    """`git -C repo ARGS`, its output as text; never raises on git's own failure."""
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except OSError as e:  # no git executable
        return subprocess.CompletedProcess(["git", *args], 127, "", str(e))


def repo_root(cwd: str | os.PathLike) -> str | None:
    """The top folder of the git repository holding `cwd`; None outside one (or without git)."""
    proc = run_git(cwd, "rev-parse", "--show-toplevel")
    return proc.stdout.strip() if proc.returncode == 0 else None


def has_commit(repo: str | os.PathLike, commit: str) -> bool:
    return run_git(repo, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def diff_files(text: str | None) -> list[str]:
    """The files a git.diff changes (the tracked part)."""
    return [m.group(2) for m in re.finditer(r"^diff --git a/(.*?) b/(.*)$", tracked_diff(text), re.M)]
