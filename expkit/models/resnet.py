"""A small ResNet (He et al. 2016, the CIFAR variant) sized for 8x8 to 32x32 inputs.

`model.skip=false` removes the skip connections and leaves the same deep plain CNN, for
the vanishing-gradient lesson.
"""

from __future__ import annotations

from torch import nn

from expkit.config.registry import MODELS
from expkit.models.layers import activation, dropout


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, act: str, batchnorm: bool, skip: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)
        self.bn1 = _norm(c_out, batchnorm)
        self.act1 = activation(act)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batchnorm)
        self.bn2 = _norm(c_out, batchnorm)
        self.act2 = activation(act)
        self.skip = skip
        self.shortcut: nn.Module = nn.Identity()
        if skip and (stride != 1 or c_in != c_out):
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=not batchnorm), _norm(c_out, batchnorm)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.skip:
            out = out + self.shortcut(x)
        return self.act2(out)


@MODELS.register("resnet")
def build_resnet(cfg, reg, input_shape, num_classes):
    if len(input_shape) != 3:
        raise ValueError(f"model.arch: 'resnet' needs image data (C, H, W); this data set gives {input_shape}")
    bn = reg.batchnorm
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], cfg.width, 3, 1, 1, bias=not bn), _norm(cfg.width, bn),
        activation(cfg.activation),
    ]
    channels = cfg.width
    for stage in range(cfg.stages):
        c_out = cfg.width * 2**stage
        for block in range(cfg.blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(channels, c_out, stride, cfg.activation, bn, cfg.skip))
            channels = c_out
        layers += dropout(reg.dropout_conv)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), *dropout(reg.dropout), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
