"""`expkit reproduce`: one real run in a real, dirty git repository, made again from its
record (commit + git.diff + untracked files) and compared; then every way it cannot be."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from conftest import FAST, git, make_git_repo, only_run, run_cli

from expkit.cli import main
from expkit.errors import ConfigError
from expkit.reproduce import Result, _compare
from expkit.run.provenance import sha256_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(a dirty repository, the run trained in it)."""
    repo = make_git_repo(tmp_path_factory.mktemp("reproduce") / "project")
    (repo / "notes.txt").write_text("first\nchanged, not committed\n")
    (repo / "mynet.py").write_text("WIDTH = 32\n")  # untracked
    run_cli(["train", *FAST, "model=mlp", "model.width=32"], cwd=repo, check=True)
    return repo, only_run(repo)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_the_run_recorded_its_untracked_files_packages_and_data(trained):
    _, run = trained
    untracked = json.loads((run / "untracked.json").read_text())
    assert untracked["max_bytes"] == 256 * 1024
    assert [(f["path"], f["text"]) for f in untracked["files"]] == [("mynet.py", "WIDTH = 32\n")]
    assert "notes.txt" in (run / "git.diff").read_text()
    assert f"torch=={version('torch')}" in (run / "packages.txt").read_text().splitlines()
    data = json.loads((run / "meta.json").read_text())["data"]
    assert {k: data[k] for k in ("name", "sizes", "split_seed", "sample", "fingerprint_of")} == {
        "name": "digits", "sizes": {"train": 128, "val": 32, "test": 32}, "split_seed": 0, "sample": 128,
        "fingerprint_of": "examples"}
    assert len(data["sha256"]) == 64 and data["source"].endswith("digits.csv.gz")


def test_a_run_reproduces_bit_for_bit(trained, monkeypatch, capsys):
    repo, run = trained
    status_before = git(repo, "status", "--porcelain")
    monkeypatch.chdir(repo)
    assert main(["reproduce", str(run)]) == 0
    out = capsys.readouterr().out
    commit = git(repo, "rev-parse", "HEAD")
    assert out.startswith(f"expkit reproduce {run}: reproduces\n")
    assert f"same:    code rebuilt: commit {commit[:12]} + git.diff + 1 untracked file(s)" in out
    assert "same:    final weights bitwise equal" in out and "differs:" not in out
    sha = json.loads((run / "meta.json").read_text())["data"]["sha256"]
    assert f"same:    data fingerprint {sha[:12]} (digits)" in out
    assert "same:    every installed package: same versions" in out
    record = json.loads((run / "reproduce.json").read_text())
    assert record["status"] == "reproduces" and record["differed"] == []
    # The temporary worktree is gone; the repository's files are as they were.
    assert git(repo, "worktree", "list").count("\n") == 0
    assert git(repo, "status", "--porcelain") == status_before


def test_check_only_rebuilds_and_checks_the_data(trained, monkeypatch, capsys):
    repo, run = trained
    monkeypatch.chdir(repo)
    assert main(["reproduce", str(run), "--check"]) == 0
    out = capsys.readouterr().out
    assert "ready: the code rebuilds and the data matches" in out and "weights" not in out


def test_a_different_result_is_exit_1(trained, tmp_path):
    _, run = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps(dict(metrics, **{"val/acc": metrics["val/acc"] + 0.5})))
    state = torch.load(copy / "checkpoints" / "last.pt", weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 1e-6
    torch.save(state, copy / "checkpoints" / "last.pt")
    meta = json.loads((run / "meta.json").read_text())
    # The weights are read with the checkpoint's checks: a file that no longer matches its
    # checksum is not compared as if it were the run's.
    with pytest.raises(ConfigError, match="last.pt does not match its checksum"):
        _compare(copy, run, meta, Result(run_dir=copy))
    (copy / "checkpoints" / "last.pt.sha256").write_text(sha256_file(copy / "checkpoints" / "last.pt"))
    result = Result(run_dir=copy)
    _compare(copy, run, meta, result)  # the original stands in for the re-run
    assert result.exit_code == 1
    assert result.differed[0].startswith(f"weights: 1 of {len(state['model'])} tensors differ ({first})")
    assert result.differed[1].startswith(f"metrics: val/acc {metrics['val/acc'] + 0.5} -> {metrics['val/acc']}")


def edited(run: Path, tmp_path: Path, **fields) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "meta.json").read_text())
    for key, value in fields.items():
        target, _, sub = key.partition("__")
        if sub:
            meta[target][sub] = value
        else:
            meta[target] = value
    (copy / "meta.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize("case, message", [
    ("not a run", "is not an expkit run folder (it has no meta.json and config.yaml)."),
    ("not completed", "has status 'failed'; only a completed run can be reproduced"),
    ("commit gone", "commit 0123456789ab of the run is not in the repository at"),
    ("data changed", "the data changed: data 'digits' now has fingerprint"),
    ("another repository", "of the run is not in the repository at"),
    ("no git", "is not in a git repository; run expkit reproduce inside the repository"),
])
def test_cannot_reproduce_is_one_line_exit_2_and_nothing_changes(trained, tmp_path, monkeypatch, capsys, case,
                                                                 message):
    repo, run = trained
    cwd = repo
    target = run
    if case == "not a run":
        target = tmp_path
    elif case == "not completed":
        target = edited(run, tmp_path, status="failed")
    elif case == "commit gone":
        target = edited(run, tmp_path, git__commit="0123456789abcdef0123456789abcdef01234567")
    elif case == "data changed":
        target = edited(run, tmp_path, data__sha256="f" * 64)
    elif case == "another repository":
        cwd = tmp_path / "other"
        cwd.mkdir()
        git(cwd, "init", "-q")
    elif case == "no git":
        cwd = tmp_path
    before, worktrees = snapshot(target), git(repo, "worktree", "list")
    monkeypatch.chdir(cwd)
    assert main(["reproduce", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("expkit reproduce: ") and message in err and err.count("\n") == 1
    assert snapshot(target) == before and git(repo, "worktree", "list") == worktrees
