"""Provenance: which code (git commit and uncommitted diff) and which environment
(host, versions, devices) produced a run."""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any


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
    diff = repo.git.diff("HEAD" if has_head else "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
                         "--binary") if has_head or repo.index.entries else ""
    info["dirty"] = bool(diff) or bool(untracked) or not has_head
    info["untracked"] = untracked
    if not info["dirty"]:
        return info, None
    text = diff + ("\n" if diff and not diff.endswith("\n") else "")
    if untracked:
        text += "# Untracked files (not in the diff above):\n" + "".join(f"#   {u}\n" for u in untracked)
    return info, text


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


def versions() -> dict[str, Any]:
    import expkit

    out = {"python": platform.python_version(), "expkit": expkit.__version__}
    for module in ("torch", "torchvision", "hydra", "omegaconf", "numpy"):
        mod = sys.modules.get(module)
        version = getattr(mod, "__version__", "?") if mod is not None else _unimported_version(module)
        if version is not None:
            out[module if module != "hydra" else "hydra-core"] = version
    return out


def environment() -> dict[str, Any]:
    import torch

    env = {"host": socket.gethostname(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env
