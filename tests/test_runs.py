"""`expkit runs` and `expkit compare`, in-process on generated run folders (the files a
run writes, made directly), and on real git repositories for the code comparison."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import EXPKIT, FAST, git, only_run, read_json, run_cli

import expkit
from expkit.cli import main
from expkit.compare import compare, curves, plot, report
from expkit.errors import ConfigError


def make_run(folder: Path, *, status="completed", optim="adamw", lr=0.001, overrides=(), metrics=None,
             started="2026-11-28T12:00:00+00:00", ended="2026-11-28T12:01:30+00:00", commit="a" * 40,
             dirty=False, data=None, extra_config=None, repo=None) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    config = {"data": {"name": "digits", "sample": None}, "model": {"arch": "cnn", "width": 64},
              "optim": {"name": optim, "lr": lr, "weight_decay": 0.01}, "trainer": {"epochs": 10}, "seed": 0,
              **(extra_config or {})}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    meta = {"git": {"commit": commit, "dirty": dirty, "repo": repo}, "overrides": list(overrides),
            "status": status, "started": started, "ended": ended, "data": data or {}}
    (folder / "meta.json").write_text(json.dumps(meta))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def root(tmp_path) -> Path:
    runs = tmp_path / "runs"
    make_run(runs / "2026-11-28" / "12-00-00", metrics={"val/acc": 0.91, "best/val/acc": 0.93, "test/acc": 0.9},
             overrides=["optim.lr=0.001"])
    make_run(runs / "2026-11-28" / "13-00-00", optim="sgd", lr=0.05, started="2026-11-28T13:00:00+00:00",
             ended="2026-11-28T13:01:30+00:00",
             metrics={"val/acc": 0.95, "best/val/acc": 0.95, "val/loss": float("nan")}, overrides=["optim=sgd"],
             dirty=True, commit="b" * 40)
    make_run(runs / "2026-11-28" / "14-00-00", status="failed", started="2026-11-28T14:00:00+00:00", ended=None)
    sweep = runs / "multirun" / "2026-11-29" / "09-00-00"
    (sweep / "sweep.json").parent.mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    for i, lr in enumerate((0.01, 0.0003)):
        make_run(sweep / f"{i}_optim.lr={lr}", lr=lr, overrides=[f"optim.lr={lr}"],
                 started=f"2026-11-29T09:0{i}:00+00:00", metrics={"val/acc": 0.8 + i / 10})
    (runs / "notes").mkdir()  # not a run folder: skipped
    return runs


def folders(rows) -> list[str]:
    return [r["folder"] for r in rows]


def test_every_run_folder_newest_first_with_sweep_jobs(root):
    rows = expkit.runs(str(root))
    sweep = "multirun/2026-11-29/09-00-00"
    assert folders(rows) == [f"{sweep}/1_optim.lr=0.0003", f"{sweep}/0_optim.lr=0.01", "2026-11-28/14-00-00",
                             "2026-11-28/13-00-00", "2026-11-28/12-00-00"]
    first = rows[-1]
    assert first["status"] == "completed" and first["duration_s"] == 90.0 and first["commit"] == "a" * 40
    assert (first["val/acc"], first["best/val/acc"], first["test/acc"]) == (0.91, 0.93, 0.9)
    assert rows[2]["duration_s"] is None and rows[2]["val/acc"] is None  # failed, no metrics.json


def test_status_where_sort_and_limit(root):
    assert folders(expkit.runs(str(root), status=["failed"])) == ["2026-11-28/14-00-00"]
    # --where reads the resolved config: optim=adamw is in no override, yet 4 runs used it.
    assert len(expkit.runs(str(root), where=["optim=adamw"])) == 4
    assert folders(expkit.runs(str(root), where=["optim.lr=1e-3"])) == ["2026-11-28/14-00-00", "2026-11-28/12-00-00"]
    assert len(expkit.runs(str(root), where=["optim=sgd,adam"])) == 1
    assert expkit.runs(str(root), where=["optim=adammw"]) == []  # a value no run has: no rows, no error
    assert expkit.runs(str(root), where=["optim=adamw", "model.width=64", "data.sample=null"], status=["completed"],
                       sort="val/acc", limit=2)[0]["val/acc"] == 0.91
    best = expkit.runs(str(root), sort="val/acc")
    assert [r["val/acc"] for r in best] == [0.95, 0.91, 0.9, 0.8, None]
    assert len(expkit.runs(str(root), sort="val/acc", limit=3)) == 3
    with pytest.raises(ConfigError, match="--sort: value 'val/acx' is not a metric of any run listed; did you "
                                          "mean val/acc\\? Their metrics: "):
        expkit.runs(str(root), sort="val/acx")


def test_table_and_json_on_the_command_line(root, capsys):
    assert main(["runs", str(root), "--status", "completed", "--sort", "val/acc"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["folder", "status", "start", "duration", "commit", "overrides", "val/acc", "best",
                                "test/acc"]
    assert lines[1].split() == ["2026-11-28/13-00-00", "completed", "2026-11-28", "13:00", "1m30s", "bbbbbbb*",
                                "optim=sgd", "0.9500", "0.9500", "-"]
    assert len(lines) == 5
    assert main(["runs", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)  # strict JSON: NaN became null
    assert rows == json.loads(json.dumps(expkit.runs(str(root))))
    assert rows[3]["metrics"]["val/loss"] is None


def test_a_resumed_run_shows_its_resumes_and_the_time_it_trained(tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "2026-11-28" / "12-00-00", overrides=["model=mlp"],
                   started="2026-11-28T12:00:00+00:00", ended="2026-11-28T15:00:30+00:00")
    meta = read_json(run / "meta.json")
    meta["resumes"] = [  # trained 60 s, paused an hour, 30 s, paused, 30 s
        {"at": "2026-11-28T13:01:00+00:00", "previous_end": "2026-11-28T12:01:00+00:00", "overrides": []},
        {"at": "2026-11-28T15:00:00+00:00", "previous_end": "2026-11-28T13:01:30+00:00",
         "overrides": ["trainer.epochs=20"]}]
    (run / "meta.json").write_text(json.dumps(meta))
    [row] = expkit.runs(str(tmp_path / "runs"))
    assert row["duration_s"] == 120.0 and row["resumes"] == 2 and row["resume_overrides"] == ["trainer.epochs=20"]
    assert main(["runs", str(tmp_path / "runs")]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert " 2m00s " in line and "model=mlp [+2 resumes: trainer.epochs=20]" in line, line
    # A resume recorded before `previous_end` existed: its pause counts, as the time up to it.
    del meta["resumes"][0]["previous_end"]
    (run / "meta.json").write_text(json.dumps(meta))
    assert expkit.runs(str(tmp_path / "runs"))[0]["duration_s"] == 60 + 3600 + 30 + 30


def test_a_resume_of_a_killed_run_ends_its_first_span_at_the_checkpoint(tmp_path):
    from expkit.run.folder import RunDir

    run = make_run(tmp_path / "run", status="running", ended=None)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "step-9.pt").write_bytes(b"x")
    when = time.mktime((2026, 11, 28, 12, 5, 0, 0, 0, -1))
    os.utime(run / "checkpoints" / "step-9.pt", (when, when))
    RunDir(run).record_resume({"at": "2026-11-28T13:00:00+00:00", "checkpoint": "checkpoints/step-9.pt"}, None)
    [entry] = read_json(run / "meta.json")["resumes"]
    assert entry["previous_end"].startswith("2026-11-28T12:05:00")


def test_runs_counts_only_the_time_a_real_resumed_run_trained(tmp_path):
    small = [*FAST, "model=mlp", "model.width=16"]
    run_cli(["train", *small], cwd=tmp_path, check=True)
    run = only_run(tmp_path)
    time.sleep(3)  # the pause between the run and its resume
    run_cli(["resume", str(run), "trainer.epochs=2"], cwd=tmp_path, check=True)
    meta = read_json(run / "meta.json")
    [entry] = meta["resumes"]
    first_end = entry["previous_end"]
    assert first_end is not None and first_end < entry["at"]

    def seconds(a: str, b: str) -> float:
        return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()

    [row] = json.loads(run_cli(["runs", "--json"], cwd=tmp_path, check=True).stdout)
    assert row["duration_s"] == seconds(meta["started"], first_end) + seconds(entry["at"], meta["ended"])
    assert row["duration_s"] <= seconds(meta["started"], meta["ended"]) - 2  # the pause is left out
    assert row["resumes"] == 1 and row["resume_overrides"] == ["trainer.epochs=2"]
    table = run_cli(["runs"], cwd=tmp_path, check=True).stdout
    assert "[+1 resume: trainer.epochs=2]" in table


def _exited(pid: int) -> None:
    """Wait until `pid` has exited, without collecting it: it stays a zombie."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def test_a_sigkilled_run_is_crashed_not_running(tmp_path):
    """A real `expkit train`, SIGKILLed: meta.json still says running, `expkit runs` says crashed:
    while it is a zombie not yet collected, once collected, and when its pid names a newer process."""
    proc = subprocess.Popen([EXPKIT, "train", *FAST, "model=mlp", "model.width=16", "trainer.epochs=100000"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    other = None
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "runs").rglob("last.pt")):  # recorded, locked, training
            assert proc.poll() is None and time.time() < deadline, "the run never wrote a checkpoint"
            time.sleep(0.1)
        run = only_run(tmp_path)

        def status() -> str:
            [row] = json.loads(run_cli(["runs", "--json"], cwd=tmp_path, check=True).stdout)
            return row["status"]

        assert status() == "running"  # its writer lives and holds the lock
        proc.send_signal(signal.SIGKILL)
        _exited(proc.pid)
        assert read_json(run / "meta.json")["status"] == "running"  # nothing could record the kill
        assert status() == "crashed"  # a zombie still answers signal 0
        proc.wait()
        assert status() == "crashed"

        # The pid reused: the lock file names a live process started after the run wrote it.
        lock = run / ".lock"
        written = lock.stat()
        started = datetime.fromisoformat(read_json(run / "meta.json")["started"]).timestamp()
        time.sleep(max(0.0, max(written.st_mtime, started) + 2.5 - time.time()))
        other = subprocess.Popen(["sleep", "60"])
        lock.write_text(f"{other.pid} on {socket.gethostname()}\n")
        os.utime(lock, ns=(written.st_atime_ns, written.st_mtime_ns))
        assert status() == "crashed"
        listed = run_cli(["runs", "--status", "crashed"], cwd=tmp_path, check=True).stdout
        assert " crashed " in listed.splitlines()[1]
    finally:
        proc.kill()
        proc.wait()
        if other is not None:
            other.kill()
            other.wait()


