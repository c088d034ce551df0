"""Hostile input, tried as an attacker or a careless user would: config values, run folders
received from someone else, links, records that point outside, another run's checkpoint,
signals. Each case checks what docs/security.md promises: a non-zero exit with one message
(no traceback), nothing accepted silently, no code of a run folder run without --trust-code,
no write outside the folder, no file lost.

The config cases run in-process (the console script's own main); the run-folder and signal
cases start real expkit processes on real files, links and signals (the e2e tier)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import EXPKIT, FAST, git, make_git_repo, read_json, run_cli

from expkit.cli import main

pytestmark = pytest.mark.xdist_group("hostile")


# ---------------------------------------------------------------- config values (unit tier)
def wrong_values() -> list[tuple[list[str], str]]:
    """For every key of every group (with the choice that has it), a value of the wrong kind:
    text for a number, a word for a boolean, an unknown name for a key with choices."""
    from expkit.config.reference import key_rows

    cases = []
    for row in key_rows():
        group, _, name = row.key.partition(".")
        if not name:
            continue
        typ = row.type.replace(" | None", "")
        choice = [] if row.has_default else [f"{group}={next(iter(row.others))}"] if row.others else None
        if choice is None:
            continue
        if typ in ("int", "float"):
            value = "abc"
        elif typ == "bool":
            value = "maybe"
        elif typ == "str" and "(" in row.help and "MODULE:NAME" not in row.help and name != "name":
            value = "no-such-choice"
        else:
            continue
        cases.append(([*choice, f"{row.key}={value}"], row.key))
    return cases


NOT_FINITE = [(["optim.lr=inf"], "optim.lr"), (["optim.lr=1e309"], "optim.lr"), (["optim.lr=nan"], "optim.lr"),
              (["optim.lr=-inf"], "optim.lr"), (["optim.weight_decay=inf"], "optim.weight_decay"),
              (["optim.weight_decay=nan"], "optim.weight_decay"), (["reg.grad_clip=inf"], "reg.grad_clip"),
              (["reg.grad_clip=nan"], "reg.grad_clip"), (["sched=step", "sched.gamma=inf"], "sched.gamma"),
              (["optim=adam", "optim.eps=inf"], "optim.eps"), (["sched.warmup_epochs=nan"], "sched.warmup_epochs"),
              (["reg.dropout=nan"], "reg.dropout"), (["reg.label_smoothing=inf"], "reg.label_smoothing"),
              (["data.val_fraction=nan"], "data.val_fraction")]
OUT_OF_RANGE = [(["optim.lr=0"], "optim.lr"), (["optim.lr=-1"], "optim.lr"), (["trainer.epochs=0"], "trainer.epochs"),
                (["trainer.epochs=-3"], "trainer.epochs"), (["data.batch_size=0"], "data.batch_size"),
                (["data.val_fraction=1"], "data.val_fraction"), (["data.val_fraction=-0.1"], "data.val_fraction"),
                (["reg.dropout=1"], "reg.dropout"), (["reg.dropout=-0.5"], "reg.dropout"),
                (["reg.grad_clip=0"], "reg.grad_clip"), (["sched=step", "sched.step_size=0"], "sched.step_size"),
                (["sched=multistep", "sched.milestones=[]"], "sched.milestones"),
                (["sched.warmup_epochs=10"], "sched.warmup_epochs"), (["model=mlp", "model.depth=0"], "model.depth"),
                (["seed=1.5"], "seed"), (["seed=abc"], "seed"), (["name=a/b"], "name"), (["name=' x'"], "name"),
                (["trainer.devices=0"], "trainer.devices"), (["model=mlp", "reg.norm=instance"], "reg.norm")]
INTERPOLATIONS = [(["optim.lr=${nope}"], "optim.lr"), (["optim.lr=${oc.env:EXPKIT_NO_SUCH_VARIABLE}"], "optim.lr"),
                  (["data.root=${nope.deeper}"], "data.root"), (["optim.lr=${optim.nope}"], "optim.lr"),
                  (["optim.lr=${no_such_resolver:1}"], "optim.lr"),
                  (["trainer.epochs=${oc.env:HOME}"], "trainer.epochs")]
NAMES = [(["optim.lrr=0.1"], "optim.lrr"), (["trainer.max_epochs=3"], "trainer.max_epochs"), (["model=cnnn"], "model"),
         (["nope=1"], "nope"), (["+optim.nope=1"], "optim.nope"),
         (["optim=adamw", "optim.momentum=0.9"], "optim.momentum")]
CONFIG_CASES = [*wrong_values(), *NOT_FINITE, *OUT_OF_RANGE, *INTERPOLATIONS, *NAMES]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXPKIT_TRACEBACK", raising=False)
    monkeypatch.delenv("EXPKIT_NO_SUCH_VARIABLE", raising=False)
    return tmp_path


def refused(code: int, err: str, key: str) -> None:
    """Bad input, said in one message that names the key, without a traceback."""
    assert code == 2, err
    assert key in err and "Traceback" not in err and "{{" not in err, err


@pytest.mark.parametrize("overrides, key", CONFIG_CASES, ids=[" ".join(o) for o, _ in CONFIG_CASES])
def test_a_bad_config_value_is_refused_before_anything_is_made(overrides, key, in_tmp, capsys):
    refused(main(["train", *overrides]), capsys.readouterr().err, key)
    assert not (in_tmp / "runs").exists()  # nothing made


SCHED_CASES = [*NOT_FINITE[:4], *INTERPOLATIONS[:3], (["trainer.epochs=0"], "trainer.epochs")]


@pytest.mark.parametrize("overrides, key", SCHED_CASES, ids=[" ".join(o) for o, _ in SCHED_CASES])
def test_sched_refuses_the_same_values(overrides, key, in_tmp, capsys):
    refused(main(["sched", *overrides]), capsys.readouterr().err, key)
    assert not list(in_tmp.iterdir())


@pytest.fixture
def saved_run(in_tmp):
    """A run folder as training leaves it, but for its checkpoints (a resume refuses before it reads one)."""
    from omegaconf import OmegaConf

    from expkit.config.compose import compose, task_config

    run = in_tmp / "runs" / "day" / "time"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(task_config(compose([])), resolve=True))
    (run / "meta.json").write_text('{"status": "interrupted"}\n')
    return run


RESUME_CASES = [(["optim.lr=inf", "--force"], "optim.lr"), (["trainer.epochs=abc"], "trainer.epochs"),
                (["trainer.epochs=${nope}"], "trainer.epochs"), (["trainer.epochs=1e309"], "trainer.epochs"),
                (["trainer.progress=sometimes"], "trainer.progress"), (["model=mlp"], "model"),
                (["trainer.epochz=5"], "trainer.epochz"), (["optim.lr=0.1"], "optim.lr"),
                (["trainer.epochs=2,3"], "trainer.epochs"), (["trainer.epochs=[1"], "trainer.epochs")]


@pytest.mark.parametrize("overrides, key", RESUME_CASES, ids=[" ".join(o) for o, _ in RESUME_CASES])
def test_resume_refuses_bad_overrides_and_changes_nothing(overrides, key, saved_run, capsys):
    before = {p.name: p.read_bytes() for p in saved_run.iterdir()}
    refused(main(["resume", str(saved_run), *overrides]), capsys.readouterr().err, key)
    assert {p.name: p.read_bytes() for p in saved_run.iterdir()} == before


TINY_MODEL = "defaults:\n  - base_mlp\n  - _self_\narch: mlp\nwidth: 16\n"
CONFIG_DIRS = {"missing": ({}, "does not exist"), "a file": ({".": None}, "is a file"),
               "bad YAML": ({"model/bad.yaml": "arch: [unclosed\n"}, "not valid YAML"),
               "a config.yaml": ({"config.yaml": "x: 1\n", "model/tiny.yaml": TINY_MODEL}, "would never be read")}


def config_dir(tmp: Path, files: dict) -> Path:
    folder = tmp / "myconf"
    for name, text in files.items():
        if text is None:
            folder.write_text("a file")
            continue
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("case", sorted(CONFIG_DIRS))
def test_a_bad_config_dir_is_one_message_and_nothing_made(case, in_tmp, capsys):
    files, words = CONFIG_DIRS[case]
    folder = config_dir(in_tmp, files)
    overrides = ["model=bad"] if "model/bad.yaml" in files else []
    refused(main(["train", "--config-dir", str(folder), *overrides]), err := capsys.readouterr().err, "--config-dir")
    assert words in err and not (in_tmp / "runs").exists()


def test_overrides_may_come_before_the_config_dir(tmp_path):
    folder = config_dir(tmp_path, {"model/tiny.yaml": TINY_MODEL})
    proc = run_cli(["train", *FAST, "--config-dir", str(folder), "model=tiny"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "in_features=64, out_features=16" in next((tmp_path / "runs").rglob("train.log")).read_text()


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', '{"status": "completed", "git": ["a"]}', "{not json"])
@pytest.mark.parametrize("name", ["resume", "reproduce", "eval"])
def test_a_record_of_the_wrong_shape_is_bad_input(name, meta, saved_run, capsys):
    (saved_run / "meta.json").write_text(meta)
    code = main([name, str(saved_run)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.startswith(f"expkit {name}:"), err


def test_a_cifar_batch_that_names_a_function_is_refused_and_never_called(tmp_path):
    import pickle

    from expkit.data.sources import _read_cifar_batch
    from expkit.errors import ConfigError

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(ConfigError, match="system"):
        _read_cifar_batch(batch)
    assert not marker.exists()


# ---------------------------------------------- data and models that do not fit (e2e)
OWN_DATA = '''\
import torch

class Pairs(torch.utils.data.Dataset):
    def __init__(self, n, label):
        self.n, self.label = n, label
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return torch.full((1, 8, 8), float(i % 3)), self.label(i)

def floats():
    return Pairs(200, lambda i: 0.3 * (i % 3))   # regression-like targets: int() would make them class 0

def three_classes():
    return Pairs(200, lambda i: i % 3)

def ten_outputs(input_shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
'''
UNFIT = {
    "float labels": (["data=python", "data.factory=owndata:floats"], 2, "expected an integer class index"),
    "output width": (["data=python", "data.factory=owndata:three_classes", "model=python",
                      "model.factory=owndata:ten_outputs"], 2, "3 classes"),
    "a fake image": (["data=folder", "data.root=imgs", "data.image_size=8", "data.channels=1"], 2,
                     "not images that can be read"),
    "an empty class folder": (["data=folder", "data.root=imgs_empty", "data.image_size=8", "data.channels=1"], 0,
                              "has no example of class"),
}


def image_folders(root: Path) -> None:
    from PIL import Image

    for name, fake in (("imgs", True), ("imgs_empty", False)):
        for cls in ("a", "b"):
            (root / name / cls).mkdir(parents=True)
            for i in range(12):
                Image.new("L", (8, 8), color=20 * i + (100 if cls == "a" else 0)).save(root / name / cls / f"{i}.png")
        (root / name / "c").mkdir()  # imgs_empty: a class without images
        if fake:
            (root / name / "a" / "fake.png").write_text("not an image")
            (root / name / "c" / "0.png").write_bytes((root / name / "a" / "0.png").read_bytes())


@pytest.mark.parametrize("case", sorted(UNFIT))
def test_data_or_a_model_that_does_not_fit_is_refused_before_training(case, tmp_path):
    overrides, code, words = UNFIT[case]
    (tmp_path / "owndata.py").write_text(OWN_DATA)
    image_folders(tmp_path)
    proc = run_cli(["train", *overrides, "data.sample=null", *FAST[1:]], cwd=tmp_path)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and words in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert (tmp_path / "runs").exists() == (code == 0)  # refused: no run folder left


# ------------------------------------------------------------ received run folders (e2e)
OWN_CODE = '''\
import math
from torch import nn

def build_model(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(), nn.Linear(16, num_classes))

def init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)
'''
# Top-level code of a module planted in a received folder: it must never run.
EVIL = '''\
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from torch import nn
def Net(input_shape, num_classes):
    return nn.Linear(1, 1)
def init(m):
    pass
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with its own model code, two finished runs of it (other: another optim.lr)."""
    project = make_git_repo(tmp_path_factory.mktemp("hostile") / "project")
    (project / "ownmod.py").write_text(OWN_CODE)
    git(project, "add", "ownmod.py")
    git(project, "commit", "-qm", "own code")
    common = ["model=python", "model.factory=ownmod:build_model", "init=function",
              "init.function=ownmod:init_weights", *FAST]
    run_cli(["train", *common, "name=base"], cwd=project, check=True)
    run_cli(["train", *common, "optim.lr=0.01", "name=other"], cwd=project, check=True)
    runs = {p.parent.name.split("-")[-1]: p.parent for p in (project / "runs").rglob("meta.json")}
    return project, runs["base"], runs["other"]


