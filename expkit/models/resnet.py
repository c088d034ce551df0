"""A small ResNet (He et al. 2016, the CIFAR variant) sized for 8x8 to 32x32 inputs.

`model.skip=false` removes the skip connections and leaves the same deep plain CNN, for
the vanishing-gradient lesson.
"""

from __future__ import annotations

from torch import nn

from expkit.config.registry import MODELS
from expkit.models.layers import Norm, activation, conv_bn_act, dropout


def _norm(channels: int, norm: Norm) -> nn.Module:
    layer = norm.layer(channels, conv=True)
    return nn.Identity() if layer is None else layer


class BasicBlock(nn.Module):
    """conv-norm-act-conv-norm (+ shortcut) -act; with reg.norm_position=after each norm
    follows its activation: conv-act-norm-conv (+ shortcut) -act-norm."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str, norm: Norm, skip: bool):
        super().__init__()
        bias = norm.bias(conv=True)
        self.after = norm.after
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.bn1 = _norm(c_out, norm)
        self.act1 = activation(act)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.bn2 = _norm(c_out, norm)
        self.act2 = activation(act)
        self.skip = skip
        self.shortcut: nn.Module = nn.Identity()
        if skip and (stride != 1 or c_in != c_out):
            shortcut = [nn.Conv2d(c_in, c_out, 1, stride, bias=bias)]
            self.shortcut = nn.Sequential(*shortcut, *([] if norm.after else [_norm(c_out, norm)]))

    def forward(self, x):
        if self.after:
            out = self.conv2(self.bn1(self.act1(self.conv1(x))))
            if self.skip:
                out = out + self.shortcut(x)
            return self.bn2(self.act2(out))
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.skip:
            out = out + self.shortcut(x)
        return self.act2(out)


@MODELS.register("resnet")
def build_resnet(cfg, reg, input_shape, num_classes):
    if len(input_shape) != 3:
        raise ValueError(f"model.arch: 'resnet' needs image data (C, H, W); this data set gives {input_shape}")
    norm = Norm(reg)
    layers: list[nn.Module] = conv_bn_act(input_shape[0], cfg.width, cfg.activation, norm)
    if norm.layer(cfg.width, conv=True) is None:  # the stem keeps its three-layer shape (old checkpoints load)
        layers.insert(1, nn.Identity())
    channels = cfg.width
    for stage in range(cfg.stages):
        c_out = cfg.width * 2**stage
        for block in range(cfg.blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(channels, c_out, stride, cfg.activation, norm, cfg.skip))
            channels = c_out
        layers += dropout(reg.dropout_conv)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), *dropout(reg.dropout), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