def test_a_live_writer_is_running_even_if_the_lock_files_clock_runs_behind(tmp_path):
    from expkit.run.folder import writer_gone

    now = datetime.now().astimezone().isoformat(timespec="seconds")
    run = make_run(tmp_path / "run", status="running", started=now, ended=None)
    lock = run / ".lock"
    lock.write_text(f"{os.getpid()} on {socket.gethostname()}\n")  # this test's process: alive, the holder
    assert not writer_gone(run)
    os.utime(lock, (time.time() - 86400, time.time() - 86400))  # a file server's clock a day behind
    assert not writer_gone(run)  # meta.json's local times say this process could have written it
    meta = read_json(run / "meta.json")
    meta["started"] = "2026-01-01T00:00:00+00:00"  # now every record predates this process: not its run
    (run / "meta.json").write_text(json.dumps(meta))
    assert writer_gone(run)


@pytest.mark.parametrize("args, message", [
    (["missing"], "ROOT 'missing' does not exist."),
    (["--status", "done"], "--status: value 'done' is not a run status"),
    (["--where", "optim"], "--where: 'optim' is not of the form KEY=VALUE"),
    (["--where", "optim.lrr=1"], "--where: no run under"),
    (["--limit", "0"], "--limit: value 0 is not allowed"),
])
def test_bad_input_is_one_line_exit_2(root, capsys, monkeypatch, args, message):
    monkeypatch.chdir(root.parent)
    assert main(["runs", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"expkit runs: {message}") and err.count("\n") == 1


def test_compare_shows_only_what_differs(git_repo, tmp_path):
    runs = git_repo / "runs"
    first = git(git_repo, "rev-parse", "HEAD")
    (git_repo / "model.py").write_text("W = 1\n")
    git(git_repo, "add", "model.py")
    git(git_repo, "commit", "-qm", "model")
    second = git(git_repo, "rev-parse", "HEAD")
    a = make_run(runs / "a", commit=first, repo=str(git_repo), metrics={"val/acc": 0.9, "best/val/acc": 0.92},
                 data={"name": "digits", "sizes": {"train": 8}, "sha256": "1" * 64})
    b = make_run(runs / "b", commit=second, repo=str(git_repo), lr=0.01, dirty=True,
                 metrics={"val/acc": 0.8, "best/val/acc": 0.85},
                 extra_config={"name": "x"}, data={"name": "digits", "sizes": {"train": 9}, "sha256": "2" * 64})
    (b / "git.diff").write_text("diff --git a/notes.txt b/notes.txt\n--- a/notes.txt\n+++ b/notes.txt\n"
                                "# Untracked files (not in the diff above):\n#   new.py\n")
    (b / "untracked.json").write_text(json.dumps({"files": [{"path": "new.py", "size": 2, "sha256": "f" * 64}]}))
    c = compare([a, b])
    assert c.config == {"optim.lr": [0.001, 0.01], "name": ["(absent)", "x"]}
    assert c.metrics == {"val/acc": [0.9, 0.8], "best/val/acc": [0.92, 0.85]}
    assert c.changed_between == {"A..B": ["A\tmodel.py"]}
    assert c.uncommitted == [[], ["notes.txt"]] and c.untracked == [{}, {"new.py": "f" * 64}]
    assert c.code_differs and c.data_differs
    text = report(c)
    rows = [line.split() for line in text.splitlines()]
    assert ["optim.lr", "0.001", "0.01"] in rows and ["name", "(absent)", "x"] in rows
    assert "trainer.epochs" not in text and ["val/acc", "0.9000", "0.8000"] in rows
    assert "files changed between the commits A..B: 1\n    A\tmodel.py" in text
    assert f"B  commit {second[:12]} (dirty); uncommitted changes: notes.txt; untracked: new.py" in text
    # The same run twice: nothing differs.
    same = compare([a, a])
    assert same.config == {} and not same.code_differs and same.data_differs is False
    assert "none: the resolved configs are equal" in report(same)


def test_compare_a_commit_from_another_repository_says_so(git_repo, tmp_path, monkeypatch):
    monkeypatch.chdir(git_repo)
    a = make_run(tmp_path / "a", commit=git(git_repo, "rev-parse", "HEAD"))
    b = make_run(tmp_path / "b", commit="c" * 40)
    c = compare([a, b])
    assert c.code_differs and c.changed_between == {}
    assert c.notes == [f"the commits are not all in {git_repo}; files changed between them unknown"]


def test_compare_plot_reads_the_event_files(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    paths = []
    for name, acc in (("a", 0.5), ("b", 0.7)):
        run = make_run(tmp_path / name, metrics={"val/acc": acc})
        with SummaryWriter(str(run)) as w:
            for step in (1, 2, 3):
                w.add_scalar("val/acc", acc + step / 100, step)
                w.add_scalar("train/loss", 1.0 / step, step)
        paths.append(run)
    c = compare(paths)
    assert [v for _, v in curves(paths[1])["val/acc"]] == pytest.approx([0.71, 0.72, 0.73])
    out = plot(c, tmp_path / "cmp.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_compare_bad_input(tmp_path, capsys):
    run = make_run(tmp_path / "a")
    assert main(["compare", str(run), str(tmp_path)]) == 2
    message = f"expkit compare: {str(tmp_path)!r} is not an expkit run folder (it has no meta.json).\n"
    assert capsys.readouterr().err == message
    assert main(["compare", str(run)]) == 2
    assert "at least two run folders" in capsys.readouterr().err
    assert main(["compare", str(run), str(run), "--plot", str(tmp_path / "x.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err and not (tmp_path / "x.jpg").exists()


def test_where_takes_a_list_value_whole():
    from expkit.runlist import matches, parse_where

    [(key, values)] = parse_where(["model.channels=[32,64]"])
    assert key == "model.channels" and values == ["[32,64]"]
    assert matches([32, 64], values[0]) and not matches([32, 128], values[0])
    assert parse_where(["optim=adam,adamw"]) == [("optim", ["adam", "adamw"])]
