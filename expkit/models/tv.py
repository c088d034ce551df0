"""torchvision classification models by name, adapted to the data's channels and classes.

Weights start random (no download). model.activation does not apply here: torchvision
models keep their own.
"""

from __future__ import annotations

from torch import nn

from expkit.config.registry import MODELS
from expkit.errors import ConfigError


@MODELS.register("tv")
def build_torchvision(cfg, reg, input_shape, num_classes):
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if cfg.name not in names:
        raise ConfigError(f"model.name: value {cfg.name!r} is not a torchvision classification model; "
                          f"choose one of {', '.join(names)}.")
    if len(input_shape) != 3:
        raise ConfigError(f"model.arch: 'tv' needs image data (C, H, W); this data set gives {input_shape}")
    model = torchvision.models.get_model(cfg.name, weights=None, num_classes=num_classes)
    if input_shape[0] != 3:
        _adapt_first_conv(model, input_shape[0])
    return model


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    """Replace the first Conv2d with one that takes `channels` input channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(
                    channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups, child.bias is not None, child.padding_mode,
                ))
                return
