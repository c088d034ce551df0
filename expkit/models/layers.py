"""Small building blocks shared by the models."""

from __future__ import annotations

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


def conv_bn_act(c_in: int, c_out: int, act: str, batchnorm: bool, stride: int = 1) -> list[nn.Module]:
    # A conv followed by batchnorm needs no bias: batchnorm subtracts the mean anyway
    # and adds its own learned shift.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(activation(act))
    return layers


def linear_bn_act(f_in: int, f_out: int, act: str, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(f_in, f_out, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(f_out))
    layers.append(activation(act))
    return layers


def dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if p > 0 else []
