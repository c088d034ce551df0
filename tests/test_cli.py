"""The real `expkit` command in a subprocess: the run folder, provenance, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import EXPKIT, FAST, only_run, read_json, run_cli, run_dirs, scalars

from expkit.run.jobs import lr_per_step


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """`code` in a new interpreter (nothing imported yet, the collector untouched); it must exit 0."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_help_and_version_do_not_import_torch():
    proc = fresh_python("import sys; from expkit.cli import main; main(['--help']); main(['--version']); "
                        "assert 'torch' not in sys.modules, 'torch imported'; "
                        "assert 'hydra' not in sys.modules, 'hydra imported'")
    assert "usage: expkit" in proc.stdout and "expkit 0.1.0" in proc.stdout


def test_bad_input_is_refused_before_torch_is_imported():
    # Composing and validating (the main-metric resolver included) stays torch-free, so a
    # typo is answered in well under a second instead of after torch's import.
    proc = fresh_python("import sys; from expkit.cli import main; "
                        "codes = [main(['train', 'optim.lr=-1']), "
                        "main(['train', 'task=regression', 'trainer.epochs=0'])]; "
                        "assert codes == [2, 2], codes; assert 'torch' not in sys.modules, 'torch imported'")
    assert "optim.lr: value -1.0 is not allowed" in proc.stderr and "trainer.epochs" in proc.stderr


def test_train_writes_a_complete_run_folder(git_repo):
    proc = run_cli(["train", "model=mlp", "optim=sgd", "optim.lr=0.05", "trainer.epochs=2",
                    "data.sample=256", "trainer.progress=off"], cwd=git_repo, check=True)
    run = only_run(git_repo)
    assert str(run) in proc.stdout and f"--logdir {run.relative_to(git_repo)}" in proc.stdout

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["arch"] == "mlp" and config["optim"]["name"] == "sgd"
    assert config["optim"]["lr"] == 0.05 and config["trainer"]["epochs"] == 2
    assert "hydra" not in config
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (run / ".hydra" / name).stat().st_size > 0
    assert "optim.lr=0.05" in (run / ".hydra" / "overrides.yaml").read_text()

    meta = read_json(run / "meta.json")
    assert meta["status"] == "completed" and meta["ended"] and meta["started"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=git_repo, capture_output=True, text=True).stdout.strip()
    assert meta["git"]["commit"] == head and meta["git"]["branch"] == "main"
    assert meta["git"]["dirty"] is False and "remote" in meta["git"]
    assert meta["overrides"] == ["model=mlp", "optim=sgd", "optim.lr=0.05", "trainer.epochs=2",
                                 "data.sample=256", "trainer.progress=off"]
    # As typed: `train` and the overrides, not the argv Hydra is handed (no subcommand, plus
    # the run folder expkit claimed), so it runs again as it stands.
    assert meta["command"][1:] == ["train", "model=mlp", "optim=sgd", "optim.lr=0.05", "trainer.epochs=2",
                                   "data.sample=256", "trainer.progress=off"]
    assert meta["host"] and meta["world_size"] == 1
    assert set(meta["versions"]) >= {"python", "torch", "expkit"}
    assert not (run / "git.diff").exists()

    log = (run / "train.log").read_text()
    for needle in ("config:", "arch: mlp", "Linear", "parameters", "data digits", "train 256",
                   "git:", head, "environment:", "epoch 1/2", "epoch 2/2", "val/acc"):
        assert needle in log, needle
    assert "\x1b[" not in log  # no ANSI escapes in the log file

    tags = scalars(run)
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "opt/lr", "grad/norm"):
        assert tag in tags, tag
    assert len(tags["val/acc"]) == 2
    steps_per_epoch = 4  # 256 examples / batch 64
    # opt/lr: a point at the first step, at every log step (the last of each epoch here) and
    # wherever the LR changes; sgd without a schedule keeps 0.05 throughout.
    assert [s for s, _ in tags["opt/lr"]] == [1, steps_per_epoch, 2 * steps_per_epoch]
    assert lr_per_step(tags["opt/lr"], 2 * steps_per_epoch) == pytest.approx([0.05] * 2 * steps_per_epoch)

    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert state["step"] == 2 * steps_per_epoch and "model" in state

    metrics = read_json(run / "metrics.json")
    assert set(metrics) >= {"val/acc", "val/loss", "best/val/acc", "epoch", "step"}
    assert metrics["epoch"] == 2 and metrics["step"] == 8
    assert metrics["val/acc"] == tags["val/acc"][-1][1] == pytest.approx(meta["metrics"]["val/acc"])
    assert metrics["best/val/acc"] == max(v for _, v in tags["val/acc"])


