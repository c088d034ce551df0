"""A VGG-style CNN: stages of 3x3 convs, each followed by pooling, then a small head."""

from __future__ import annotations

from torch import nn

from expkit.config.registry import MODELS
from expkit.models.layers import Norm, conv_bn_act, dropout, linear_bn_act


@MODELS.register("cnn")
def build_cnn(cfg, reg, input_shape, num_classes):
    if len(input_shape) != 3:
        raise ValueError(f"model.arch: 'cnn' needs image data (C, H, W); this data set gives {input_shape}")
    channels, height, width = input_shape
    norm = Norm(reg)
    layers: list[nn.Module] = []
    for c_out in cfg.channels:
        for _ in range(cfg.convs_per_stage):
            layers += conv_bn_act(channels, c_out, cfg.activation, norm)
            channels = c_out
        if cfg.pool != "none" and min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
            height, width = height // 2, width // 2
        layers += dropout(reg.dropout_conv)
    layers.append(nn.Flatten())
    features = channels * height * width
    if cfg.hidden > 0:
        layers += dropout(reg.dropout)
        layers += linear_bn_act(features, cfg.hidden, cfg.activation, norm)
        features = cfg.hidden
    layers += dropout(reg.dropout)
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
