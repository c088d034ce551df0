"""Weight initialization schemes, applied by layer type.

`default` leaves PyTorch's own initialization. Any other scheme re-initializes conv and
linear weights (and zeroes their biases unless init.zero_bias=false); `custom` gives one
rule per layer type: conv, linear, norm (weight and bias constants) and bias; `function`
applies the user's own function to every submodule with model.apply (init.function).
"""

from __future__ import annotations

import math

import torch
from torch import nn

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# Gains torch.nn.init knows; gelu is closest to relu for the purpose of variance.
KAIMING_NONLINEARITY = {"relu": "relu", "gelu": "relu", "leaky_relu": "leaky_relu",
                        "tanh": "tanh", "sigmoid": "sigmoid", "linear": "linear"}
LEAKY_SLOPE = 0.01


def init_weight(weight: torch.Tensor, scheme: str, cfg, activation: str) -> None:
    nonlinearity = KAIMING_NONLINEARITY.get(cfg.nonlinearity or activation, "relu")
    gain = 1.0 if cfg.gain is None else cfg.gain
    if scheme == "default":
        return
    if scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain=gain)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, gain=gain)
    elif scheme in ("kaiming_uniform", "kaiming_normal"):
        fn = nn.init.kaiming_uniform_ if scheme == "kaiming_uniform" else nn.init.kaiming_normal_
        if nonlinearity in ("relu", "leaky_relu"):
            fn(weight, a=LEAKY_SLOPE if nonlinearity == "leaky_relu" else 0, mode=cfg.mode,
               nonlinearity=nonlinearity)
        else:
            # torch's kaiming_* accept only relu/leaky_relu; scale by the right gain ourselves.
            fan = nn.init._calculate_fan_in_and_fan_out(weight)[0 if cfg.mode == "fan_in" else 1]
            std = nn.init.calculate_gain(nonlinearity) / math.sqrt(fan)
            with torch.no_grad():
                if scheme == "kaiming_normal":
                    weight.normal_(0, std)
                else:
                    weight.uniform_(-math.sqrt(3) * std, math.sqrt(3) * std)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(weight, gain=gain)
    elif scheme == "normal":
        nn.init.normal_(weight, 0.0, cfg.std)
    elif scheme == "zeros":
        nn.init.zeros_(weight)
    elif scheme == "ones":
        nn.init.ones_(weight)
    else:  # schema.validate rejects other names before we get here
        raise ValueError(f"init.name: unknown scheme {scheme!r}")


def apply_init(model: nn.Module, cfg, activation: str) -> None:
    if cfg.name == "default":
        return
    if cfg.name == "function":
        from expkit.config.imports import target

        model.apply(target("init", cfg))
        return
    custom = cfg.name == "custom"
    for module in model.modules():
        if isinstance(module, NORM) and custom and module.weight is not None:
            nn.init.constant_(module.weight, cfg.norm_weight)
            nn.init.constant_(module.bias, cfg.norm_bias)
        elif isinstance(module, (*CONV, nn.Linear)):
            scheme = (cfg.conv if isinstance(module, CONV) else cfg.linear) if custom else cfg.name
            init_weight(module.weight, scheme, cfg, activation)
            if module.bias is not None and (custom or cfg.zero_bias):
                nn.init.constant_(module.bias, cfg.bias if custom else 0.0)
