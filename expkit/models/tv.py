"""torchvision classification models by name, adapted to the data's channels and classes.

Weights start random (no download). model.activation does not apply here: torchvision
models keep their own. model.kwargs go to the builder (dropout=0.2, ...).

An ImageNet stem (a 7x7 stride-2 convolution, then a stride-2 max pool) shrinks a 32x32
image to 8x8 before the first block: CIFAR-sized data trains far worse through it.
model.small_input says what to do when images are SMALL_INPUT pixels or less: warn (the
default), adapt (a 3x3 stride-1 first convolution and no pool, as CIFAR ResNets have) or
keep.
"""

from __future__ import annotations

import logging

from torch import nn

from expkit.config.registry import MODELS
from expkit.errors import ConfigError

log = logging.getLogger("expkit")
SMALL_INPUT = 64


@MODELS.register("tv")
def build_torchvision(cfg, reg, input_shape, num_classes):
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if cfg.name not in names:
        raise ConfigError(f"model.name: value {cfg.name!r} is not a torchvision classification model; "
                          f"choose one of {', '.join(names)}.")
    if len(input_shape) != 3:
        raise ConfigError(f"model.arch: 'tv' needs image data (C, H, W); this data set gives {input_shape}")
    kwargs = dict(getattr(cfg, "kwargs", None) or {})
    if "num_classes" in kwargs or "weights" in kwargs:
        raise ConfigError("model.kwargs: expkit sets num_classes (the data's) and weights (none: random) of "
                          "torchvision models itself; remove them from model.kwargs.")
    try:
        model = torchvision.models.get_model(cfg.name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model.kwargs: torchvision's {cfg.name} does not take {sorted(kwargs)}: {e}") from None
    if input_shape[0] != 3:
        _adapt_first_conv(model, input_shape[0])
    stem = _imagenet_stem(model)
    small = max(input_shape[1:]) <= SMALL_INPUT
    if stem is not None and small and getattr(cfg, "small_input", "warn") == "adapt":
        _adapt_stem(model, stem)
    elif stem is not None and small and getattr(cfg, "small_input", "warn") == "warn":
        log.warning("model=tv: %s has an ImageNet stem (a %dx%d stride-%d conv and a max pool) that shrinks %dx%d "
                    "images 4x before the first block; model.small_input=adapt uses a 3x3 stride-1 conv and no pool "
                    "instead (model.small_input=keep silences this)", cfg.name, *stem[1].kernel_size,
                    stem[1].stride[0], *input_shape[1:])
    return model


def _imagenet_stem(model: nn.Module) -> tuple[nn.Module, nn.Conv2d, str | None] | None:
    """(the module holding it, the first conv, the max pool's attribute name) of a ResNet-style
    stem: a first conv with stride 2 and kernel >= 7 (conv1, then maxpool beside it)."""
    conv = getattr(model, "conv1", None)
    if isinstance(conv, nn.Conv2d) and conv.stride[0] == 2 and conv.kernel_size[0] >= 7:
        return model, conv, "maxpool" if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d) else None
    return None


def _adapt_stem(model: nn.Module, stem) -> None:
    holder, conv, pool = stem
    holder.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)
    if pool is not None:
        setattr(holder, pool, nn.Identity())


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
