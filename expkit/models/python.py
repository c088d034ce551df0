"""model=python: the user's own model, from model.factory (an nn.Module class or a
function returning one; see config/imports.py)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from expkit.config.imports import call, describe_object, resolve
from expkit.config.registry import MODELS
from expkit.errors import ConfigError
from expkit.models.layers import norm_kind

log = logging.getLogger("expkit")


@MODELS.register("python")
def build_python(cfg, reg, input_shape, num_classes) -> nn.Module:
    model = call("model", cfg, input_shape=tuple(input_shape), num_classes=num_classes)
    if reg.dropout or reg.dropout_conv or norm_kind(reg) != "none":
        log.info("model=python: reg.dropout, reg.dropout_conv and reg.norm (reg.batchnorm) shape expkit's "
                 "built-in models only; your model has the layers it builds (reg.grad_clip and "
                 "reg.label_smoothing apply)")
    if not isinstance(model, nn.Module):
        shown = describe_object(resolve("model", cfg.factory), cfg.factory)
        raise ConfigError(f"model.factory: {shown} returned a {type(model).__name__}, not a torch.nn.Module.")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        # Lazy layers (nn.LazyLinear, ...) get their shapes from a first batch: give them one
        # now, so that init, the optimizer and the checkpoint see every parameter.
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
        model.train()
    return model
