"""Small building blocks shared by the models."""

from __future__ import annotations

from typing import Any

from torch import nn

ACTIVATION_LAYERS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    return ACTIVATION_LAYERS[name]()


def norm_kind(reg: Any) -> str:
    """The normalization layer the built-in models use: reg.norm, with reg.batchnorm read
    as its alias (a config that validation has not resolved yet, an own model builder's)."""
    from expkit.config.schema import resolve_norm

    return resolve_norm(getattr(reg, "norm", None), getattr(reg, "batchnorm", None))


def groups_for(channels: int, wanted: int) -> int:
    """The most groups up to `wanted` that divide `channels` evenly."""
    return next(g for g in range(min(wanted, channels), 0, -1) if channels % g == 0)


def norm_layer(kind: str, channels: int, conv: bool, groups: int = 8) -> nn.Module | None:
    """One normalization layer for `channels` features (conv: per channel over (H, W)).
    layer on a conv normalizes each example over (C, H, W), i.e. GroupNorm with one group;
    instance on a linear layer has nothing to normalize over and gives no layer."""
    if kind == "none":
        return None
    if kind == "batch":
        return nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels) if conv else nn.LayerNorm(channels)
    if kind == "group":
        return nn.GroupNorm(groups_for(channels, groups), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True) if conv else None
    raise ValueError(f"reg.norm: value {kind!r} is not a known normalization")


class Norm:
    """What reg says about normalization, in the form the builders need."""

    def __init__(self, reg: Any):
        self.kind = norm_kind(reg)
        self.after = getattr(reg, "norm_position", "before") == "after"
        self.groups = getattr(reg, "norm_groups", 8)

    def layer(self, channels: int, conv: bool) -> nn.Module | None:
        return norm_layer(self.kind, channels, conv, self.groups)

    def bias(self, conv: bool) -> bool:
        # A norm right after a conv/linear layer subtracts the mean anyway and adds its own
        # learned shift, so that layer needs no bias.
        return self.after or norm_layer(self.kind, 8, conv, self.groups) is None


def _with_norm(main: nn.Module, norm: nn.Module | None, act: str, after: bool) -> list[nn.Module]:
    if norm is None:
        return [main, activation(act)]
    return [main, activation(act), norm] if after else [main, norm, activation(act)]


def conv_bn_act(c_in: int, c_out: int, act: str, norm: Norm, stride: int = 1) -> list[nn.Module]:
    """Conv -> norm -> act (reg.norm_position=before) or conv -> act -> norm (after)."""
    conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=norm.bias(conv=True))
    return _with_norm(conv, norm.layer(c_out, conv=True), act, norm.after)


def linear_bn_act(f_in: int, f_out: int, act: str, norm: Norm) -> list[nn.Module]:
    linear = nn.Linear(f_in, f_out, bias=norm.bias(conv=False))
    return _with_norm(linear, norm.layer(f_out, conv=False), act, norm.after)


def dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if p > 0 else []