def test_console_is_one_line_each_for_config_and_model_and_train_log_has_all(tmp_path):
    # PATH without the venv's bin, as when a venv's expkit is run without activating it.
    bare = {"PATH": os.defpath}
    proc = run_cli(["train", *FAST, "model=mlp", "optim.lr=0.01"], cwd=tmp_path, env=bare, check=True)
    run = only_run(tmp_path)
    out, log = proc.stdout, (run / "train.log").read_text()
    for detail in ("arch: mlp", "Linear", "environment:", "git:", "class counts:"):
        assert detail in log and detail not in out, detail  # the full config, layer table, ...
    [config] = [line for line in out.splitlines() if "config:" in line]
    assert "data=digits model=mlp optim=adamw sched=none init=default; lr 0.01, batch 64, 1 epoch," in config
    assert "overrides: data.sample=128" in config and "optim.lr=0.01" in config and "trainer.verbose=true" in config
    [model] = [line for line in out.splitlines() if "model:" in line]
    total = int(log.split(" parameters\n", 1)[0].rsplit("model: ", 1)[1])  # the layer table's head in train.log
    assert model.endswith(f"model: mlp (Sequential), {total:,} parameters in 14 layers"), model
    assert len(out.splitlines()) <= 12, out

    # The closing line names the next commands; off PATH, the ones beside the running expkit.
    bin_dir = Path(EXPKIT).parent
    where = run.relative_to(tmp_path)
    assert out.splitlines()[-1].endswith(f"next: {bin_dir}/expkit eval {where}; {bin_dir}/expkit runs; "
                                         f"{bin_dir}/tensorboard --logdir {where}"), out

    # trainer.verbose: all of it on the console too; with the venv on PATH, bare names.
    on_path = {"PATH": f"{bin_dir}{os.pathsep}{os.defpath}"}
    loud = run_cli(["train", *FAST, "model=mlp", "trainer.verbose=true"], cwd=tmp_path, env=on_path, check=True)
    for detail in ("arch: mlp", "Linear", "environment:", "git:", "class counts:"):
        assert detail in loud.stdout, detail
    assert "or trainer.verbose=true)" not in loud.stdout  # no hint to ask for what it shows
    assert " expkit runs; tensorboard --logdir runs/" in loud.stdout.splitlines()[-1]


def test_program_names_the_one_beside_this_python_only_when_it_exists(tmp_path, monkeypatch):
    from expkit.training.logs import program

    monkeypatch.setenv("PATH", os.defpath)
    monkeypatch.chdir(tmp_path)
    assert program("tensorboard") == str(Path(sys.executable).parent / "tensorboard")
    assert program("no-such-program") == "no-such-program"
    from expkit.training.logs import next_steps

    # `expkit runs` searches ./runs: a run folder elsewhere is named, one below it need not be.
    assert f"expkit runs {tmp_path.parent / 'elsewhere'};" in next_steps(tmp_path.parent / "elsewhere")
    assert "expkit runs; " in next_steps(tmp_path / "runs" / "2026-12-06" / "12-00-00")


