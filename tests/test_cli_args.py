"""Every command's arguments: `--help`/`-h` print and exit 0, and malformed input gets one
line naming the key, the value and what is allowed, exit 2, no traceback, nothing made.
In-process through expkit.cli.main (the same code the console script runs)."""

from __future__ import annotations

import re

import pytest

from expkit.cli import COMMANDS, main

# The commands ../shared/CONTRACT.md promises (written out here, so a missing one fails).
CONTRACT_COMMANDS = ("train", "resume", "eval", "predict", "export", "runs", "compare", "reproduce", "sched",
                     "summary", "report", "list", "lesson")


def test_every_contract_command_exists():
    assert set(CONTRACT_COMMANDS) <= set(COMMANDS)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXPKIT_TRACEBACK", raising=False)
    return tmp_path


@pytest.mark.parametrize("command", CONTRACT_COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(command, flag, in_tmp, capsys):
    assert main([command, flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: expkit {command}"), out[:200]
    assert not list(in_tmp.iterdir())


def test_top_level_help_lists_every_command(in_tmp, capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = set(re.findall(r"^ {4}(\w+) ", out, re.M))
    assert set(CONTRACT_COMMANDS) <= listed, listed


BAD = [
    # (arguments, words the one-line message must hold)
    (["bogus"], ["invalid choice", "bogus"]),
    (["train", "sched=bogus"], ["sched", "bogus", "cosine, exponential"]),
    (["train", "optim=adam", "optim.momentum=0.9"], ["optim.momentum", "optim=adam", "rmsprop, sgd"]),
    (["train", "model.depth=3"], ["model.depth", "model=cnn", "model=mlp"]),
    (["train", "x=[1,"], ["x=[1,", "malformed"]),
    (["train", "foo=1"], ["foo", "unknown key", "trainer"]),
    (["train", "trainer.foo=1"], ["trainer.foo", "unknown key", "epochs"]),
    # A mistyped key or choice: the closest valid one is named first, as for own code's names.
    (["train", "trainer.max_epochs=3"], ["trainer.max_epochs", "'3'", "did you mean trainer.epochs?",
                                         "Keys of trainer: accelerator"]),
    (["train", "+trainer.max_epochs=3"], ["trainer.max_epochs", "did you mean trainer.epochs?"]),
    (["train", "traner.epochs=3"], ["traner.epochs", "did you mean trainer.epochs?"]),
    (["train", "trainer.early_stop.patiense=2"], ["did you mean trainer.early_stop.patience?"]),
    (["train", "optim.LR=0.1"], ["optim.LR", "did you mean optim.lr?", "Keys of optim=adamw"]),
    (["train", "optim.momentun=0.9"], ["did you mean optim.momentum (with optim=rmsprop, sgd)?"]),
    (["train", "seeed=1"], ["seeed", "did you mean seed?", "Top-level keys"]),
    (["train", "model=cnnn"], ["model", "'cnnn'", "did you mean cnn? Choose one of cnn, mlp"]),
    (["train", "task=regresion"], ["task", "'regresion'", "did you mean regression? Choose one of classification"]),
    (["train", "data=folder", "data.image_size=0"], ["data.image_size", "value 0 is not allowed", "integer >= 1"]),
    (["train", "-m", "model=cnn,mpl"], ["'mpl'", "did you mean mlp?"]),
    (["train", "trainer.progress=of"], ["trainer.progress", "'of'", "did you mean off? Choose one of auto, on, off"]),
    (["train", "optim.lr=abc"], ["optim.lr", "abc", "not of type float"]),
    (["train", "optim.lr=-1"], ["optim.lr", "-1", "> 0"]),
    (["train", "trainer.epochs=0"], ["trainer.epochs", "0", ">= 1"]),
    (["train", "optim.lr=0.1,0.2"], ["optim.lr", "sweep", "-m"]),
    (["train", "-m", "optim=sgd,adam", "optim.momentum=0.5"], ["optim.momentum", "optim=adam"]),
    (["train", "-m", "model=cnn,nosuch"], ["model", "nosuch"]),
    (["train", "data.val_fraction=1.5"], ["data.val_fraction", "[0, 1)"]),
    (["train", "optim=sgd", "optim.nesterov=true", "optim.momentum=0"], ["optim.nesterov"]),
    (["train", "name=a b/c"], ["name", "a b/c", "folder name"]),
    (["train", "name=../../x"], ["name", "../../x"]),
    (["train", "name=" + "n" * 250], ["name", "up to 100"]),
    (["train", "sweep.metric=nosuch"], ["sweep.metric", "nosuch", "val/acc"]),
    (["train", "hydra.run.dir=/proc/expkit-test"], ["hydra.run.dir", "cannot make the folder"]),
    (["resume"], ["RUN_DIR"]),
    (["resume", "nowhere"], ["nowhere", "does not exist"]),
    (["resume", ".", "--bogus"], ["--bogus"]),
    (["sched", "--out"], ["--out", "expected one argument"]),
    (["sched", "sched=bogus"], ["sched", "bogus"]),
    (["sched", "sched=step", "sched.gamma=-1"], ["sched.gamma", "> 0"]),
    (["summary", "nowhere"], ["nowhere", "not a folder"]),
    (["summary", "--metric"], ["--metric", "expected one argument"]),
    (["summary", "a", "b"], ["unrecognized arguments"]),
    (["report"], ["SWEEP_DIR"]),
    (["report", "nowhere"], ["nowhere", "not a folder"]),
    (["report", ".", "--lesson"], ["--lesson", "expected one argument"]),
    (["list", "extra"], ["unrecognized arguments"]),
    (["lesson"], ["NAME", "dropout"]),
    (["lesson", "karate"], ["karate", "not a lesson", "grad_clip"]),
    (["lesson", "dropout", "--seeds", "0"], ["--seeds", ">= 1"]),
    (["lesson", "dropout", "reg.norm=bogus"], ["reg.norm", "bogus", "instance"]),
    (["train", "reg.batchnorm=true", "reg.norm=layer"], ["reg.batchnorm", "true", "contradicts reg.norm=layer"]),
    (["train", "model=mlp", "reg.norm=instance"], ["reg.norm", "instance", "mlp"]),
    (["train", "trainer.early_stop.patience=0"], ["trainer.early_stop.patience", "null or an integer >= 1"]),
    (["train", "trainer.early_stop.monitor=train/loss"], ["trainer.early_stop.monitor", "val/acc, val/loss"]),
    (["train", "trainer.early_stop.wait=3"], ["trainer.early_stop.wait", "Keys of trainer.early_stop: min_delta"]),
    (["train", "data.test_fraction=1"], ["data.test_fraction", "[0, 1)"]),
    (["eval"], ["RUN_DIR"]),
    (["eval", "nowhere"], ["nowhere", "does not exist"]),
    (["eval", ".", "--split", "holdout"], ["--split", "holdout", "test"]),
    (["eval", "."], ["not an expkit run folder"]),
    (["predict", "."], ["PATH"]),
    (["predict", "nowhere", "x.png"], ["nowhere", "does not exist"]),
    (["predict", ".", "x.png", "--top", "many"], ["--top", "many"]),
    (["export", ".", "--format", "onnx"], ["--format", "onnx", "torchscript"]),
    (["export", "nowhere"], ["nowhere", "does not exist"]),
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_message_and_exit_2(args, words, in_tmp, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    for word in words:
        assert word in err, (word, err)
    assert not (in_tmp / "runs").exists(), "bad input left a folder"


def test_resume_with_a_bad_value_changes_nothing(in_tmp, capsys):
    from omegaconf import OmegaConf

    from expkit.config.compose import compose, task_config

    run = in_tmp / "runs" / "day" / "time"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(task_config(compose([])), resolve=True))
    (run / "meta.json").write_text('{"status": "interrupted"}\n')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["resume", str(run), "trainer.epochs=abc"]) == 2
    err = capsys.readouterr().err
    assert "trainer.epochs" in err and "abc" in err and "int" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_export_defaults_to_torch_export_and_keeps_torchscript(in_tmp, capsys):
    # torch deprecates TorchScript: the default is torch.export, both names stay selectable.
    assert main(["export", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "{exported,torchscript}" in out and "(default exported)" in out, out


@pytest.mark.parametrize("override", ["trainer.foo=1", "foo=1", "model=bogus"])
def test_no_suggestion_when_nothing_is_close(override, in_tmp, capsys):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err and override.split("=")[0] in err, err


def test_overrides_of_a_saved_config_read_values_as_train_reads_them():
    # resume and eval apply key=value to the run's saved config: `off` is the text off (as on
    # expkit train's command line), not YAML 1.1's false.
    from omegaconf import OmegaConf

    from expkit.config.compose import with_overrides
    from expkit.errors import ConfigError

    saved = OmegaConf.create({"trainer": {"progress": "auto", "epochs": 3}, "optim": {"lr": 0.1}, "name": None})
    cfg = with_overrides(saved, ["trainer.progress=off", "trainer.epochs=5", "optim.lr=1e-3", "name=null",
                                 "+trainer.extra=[1,2]"])
    assert cfg.trainer.progress == "off" and cfg.trainer.epochs == 5 and cfg.optim.lr == 1e-3
    assert cfg.name is None and list(cfg.trainer.extra) == [1, 2] and saved.trainer.progress == "auto"
    with pytest.raises(ConfigError, match="is a sweep"):
        with_overrides(saved, ["optim.lr=0.1,0.2"])
    with pytest.raises(ConfigError, match="malformed"):
        with_overrides(saved, ["optim.lr=[0.1"])
