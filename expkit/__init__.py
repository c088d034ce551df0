"""expkit: a config-driven experiment CLI for PyTorch.

Nothing heavy is imported here, so `expkit --help` stays instant. In a notebook:

    import expkit
    run_dir, metrics = expkit.train(["model=mlp", "trainer.epochs=3"])
    run_dir, metrics = expkit.resume(run_dir, ["trainer.epochs=5"])
"""

__version__ = "0.1.0"


def train(overrides=None, config_dir=None, runs_root="runs", *, model=None, data=None, init=None):
    """Compose conf/ with `overrides`, train, and return (run_dir, final metrics).

    Own code, as objects of the notebook or as MODULE:NAME paths: `model` an nn.Module class
    or a function returning a model (gets input_shape, num_classes if it has parameters of
    these names); `data` a function returning, or directly, a torch Dataset, (x, y) tensors or
    a tuple (train, val, test) of them; `init` a function of one module, applied with
    model.apply. Bad input raises ConfigError; a failed run RuntimeError."""
    from expkit.app import train_api

    return train_api(list(overrides or []), config_dir=config_dir, runs_root=runs_root, model=model, data=data,
                     init=init)


def resume(run_dir, overrides=(), *, force=False, strict=False, model=None, data=None, init=None):
    """Continue the run in `run_dir` from its newest valid checkpoint, as `expkit resume`
    does; return (run_dir, final metrics). A run trained with objects of a notebook needs
    them again: expkit.resume(run_dir, model=Net, init=init_weights)."""
    from expkit.resuming import resume_api

    return resume_api(run_dir, list(overrides), force=force, strict=strict, model=model, data=data, init=init)


def register_model(name, schema=None):
    """Decorator: make `builder(cfg, reg, input_shape, num_classes) -> nn.Module` a model choice."""
    from expkit.config.registry import MODELS
    from expkit.config.schema import register_schema

    if schema is not None:
        register_schema("model", name, schema)
    return MODELS.register(name)
