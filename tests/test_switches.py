"""The speed switches are correct on CPU where they apply: bf16 autocast, fp16 with a
GradScaler, channels-last, torch.compile (checkpoints stay plain)."""

from __future__ import annotations

import torch
from conftest import FAST, build_trainer

import expkit


def test_bf16_autocast_on_cpu(tmp_path):
    trainer = build_trainer(tmp_path / "run", ["trainer.precision=bf16", "data.sample=64", "trainer.tensorboard=false"])
    x, y = next(trainer.data.train.iterate())
    with trainer.autocast():
        assert trainer.model(x).dtype == torch.bfloat16
    loss, _ = trainer.train_step(x, y)
    assert torch.isfinite(loss) and trainer.scaler is None
    assert next(trainer.raw_model.parameters()).dtype == torch.float32  # weights stay fp32


def test_fp16_uses_a_grad_scaler(tmp_path):
    run_dir, metrics = expkit.train(["trainer.precision=16", *FAST], runs_root=str(tmp_path / "runs"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    assert metrics["step"] == 2


def test_channels_last(tmp_path):
    trainer = build_trainer(tmp_path / "run", ["trainer.channels_last=true", "data.sample=64",
                                               "trainer.tensorboard=false"])
    conv = next(m for m in trainer.raw_model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, y = trainer.to_device(*next(trainer.data.train.iterate()))
    assert x.is_contiguous(memory_format=torch.channels_last)
    loss, _ = trainer.train_step(x, y)
    assert torch.isfinite(loss)


def test_compile_trains_and_checkpoints_a_plain_model(tmp_path):
    run_dir, metrics = expkit.train(["trainer.compile=true", "model=mlp", "model.width=32", *FAST],
                                    runs_root=str(tmp_path / "runs"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # loads into an uncompiled model
    assert metrics["step"] == 2