def test_dirty_tree_writes_git_diff(git_repo):
    (git_repo / "notes.txt").write_text("first\nchanged\n")
    (git_repo / "new_file.py").write_text("x = 1\n")
    run_cli(["train", *FAST], cwd=git_repo, check=True)
    run = only_run(git_repo)
    meta = read_json(run / "meta.json")
    assert meta["git"]["dirty"] is True
    diff = (run / "git.diff").read_text()
    assert "+changed" in diff and "notes.txt" in diff
    assert "new_file.py" in diff.split("Untracked files")[1]
    # The patch applies to the recorded commit: the exact code can be rebuilt.
    subprocess.run(["git", "stash", "-u", "-q"], cwd=git_repo, check=True)
    check = subprocess.run(["git", "apply", "--check", str(run / "git.diff")], cwd=git_repo,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_outside_git_meta_says_so_and_training_goes_on(tmp_path):
    run_cli(["train", *FAST], cwd=tmp_path, check=True)
    meta = read_json(only_run(tmp_path) / "meta.json")
    assert meta["status"] == "completed"
    assert meta["git"]["repo"] is None and "not inside a git repository" in meta["git"]["note"]


@pytest.mark.parametrize("override, key, allowed", [
    ("model=cnnn", "model", "cnn"),
    ("optim.lr=-1", "optim.lr", "> 0"),
    ("reg.dropout=1.5", "reg.dropout", "[0, 1)"),
    ("trainer.epochs=0", "trainer.epochs", ">= 1"),
    ("trainer.epochs=abc", "trainer.epochs", "int"),
    ("trainer.foo=1", "trainer.foo", "trainer"),
    ("+bar=1", "bar", "Allowed"),
    ("sched=multistep sched.milestones=[5,3]", "sched.milestones", "increasing"),
])
def test_bad_input_is_refused_before_training(tmp_path, override, key, allowed):
    proc = run_cli(["train", *override.split(), "trainer.progress=off"], cwd=tmp_path)
    assert proc.returncode != 0
    message = proc.stderr
    assert key in message and allowed in message, message
    assert "sched.warmup_epochs" not in message  # no second error that follows from the first
    value = override.split("=", 1)[1].split()[0] if "milestones" not in override else "[5, 3]"
    assert value in message, message
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_dirs(tmp_path) == []
    leftovers = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] if (tmp_path / "runs").exists() else []
    assert leftovers == []


def test_two_runs_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    from expkit.run.folder import unique_dir

    monkeypatch.chdir(tmp_path)
    first, second = unique_dir("runs/day/12-00-00"), unique_dir("runs/day/12-00-00")
    assert first != second and second.endswith("-1")
    # And with real processes racing for one name.
    code = "from expkit.run.folder import unique_dir; print(unique_dir('runs/day/13-00-00'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    names = {p.communicate()[0].strip() for p in procs}
    assert len(names) == 4


def test_default_run_reaches_95_percent_on_digits(tmp_path):
    run_cli(["train", "trainer.progress=off"], cwd=tmp_path, check=True)
    metrics = read_json(only_run(tmp_path) / "metrics.json")
    assert metrics["val/acc"] >= 0.95, metrics


def test_hydra_flags_keep_working(tmp_path):
    proc = run_cli(["train", "--cfg", "job", "model=mlp"], cwd=tmp_path, check=True)
    assert "arch: mlp" in proc.stdout and run_dirs(tmp_path) == []
    proc = run_cli(["train", "--cfg", "all", "--resolve"], cwd=tmp_path, check=True)
    assert "dir: runs/" in proc.stdout and not (tmp_path / "runs").exists()  # names shown, no folder made
    proc = run_cli(["train", "--info"], cwd=tmp_path, check=True)
    assert "Config search path" in proc.stdout
    # A reader that leaves early ends it quietly (it used to print a traceback per line).
    proc = subprocess.run(f"{EXPKIT} train --info | head -1", shell=True, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.startswith("Hydra") and "Error" not in proc.stderr, proc.stderr[-2000:]
    proc = run_cli(["train", "--help"], cwd=tmp_path, check=True)
    assert "optim.lr" in proc.stdout and "reg.dropout" in proc.stdout and "kaiming_normal" in proc.stdout
    custom = tmp_path / "elsewhere"
    proc = run_cli(["train", *FAST, f"hydra.run.dir={custom}"], cwd=tmp_path, check=True)
    assert (custom / "meta.json").exists()


def test_the_collector_pause_ends_with_everything_frozen_and_only_when_paused():
    fresh_python("import gc; from expkit import collector; "
                 "collector.resume(); assert gc.isenabled() and gc.get_freeze_count() == 0, 'resumed unpaused'; "
                 "collector.pause(); assert not gc.isenabled(); collector.resume(); "
                 "assert gc.isenabled() and gc.get_freeze_count() > 0; "
                 "gc.disable(); collector.pause(); collector.resume(); assert not gc.isenabled(), 'a caller paused it'")
