"""Optimizers by name, with weight decay on weights only."""

from __future__ import annotations

import inspect
from dataclasses import asdict

import torch
from torch import nn

from expkit.errors import ConfigError

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}
# Keys of optim.* that are not constructor arguments.
NOT_ARGS = {"name", "lr", "weight_decay", "decay_norm_and_bias", "kwargs"}


def param_groups(model: nn.Module, weight_decay: float, decay_everything: bool) -> list[dict]:
    """Decay matrices and conv kernels; leave biases and norm scales/shifts alone, since
    decaying them only fights batchnorm and the output offsets."""
    if decay_everything:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    cls = getattr(torch.optim, OPTIMIZERS.get(name, name), None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        base = torch.optim.Optimizer
        names = sorted(n for n, c in vars(torch.optim).items()
                       if inspect.isclass(c) and issubclass(c, base) and c is not base)
        raise ConfigError(f"optim.name: value {name!r} is not an optimizer; choose one of "
                          f"{', '.join(OPTIMIZERS)} or a torch.optim class: {', '.join(names)}.")
    return cls


def build_optim(model: nn.Module, cfg) -> torch.optim.Optimizer:
    cls = optimizer_class(cfg.name)
    args = {k: v for k, v in asdict(cfg).items() if k not in NOT_ARGS}
    args.update(cfg.kwargs)
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    for k in args:
        if k not in accepted:
            raise ConfigError(f"optim.kwargs.{k}: {cls.__name__} takes no argument {k!r}; "
                              f"it accepts {', '.join(sorted(accepted))}.")
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    try:
        return cls(groups, lr=cfg.lr, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"optim: {cls.__name__} refused the arguments {args}: {e}") from None