class Received:
    """A copy of the base run, to tamper with; and a folder outside it to watch."""

    def __init__(self, trained, tmp_path: Path, name: str):
        self.project, base, self.other = trained
        self.run = self.project / "runs" / name
        shutil.rmtree(self.run, ignore_errors=True)
        shutil.copytree(base, self.run, symlinks=True)
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        (self.outside / "precious.txt").write_text("keep me\n")
        self.marker = tmp_path / "code-ran"

    def snapshot(self, folder: Path) -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}

    def plant(self, module: str = "evilmod") -> None:
        (self.run / f"{module}.py").write_text(EVIL.format(marker=str(self.marker)))

    def edit_config(self, **keys: str) -> None:
        import yaml

        cfg = yaml.safe_load((self.run / "config.yaml").read_text())
        for dotted, value in keys.items():
            group, key = dotted.split("__")
            cfg[group][key] = value
        (self.run / "config.yaml").write_text(yaml.safe_dump(cfg))

    def edit_meta(self, **fields) -> None:
        meta = read_json(self.run / "meta.json")
        meta.update(fields)
        (self.run / "meta.json").write_text(json.dumps(meta))

    def expkit(self, *args: str, expect: int = 2, words: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """Run a command on the folder; check the promises, whatever the case."""
        outside_before, run_before = self.snapshot(self.outside), self.snapshot(self.run)
        proc = run_cli(list(args), cwd=self.project)
        assert proc.returncode == expect, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert not self.marker.exists(), "the run folder's code ran"
        assert self.snapshot(self.outside) == outside_before, "a file outside the run folder changed"
        if expect != 0:
            lost = set(run_before) - set(self.snapshot(self.run))
            assert not lost, f"a refused command removed {lost}"
        for word in words:
            assert word in proc.stderr, proc.stderr
        return proc


COMMANDS_ON_A_RUN = {"eval": ["eval"], "predict": ["predict", "{run}/../../digit.png"], "export": ["export"],
                     "resume": ["resume", "trainer.epochs=2"], "reproduce": ["reproduce", "--check"]}


def command(name: str, run: Path) -> list[str]:
    first, *rest = COMMANDS_ON_A_RUN[name]
    return [first, str(run), *(r.format(run=run) for r in rest)]


@pytest.fixture
def received(trained, tmp_path, request):
    from PIL import Image

    Image.new("L", (8, 8), color=90).save(trained[0] / "digit.png")
    name = "".join(c if c.isalnum() else "_" for c in request.node.name[-40:])
    return Received(trained, tmp_path, f"recv_{name}")  # a folder name that can be named as a module


@pytest.mark.parametrize("name", sorted(COMMANDS_ON_A_RUN))
def test_code_planted_in_a_received_folder_never_runs(name, received):
    received.plant()
    received.edit_config(model__factory=f"runs.{received.run.name}.evilmod:Net")
    received.expkit(*command(name, received.run), words=("inside the run folder", "never imported"))
    received.expkit(*command(name, received.run), "--trust-code", words=("never imported",))


def test_an_init_function_in_the_folder_never_runs(received):
    received.plant()
    received.edit_config(init__function=f"runs.{received.run.name}.evilmod:init")
    received.expkit("eval", str(received.run), words=("init.function", "never imported"))


@pytest.mark.parametrize("name", ["eval", "resume"])
def test_a_recorded_cwd_is_never_where_code_is_looked_for(name, received):
    received.plant()
    received.edit_config(model__factory="evilmod:Net")
    received.edit_meta(cwd=str(received.run))
    received.expkit(*command(name, received.run), words=("not a file of the project folder",))


def test_own_code_that_changed_needs_the_flag(received):
    own = received.project / "ownmod.py"
    original = own.read_text()
    try:
        own.write_text(original + "\n# edited after training\n")
        received.expkit("eval", str(received.run), words=("is not the file the run was trained with", "--trust-code"))
        received.expkit("eval", str(received.run), "--trust-code", expect=0)
    finally:
        own.write_text(original)


def test_own_code_without_a_recorded_hash_needs_the_flag(received):
    received.edit_meta(imports={})
    received.expkit("export", str(received.run), words=("records no hash", "--trust-code"))
    received.expkit("export", str(received.run), "--trust-code", expect=0)


LINKS = {".lock": "resume", "train.log": "resume", "checkpoints": "resume", "eval": "eval", "export": "export",
         "checkpoints/last.pt": "resume"}


@pytest.mark.parametrize("entry", sorted(LINKS))
def test_no_write_goes_through_a_link_out_of_the_folder(entry, received):
    path = received.run / entry
    if path.is_dir():  # a folder of the run: a link to a folder outside, holding the same files
        target = received.outside / path.name
        shutil.copytree(path, target)
        shutil.rmtree(path)
    else:
        target = received.outside / "precious.txt"
        path.unlink(missing_ok=True)
    path.symlink_to(target)
    received.expkit(*command(LINKS[entry], received.run), words=("symbolic link",))


@pytest.mark.parametrize("name", ["train.log", ".lock"])
def test_a_file_written_in_place_with_a_second_hard_link_is_not_written(name, received):
    path = received.run / name
    path.unlink(missing_ok=True)
    os.link(received.outside / "precious.txt", path)
    received.expkit("resume", str(received.run), "trainer.epochs=2", words=("hard links",))


def test_a_record_with_fields_of_other_types_is_read_as_not_recording_them(received):
    received.edit_meta(resumes="no", git="text", status=5, metrics={"val/acc": "high"}, data=[1], imports="x",
                       cwd=3, world_size=True)
    # The run's own model file then has no recorded hash: eval and resume need the flag for it.
    for args in (["runs", str(received.run.parent)], ["summary", str(received.run.parent)],
                 ["compare", str(received.run), str(received.other)], [*command("eval", received.run), "--trust-code"],
                 [*command("resume", received.run), "--trust-code"]):
        received.expkit(*args, expect=0)


def test_a_record_nested_deeper_than_the_parser_goes_is_unreadable(received):
    (received.run / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    for args in (["runs", str(received.run.parent)], ["compare", str(received.run), str(received.other)],
                 [*command("eval", received.run), "--trust-code"]):
        received.expkit(*args, expect=0)
    received.expkit(*command("resume", received.run), words=("nested deeper",))


def test_terminal_escapes_in_a_received_folder_are_printed_as_escapes(received):
    odd = received.run.parent / "odd\x1b[31mRED\x1b]0;TITLE\x07\nfake row \u202eabc"
    received.run.rename(odd)
    received.run = odd
    received.edit_meta(overrides=["\x1b]0;HACKED\x07\x1b[2J"], status="completed\x1b[31m",
                       git={"commit": "\x1b[2Jabc"})
    for args in (["runs", str(odd.parent)], ["compare", str(odd), str(received.other)],
                 ["summary", str(odd.parent)]):
        out = received.expkit(*args, expect=0).stdout
        assert not any(ch in out for ch in "\x1b\x07\u202e"), out
        assert not any(line.startswith("fake row") for line in out.splitlines()), out
        if args[0] != "summary":  # a sweep's table names jobs by number
            assert "odd\\x1b[31mRED\\x1b]0;TITLE\\x07\\x0afake row" in out, out  # on one line, escaped


def test_the_lock_refuses_a_second_hard_link_on_the_file_it_opened(tmp_path, monkeypatch):
    from expkit.errors import ConfigError
    from expkit.run.folder import FolderLock, RunDir

    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    (tmp_path / "run").mkdir()
    os.link(outside, tmp_path / "run" / ".lock")
    # The folder's check by name ran already (or the link came after it): the opened file decides.
    monkeypatch.setattr(RunDir, "refuse_links", lambda self: None)
    with pytest.raises(ConfigError, match="hard links"):
        FolderLock(tmp_path / "run").acquire()
    assert outside.read_text() == "keep me\n"


def test_yaml_aliases_that_expand_without_bound_are_refused(received):
    bomb = 'laugh0: &l0 ["ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha"]\n' + "".join(
        f"laugh{i + 1}: &l{i + 1} [{', '.join([f'*l{i}'] * 9)}]\n" for i in range(9))  # 9**10 values
    config = received.run / "config.yaml"
    config.write_text(config.read_text() + bomb)
    for name in ("eval", "resume", "export", "reproduce"):
        received.expkit(*command(name, received.run), words=("YAML aliases",))
    received.expkit("compare", str(received.run), str(received.other), expect=0)
    received.expkit("runs", str(received.run.parent), expect=0)


def test_a_checkpoint_of_another_run_is_refused_with_the_keys_named(received):
    for name in ("last.pt", "best.pt"):
        for suffix in ("", ".sha256"):
            (received.run / "checkpoints" / f"{name}{suffix}").unlink()
            shutil.copy(received.other / "checkpoints" / f"{name}{suffix}", received.run / "checkpoints")
    for numbered in (received.run / "checkpoints").glob("step-*"):
        numbered.unlink()
    received.expkit("resume", str(received.run), "trainer.epochs=2", words=("optim.lr", "0.01"))
    received.expkit("eval", str(received.run), words=("optim.lr", "not trained with this run"))


def test_export_where_a_file_stands_for_its_folder(received):
    shutil.rmtree(received.run / "export", ignore_errors=True)
    (received.run / "export").write_text("not a folder")
    received.expkit("export", str(received.run), words=("is a file",))


def test_random_bytes_with_a_matching_checksum_are_not_called_unsafe_code(received):
    best = received.run / "checkpoints" / "best.pt"
    best.unlink()
    best.write_bytes(os.urandom(4096))
    Path(f"{best}.sha256").unlink()
    Path(f"{best}.sha256").write_text(hashlib.sha256(best.read_bytes()).hexdigest())
    proc = received.expkit("eval", str(received.run), words=("best.pt",))
    assert "would run code" not in proc.stderr


def test_a_checkpoint_path_that_is_no_checkpoint(received):
    received.expkit("eval", str(received.run), "--checkpoint", "/etc/hostname", words=("/etc/hostname",))


@pytest.mark.parametrize("bad", ["/tmp/expkit-hostile-abs.py", "../../escaped.py", "omegaconf.py",
                                 "omegaconf/__init__.py"])
def test_untracked_records_cannot_write_outside_the_worktree_or_shadow_a_module(bad, received):
    received.edit_meta(git=dict(read_json(received.run / "meta.json")["git"], dirty=True))
    (received.run / "untracked.json").write_text(json.dumps({"max_bytes": 1000, "files": [
        {"path": bad, "size": 5, "sha256": hashlib.sha256(b"evil\n").hexdigest(), "text": "evil\n"}]}))
    received.expkit("reproduce", str(received.run), "--check", words=("untracked.json", bad))
    assert not Path("/tmp/expkit-hostile-abs.py").exists()
    assert not (received.project.parent.parent / "escaped.py").exists()


# ------------------------------------------------------------------------ signals (e2e)
def test_sighup_stops_training_after_a_checkpoint(trained, tmp_path):
    project = trained[0]
    proc = subprocess.Popen([EXPKIT, "train", "model=mlp", "data.sample=256", "trainer.epochs=100000",
                             "trainer.progress=off", "trainer.graph=false", "name=hup"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = None
    deadline = time.monotonic() + 120
    while run is None and time.monotonic() < deadline:
        found = [p.parent for p in (project / "runs").rglob("meta.json") if p.parent.name.endswith("hup")]
        run = found[0] if found and list((found[0] / "checkpoints").glob("step-*.pt")) else None
        time.sleep(0.2)
    assert run is not None, "the run wrote no checkpoint in time"
    # Reading a run that is still training: allowed, and said.
    while not (run / "checkpoints" / "best.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    reading = run_cli(["eval", str(run)], cwd=project)
    assert reading.returncode == 0 and "is being written by another process now" in reading.stderr, reading.stderr
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGHUP, err
    meta = read_json(run / "meta.json")
    assert meta["status"] == "interrupted" and meta["signal"] == "SIGHUP", meta
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == meta["interrupted_at_step"]


def test_sigterm_to_reproduce_ends_its_rerun_and_removes_the_worktree(trained):
    project, base, _ = trained
    proc = subprocess.Popen([EXPKIT, "reproduce", str(base)], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if children:
            break
        time.sleep(0.1)
    assert children, "reproduce started no re-run"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    for child in children:  # no re-run trains on without its parent
        assert subprocess.run(["kill", "-0", child], capture_output=True).returncode != 0
    assert git(project, "worktree", "list").count("\n") == 0  # only the project itself
    assert read_json(base / "reproduce.json")["status"].startswith("interrupted by SIGTERM")


# --------------------------------------------------------------------------- disk (e2e)
def test_a_disk_that_fills_during_training_ends_the_run_as_failed(tmp_path, tmpfs):
    small_disk = tmpfs("4m")
    run = small_disk / "run"
    proc = subprocess.Popen([EXPKIT, "train", "model=mlp", "data.sample=512", "trainer.epochs=100000",
                             "trainer.checkpoint=false", "trainer.tensorboard=false", "trainer.progress=off",
                             "trainer.graph=false", f"hydra.run.dir={run}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert (run / "metrics.json").exists(), "the run wrote no metrics in time"
    # every free block taken, as another program would
    with open(small_disk / "filler", "wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert f"training failed: No space left on device writing into {run}" in err, err
    assert "No space left on device" in err and "Traceback" not in err and "Logging error" not in err, err
    assert read_json(run / "meta.json")["status"] == "failed"
    (small_disk / "filler").unlink()
    listed = json.loads(run_cli(["runs", str(small_disk), "--json"], cwd=tmp_path, check=True).stdout)
    assert [r["status"] for r in listed] == ["failed"]


def test_a_file_size_limit_is_named_not_just_file_too_large(tmp_path):
    import resource

    def limit():  # a real limit on this process's files (ulimit -f): checkpoints cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run([EXPKIT, "train", "model=mlp", "data.sample=256", "trainer.epochs=2",
                           "trainer.progress=off", "trainer.graph=false"], cwd=tmp_path, capture_output=True,
                          text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("expkit:")]
    assert len(lines) == 1 and "File too large" in lines[0] and "ulimit -f" in lines[0], proc.stderr
    assert "checkpoints/step-" in lines[0] and "there is no earlier checkpoint" in lines[0]
    assert "Traceback" not in proc.stderr
    assert read_json(next((tmp_path / "runs").rglob("meta.json")))["status"] == "failed"


def test_the_suite_tries_at_least_150_inputs():
    received_cases = len(COMMANDS_ON_A_RUN) * 2 + 1 + 2 + 2 + 2 + len(LINKS) + 1 + 2 + 1 + 1 + 1 + 4 + 12 + 1
    signal_cases = 2 + 1 + 2  # SIGHUP, SIGTERM to reproduce, eval while training, a full disk, a file-size limit
    config_dirs = len(CONFIG_DIRS) + 1 + len(UNFIT)
    total = len(CONFIG_CASES) + len(SCHED_CASES) + len(RESUME_CASES) + config_dirs + received_cases + signal_cases
    print(f"hostile inputs: {total} ({len(CONFIG_CASES)} config values, {len(SCHED_CASES)} sched, "
          f"{len(RESUME_CASES)} resume overrides, {config_dirs} config folders and data, {received_cases} received "
          f"run folders, {signal_cases} signals, concurrency and disk)",
          file=sys.stderr)
    assert total >= 150, total
