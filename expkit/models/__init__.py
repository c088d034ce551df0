"""Models. Each module registers its builder by name:
`builder(cfg, reg, input_shape, num_classes) -> nn.Module`."""

from __future__ import annotations

from typing import Any


def build_model(cfg: Any, reg: Any, input_shape: tuple[int, ...], num_classes: int):
    from expkit.config.registry import MODELS

    return MODELS.get(cfg.arch, key="arch")(cfg, reg, tuple(input_shape), num_classes)
