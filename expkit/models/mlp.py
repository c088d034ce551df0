"""A multilayer perceptron: Flatten, then `depth` x [Linear -> (norm) -> act -> (Dropout)]
(reg.norm_position=after: Linear -> act -> norm)."""

from __future__ import annotations

import math

from torch import nn

from expkit.config.registry import MODELS
from expkit.models.layers import Norm, dropout, linear_bn_act


@MODELS.register("mlp")
def build_mlp(cfg, reg, input_shape, num_classes):
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    norm = Norm(reg)
    for _ in range(cfg.depth):
        layers += linear_bn_act(features, cfg.width, cfg.activation, norm)
        layers += dropout(reg.dropout)  # dropout goes in front of the next linear layer
        features = cfg.width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
