"""Early stopping on the real Trainer, in-process: it stops when the monitored metric stops
improving, and a run stopped by a signal mid-epoch and resumed stops at the same epoch,
with the same weights, as one that never stopped (the LR schedule included)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_trainer

from expkit.training.early_stop import EarlyStop

# A plateau schedule reads the same metric, so its state has to come back exactly too.
BASE = ["data.sample=128", "model=mlp", "model.depth=1", "model.width=16", "trainer.epochs=40",
        "trainer.progress=off", "trainer.graph=false", "trainer.num_threads=1", "sched=plateau",
        "sched.patience=1", "trainer.early_stop.monitor=val/loss", "trainer.early_stop.patience=3",
        "trainer.early_stop.min_delta=0.002", "optim.lr=0.01"]


def resume_trainer(run_dir, overrides):
    from hydra import compose, initialize_config_module

    from expkit.config.compose import task_config
    from expkit.config.schema import validate
    from expkit.run.checkpoint import load_latest
    from expkit.training.build import build

    with initialize_config_module("expkit.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return build(validate(task_config(cfg)), run_dir, load_latest(run_dir / "checkpoints"))


def test_a_resumed_run_stops_at_the_same_epoch_with_the_same_weights(tmp_path):
    from expkit.training.trainer import Interrupted

    straight = build_trainer(tmp_path / "straight", BASE)
    straight.fit()
    straight.writer.close()
    stopped = straight.early_stop.stopped_epoch
    assert stopped is not None and 4 <= stopped < 40 and straight.epoch == stopped
    assert straight.early_stop.wait == 3
    # best.pt was scored on the test split, then the last weights were put back.
    last = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, last[k]) for k, v in straight.raw_model.state_dict().items())
    best = torch.load(tmp_path / "straight" / "checkpoints" / "best.pt", weights_only=True)
    assert straight.last_metrics["test/step"] == best["step"] < straight.step

    cut = build_trainer(tmp_path / "cut", BASE)
    stop_at = 2 * (stopped - 2) + 1  # two steps per epoch: in the middle of the epoch before last
    step = cut.train_step

    def train_step(x, y):
        out = step(x, y)
        if cut.step == stop_at:
            cut.stop_signal = "SIGTERM"
        return out

    cut.train_step = train_step
    with pytest.raises(Interrupted):
        cut.fit()
    cut.writer.close()
    resumed = resume_trainer(tmp_path / "cut", BASE)
    assert resumed.step == stop_at and resumed.early_stop.wait == saved_wait(tmp_path, stop_at) > 0
    resumed.fit()
    resumed.writer.close()
    assert resumed.early_stop.stopped_epoch == stopped and resumed.epoch == stopped
    assert resumed.step == straight.step
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    for name in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "straight" / "checkpoints" / name, weights_only=True)
        b = torch.load(tmp_path / "cut" / "checkpoints" / name, weights_only=True)
        assert a["step"] == b["step"] and a["early_stop"] == b["early_stop"]
        assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items()), name


def saved_wait(tmp_path, step: int) -> int:
    """The checkpoint the cut run resumes from holds the early-stopping state of its epoch."""
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == step
    return state["early_stop"]["wait"]


def test_early_stop_counts_evaluations_without_improvement_beyond_min_delta():
    es = EarlyStop("val/loss", patience=2, min_delta=0.1)
    seen = [es.update({"val/loss": v}, epoch) for epoch, v in enumerate([1.0, 0.95, 0.8, 0.79, 0.78], 1)]
    # 0.95 is better (best.pt) but not by more than 0.1: it counts as no improvement.
    assert seen == [True, True, True, True, True] and es.stopped_epoch == 5 and es.best == 0.78
    assert EarlyStop("val/acc", None, 0.0).should_stop() is False
    es = EarlyStop("val/acc", patience=1, min_delta=0.0)
    assert es.update({"val/acc": 0.5}, 1) and not es.update({"val/acc": float("nan")}, 2)
    assert es.should_stop() and es.record(epochs=3)["epoch"] == 2 and es.record(epochs=2) is None
    # A patience raised on resume lets a stopped run go on.
    raised = EarlyStop("val/acc", patience=3, min_delta=0.0)
    raised.load_state_dict(es.state_dict())
    assert not raised.should_stop() and raised.stopped_epoch is None and raised.best == 0.5


def test_without_checkpoints_the_last_weights_are_scored(tmp_path, caplog):
    trainer = build_trainer(tmp_path, ["data.sample=64", "model=mlp", "model.width=8", "trainer.epochs=1",
                                       "trainer.progress=off", "trainer.graph=false", "trainer.checkpoint=false"])
    with caplog.at_level("INFO", logger="expkit"):
        import logging

        logging.getLogger("expkit").addHandler(caplog.handler)
        try:
            metrics = trainer.fit()
        finally:
            logging.getLogger("expkit").removeHandler(caplog.handler)
            trainer.writer.close()
    assert metrics["test/step"] == trainer.step and 0 <= metrics["test/acc"] <= 1
    assert "test: scored the last weights (trainer.checkpoint=false: no best.pt)" in caplog.text
    assert not (tmp_path / "checkpoints").exists()
