"""reg.norm and reg.norm_position in the built-in models: the right layer in the right place
for each choice, reg.batchnorm kept as reg.norm=batch; and the gradient warnings (in process)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import build_trainer
from torch import nn

from expkit.models.cnn import build_cnn
from expkit.models.mlp import build_mlp
from expkit.models.resnet import build_resnet

NORM_TYPES = {"batch": (nn.BatchNorm1d, nn.BatchNorm2d), "layer": (nn.LayerNorm, nn.GroupNorm),
              "group": (nn.GroupNorm,), "instance": (nn.InstanceNorm2d,)}
ACTS = (nn.ReLU,)


def reg(norm=None, position="before", batchnorm=None):
    return SimpleNamespace(dropout=0.0, dropout_conv=0.0, batchnorm=batchnorm, norm=norm, norm_position=position,
                           norm_groups=8)


def kinds(model: nn.Module) -> list[str]:
    """'W' a conv/linear layer, 'N' a norm, 'A' an activation, in forward order of a Sequential."""
    out = []
    for m in model:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            out.append("W")
        elif isinstance(m, ACTS):
            out.append("A")
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            out.append("N")
    return out


@pytest.mark.parametrize("norm", ["batch", "layer", "group"])
@pytest.mark.parametrize("position", ["before", "after"])
def test_mlp_puts_the_norm_before_or_after_the_activation(norm, position):
    model = build_mlp(SimpleNamespace(depth=2, width=16, activation="relu"), reg(norm, position), (64,), 10)
    block = ["W", "N", "A"] if position == "before" else ["W", "A", "N"]
    assert kinds(model) == block * 2 + ["W"]
    norms = [m for m in model if isinstance(m, NORM_TYPES[norm])]
    assert len(norms) == 2
    # A norm right after the weights replaces their bias; after the activation it cannot.
    assert (model[1].bias is None) == (position == "before")


@pytest.mark.parametrize("norm", ["batch", "layer", "group", "instance"])
@pytest.mark.parametrize("position", ["before", "after"])
def test_cnn_and_resnet_build_each_norm_and_run(norm, position):
    cnn = build_cnn(SimpleNamespace(channels=[8, 16], convs_per_stage=1, pool="max", hidden=16, activation="relu"),
                    reg(norm, position), (1, 8, 8), 10)
    conv_kinds = kinds(cnn)[:3]
    assert conv_kinds == (["W", "N", "A"] if position == "before" else ["W", "A", "N"])
    assert isinstance(cnn[1 if position == "before" else 2], NORM_TYPES[norm])
    resnet = build_resnet(SimpleNamespace(width=8, stages=2, blocks=1, activation="relu", skip=True),
                          reg(norm, position), (1, 8, 8), 10)
    block = resnet[3]
    assert isinstance(block.bn1, NORM_TYPES[norm]) and block.after == (position == "after")
    for model in (cnn, resnet):
        assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_group_norm_groups_divide_the_channels():
    model = build_mlp(SimpleNamespace(depth=1, width=12, activation="relu"), reg("group"), (64,), 10)
    assert model[2].num_groups == 6  # reg.norm_groups=8 does not divide 12; 6 is the most that does


def test_batchnorm_true_is_norm_batch_with_the_same_weights():
    cfg = SimpleNamespace(width=8, stages=2, blocks=1, activation="relu", skip=True)
    old = build_resnet(cfg, reg(batchnorm=True), (1, 8, 8), 10).state_dict()
    new = build_resnet(cfg, reg("batch"), (1, 8, 8), 10).state_dict()
    assert {k: v.shape for k, v in old.items()} == {k: v.shape for k, v in new.items()}
    plain = build_resnet(cfg, reg(), (1, 8, 8), 10)
    assert isinstance(plain[1], nn.Identity) and not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


def test_norm_is_the_one_key_and_batchnorm_its_alias():
    from expkit.config.compose import check_overrides, task_config
    from expkit.config.schema import validate
    from expkit.errors import ConfigError

    def typed(overrides):
        return validate(task_config(check_overrides(overrides)))

    assert typed([])["reg"].norm == "batch"  # the default reg sets reg.norm itself
    assert typed(["reg.norm=layer"])["reg"].norm == "layer"
    assert typed(["reg=default", "reg.norm=group"])["reg"].norm == "group"
    assert typed(["reg=none"])["reg"].norm == "none"
    # the old key, as old configs and the lessons' sweeps give it
    assert typed(["reg.batchnorm=false"])["reg"].norm == "none"
    assert typed(["reg=none", "reg.batchnorm=true"])["reg"].norm == "batch"
    assert typed(["reg.batchnorm=true", "reg.norm=batch"])["reg"].norm == "batch"
    assert typed(["reg.batchnorm=false", "reg.norm=layer"])["reg"].norm == "layer"
    assert typed(["reg.norm=null", "reg.batchnorm=true"])["reg"].norm == "batch"  # a config saved before reg.norm
    assert typed(["reg.batchnorm=false", "reg.norm=layer", "reg.norm_position=after"])["reg"].norm_position == "after"
    with pytest.raises(ConfigError, match=r"reg.batchnorm: value true .* contradicts reg.norm=group"):
        typed(["reg.batchnorm=true", "reg.norm=group"])
    # What the records hold is the norm that trained, however it was asked for.
    resolved = typed(["reg=none", "reg.batchnorm=true"])
    assert resolved.plain["reg"]["norm"] == "batch" and resolved.plain["reg"]["batchnorm"] is True
    assert resolved["reg"].batchnorm is True  # the alias agrees, for builders that read it


def test_a_config_saved_before_the_alias_keeps_its_norm():
    from omegaconf import OmegaConf

    from expkit.config.compose import compose, task_config, upgrade_saved
    from expkit.config.schema import validate

    def saved(**reg):
        cfg = OmegaConf.create(OmegaConf.to_container(task_config(compose(["reg=none"])), resolve=True))
        cfg.reg.update(reg)
        return validate(upgrade_saved(cfg))["reg"].norm

    # Before reg.batchnorm was an alias, a reg.norm that was set won over it.
    assert saved(norm="batch", batchnorm=False) == "batch"
    assert saved(norm="layer", batchnorm=False) == "layer"
    assert saved(norm=None, batchnorm=True) == "batch"
    assert saved(norm=None, batchnorm=False) == "none"


# ---------------------------------------------------------------- gradient warnings
def first_step_warnings(tmp_path, caplog, overrides) -> str:
    trainer = build_trainer(tmp_path, ["model=mlp", "model.depth=30", "model.width=128", "reg=none", "optim=sgd",
                                       "data.sample=128", "trainer.progress=off", "trainer.graph=false", *overrides])
    x, y = next(trainer.data.train.iterate())
    with caplog.at_level(logging.WARNING, logger="expkit"):
        loss, _ = trainer.train_step(x, y)
        names, norms = trainer.gradient_norms()
        trainer.log_gradients(names, [norm.item() for norm in norms], float(loss.detach()))
    trainer.writer.close()
    return caplog.text


def test_uniformly_tiny_gradients_are_called_vanishing(tmp_path, caplog):
    """ReLU + Xavier at depth 30: every layer's gradient is ~1e-5, none far below the last
    layer's, so comparing the first layer with the last says nothing; against the loss it does."""
    text = first_step_warnings(tmp_path / "x", caplog, ["init=xavier_normal"])
    assert "vanishing gradients at step 1: 31 of 31 layers" in text
    caplog.clear()
    assert "vanishing" not in first_step_warnings(tmp_path / "k", caplog, ["init=kaiming_normal"])


def test_exploding_gradients_warn_once(tmp_path, caplog):
    trainer = build_trainer(tmp_path, ["model=mlp", "model.depth=1", "data.sample=64", "trainer.progress=off",
                                       "trainer.graph=false"])
    trainer.writer.close()
    with caplog.at_level(logging.WARNING, logger="expkit"):
        for norm in (1.0, 2.0, 1.5, 50.0):  # within 100x of the median so far: quiet
            trainer.warn_exploding(norm)
        assert "exploding gradients" not in caplog.text
        trainer.warn_exploding(500.0)
        trainer.warn_exploding(float("inf"))
    assert caplog.text.count("exploding gradients") == 1 and "before clipping" in caplog.text
    fresh = build_trainer(tmp_path / "b", ["model=mlp", "model.depth=1", "data.sample=64", "trainer.progress=off",
                                           "trainer.graph=false"])
    fresh.writer.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="expkit"):
        fresh.warn_exploding(float("nan"))
    assert "is not finite" in caplog.text
