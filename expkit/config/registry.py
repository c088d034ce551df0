"""Name -> builder tables. Built-in choices register themselves when their module is
imported; an unknown name gets an error that lists the choices."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from expkit.errors import ConfigError


class Registry:
    def __init__(self, group: str, modules: tuple[str, ...] = ()):
        self.group = group
        self._builders: dict[str, Callable[..., Any]] = {}
        self._modules: tuple[str, ...] | None = modules  # imported on first lookup, so registration is lazy

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._builders[name] = fn
            return fn

        return deco

    def _load(self) -> None:
        if self._modules is None:
            return
        for module in self._modules:
            importlib.import_module(module)
        # A user's package can add choices without editing expkit: an entry point in the
        # group `expkit.<group>` (e.g. `expkit.model`) naming a module that registers them.
        from importlib.metadata import entry_points

        for ep in entry_points(group=f"expkit.{self.group}"):
            ep.load()
        self._modules = None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._builders)

    def get(self, name: str, key: str = "name") -> Callable[..., Any]:
        self._load()
        if name not in self._builders:
            raise ConfigError(
                f"{self.group}.{key}: value {name!r} is not a known {self.group}; "
                f"choose one of {', '.join(self.names())}."
            )
        return self._builders[name]


MODELS = Registry(
    "model", ("expkit.models.mlp", "expkit.models.cnn", "expkit.models.resnet", "expkit.models.tv",
              "expkit.models.python")
)
DATASETS = Registry("data", ("expkit.data.sources", "expkit.data.python", "expkit.data.tables"))
