"""expkit: a config-driven experiment CLI for PyTorch.

Nothing heavy is imported here, so `expkit --help` stays instant. In a notebook:

    import expkit
    run_dir, metrics = expkit.train(["model=mlp", "trainer.epochs=3"])
"""

__version__ = "0.1.0"


def train(overrides=None, config_dir=None, runs_root="runs"):
    """Compose conf/ with `overrides`, train, and return (run_dir, final metrics)."""
    from expkit.app import train_api

    return train_api(list(overrides or []), config_dir=config_dir, runs_root=runs_root)


def runs(root="runs", status=None, where=None, sort=None, limit=None):
    """Every run folder under `root` as a list of dicts, the rows `expkit runs --json` prints;
    `where`: ["optim=adamw", ...] on the resolved config."""
    from expkit.runlist import list_runs

    return list_runs(root, status=status, where=where, sort=sort, limit=limit)


def register_model(name, schema=None):
    """Decorator: make `builder(cfg, reg, input_shape, num_classes) -> nn.Module` a model choice."""
    from expkit.config.registry import MODELS
    from expkit.config.schema import register_schema

    if schema is not None:
        register_schema("model", name, schema)
    return MODELS.register(name)
