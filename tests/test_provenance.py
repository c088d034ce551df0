"""Complete provenance, in-process on real git repositories in tmp dirs: untracked files'
content (with the size cap), every package, the data fingerprint; and that the commit,
git.diff and untracked.json rebuild the exact tree."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import git

from expkit.config.schema import DataConfig, FolderDataConfig
from expkit.data import build_data
from expkit.errors import ConfigError
from expkit.run.folder import RunDir
from expkit.run.provenance import diff_files, read_packages, run_git


def dirty_tree(repo: Path) -> dict[str, bytes]:
    """Make `repo` dirty in every way: a changed and a deleted tracked file, untracked text,
    binary and large files (one in a new folder), an earlier run folder; the files that make up
    the code, path -> bytes."""
    (repo / "notes.txt").write_text("first\nchanged\n")
    (repo / "gone.txt").write_text("x\n")
    git(repo, "add", "gone.txt")
    git(repo, "commit", "-qm", "second")
    (repo / "gone.txt").unlink()
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mynet.py").write_text("WIDTH = 7\n")
    (repo / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (repo / "big.txt").write_text("y" * 3000)
    old_run = repo / "results" / "old-run"  # not ignored, but a run folder: an output, not code
    old_run.mkdir(parents=True)
    (old_run / "meta.json").write_text("{}")
    (old_run / "metrics.json").write_text("{}")
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*")
            if p.is_file() and ".git" not in p.parts and "results" not in p.parts}


def write(repo: Path, cap: int = 2048) -> RunDir:
    rundir = RunDir(repo / "runs" / "r1")
    rundir.write_provenance("seed: 0\n", command=["expkit", "train"], overrides=[], world_size=1, cwd=str(repo),
                            untracked_max_bytes=cap)
    return rundir


def test_untracked_files_are_kept_with_content_or_size_and_sha256(git_repo):
    dirty_tree(git_repo)
    rundir = write(git_repo, cap=2048)
    record = json.loads((rundir.path / "untracked.json").read_text())
    files = {f["path"]: f for f in record["files"]}
    assert record["max_bytes"] == 2048
    assert set(files) == {"pkg/mynet.py", "blob.bin", "big.txt"}  # results/old-run is a run folder
    assert files["pkg/mynet.py"]["text"] == "WIDTH = 7\n"
    assert files["blob.bin"]["not_stored"] == "binary" and "text" not in files["blob.bin"]
    assert files["blob.bin"]["sha256"] == hashlib.sha256(bytes(range(256)) * 4).hexdigest()
    assert files["blob.bin"]["size"] == 1024
    assert files["big.txt"]["not_stored"] == "larger than trainer.untracked_max_kb (2048 bytes)"
    assert files["big.txt"]["size"] == 3000
    diff = (rundir.path / "git.diff").read_text()
    assert diff_files(diff) == ["gone.txt", "notes.txt"]
    assert "#   pkg/mynet.py" in diff


def test_commit_diff_and_untracked_files_rebuild_the_exact_tree(git_repo, tmp_path):
    from expkit.reproduce import Result, _rebuild_tree

    code = dirty_tree(git_repo)
    rundir = write(git_repo, cap=4096)  # big.txt fits; blob.bin is copied from the repository by sha256
    commit = git(git_repo, "rev-parse", "HEAD")
    git(git_repo, "stash", "-u")  # the working tree changes afterwards: the record alone must rebuild it
    git(git_repo, "checkout", "-q", "HEAD~1")
    (git_repo / "blob.bin").write_bytes(bytes(range(256)) * 4)
    tree = tmp_path / "rebuilt" / "tree"
    tree.parent.mkdir()
    result = Result(run_dir=rundir.path)
    # The diff and the untracked text are in the run folder only now: code that would run in
    # the re-run without the repository holding it, so only with --trust-code.
    with pytest.raises(ConfigError, match="--trust-code"):
        _rebuild_tree(str(git_repo), commit, rundir.path, tree, result, tree, trust=False)
    assert not tree.exists()
    try:
        _rebuild_tree(str(git_repo), commit, rundir.path, tree, result, tree, trust=True)
        rebuilt = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*")
                   if p.is_file() and p.name != ".git"}
    finally:
        run_git(git_repo, "worktree", "remove", "--force", str(tree))
    assert rebuilt == code
    assert result.matched == [f"code rebuilt: commit {commit[:12]} + git.diff + 3 untracked file(s)"]


def test_every_package_and_the_short_list(git_repo):
    rundir = write(git_repo)
    found = read_packages((rundir.path / "packages.txt").read_text())
    assert found["torch"] == version("torch") and found["numpy"] == version("numpy")
    for name in ("scikit-learn", "tensorboard", "hydra-core", "GitPython"):
        assert name in found, name
    versions = rundir.read_meta()["versions"]
    assert versions["scikit-learn"] == found["scikit-learn"]
    assert versions["tensorboard"] == found["tensorboard"]


def test_a_clean_tree_has_no_untracked_record(git_repo):
    rundir = write(git_repo)
    assert not (rundir.path / "untracked.json").exists() and not (rundir.path / "git.diff").exists()
    assert rundir.read_meta()["git"]["dirty"] is False


def test_data_fingerprint_is_over_the_examples_used():
    def sha(**kw):
        info = build_data(DataConfig(**{"name": "digits", "sample": 64, **kw}), seed=0).info
        assert info["fingerprint_of"] == "examples"
        return info["sha256"]

    first = sha()
    assert first == sha() and first == sha(batch_size=7)  # batching is not data
    assert len({first, sha(sample=65), sha(split_seed=1), sha(val_fraction=0.3)}) == 4
    # Other ranks skip it (they use the same examples as rank 0, which records it).
    assert "sha256" not in build_data(DataConfig(name="digits", sample=64), seed=0, rank=1, world_size=2).info


def test_folder_data_fingerprint_is_over_the_files(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(tmp_path / "train" / cls / f"{i}.png")
    cfg = FolderDataConfig(name="folder", root=str(tmp_path), image_size=4, batch_size=2, val_fraction=0.25)
    first = build_data(cfg, seed=0).info
    assert first["fingerprint_of"] == "files"
    assert build_data(cfg, seed=0).info["sha256"] == first["sha256"]
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "train" / "b" / "3.png")  # one pixel file changed
    assert build_data(cfg, seed=0).info["sha256"] != first["sha256"]


def test_cap_zero_stores_no_content(git_repo):
    (git_repo / "a.py").write_text("x = 1\n")
    files = json.loads((write(git_repo, cap=0).path / "untracked.json").read_text())["files"]
    assert files == [{"path": "a.py", "size": 6, "sha256": hashlib.sha256(b"x = 1\n").hexdigest(),
                      "not_stored": "larger than trainer.untracked_max_kb (0 bytes)"}]
