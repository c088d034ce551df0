"""expkit: a config-driven experiment CLI for PyTorch.

Nothing heavy is imported here, so `expkit --help` stays instant. In a notebook:

    import expkit
    run_dir, metrics = expkit.train(["model=mlp", "trainer.epochs=3"])
    model, cfg = expkit.load(run_dir)              # best.pt's weights, in eval mode
    result = expkit.evaluate(run_dir, split="test")
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


def load(run_dir, checkpoint="best", device="cpu"):
    """(the run's model with the checkpoint's weights, in eval mode; the run's config).
    The model takes inputs normalized as in training: `model.expkit_info` holds the mean,
    std, classes and input shape."""
    from expkit.afterwards.loading import load_run

    run = load_run(run_dir, checkpoint, device=device)
    run.model.expkit_info = {"classes": run.classes, "mean": run.mean, "std": run.std,
                             "input_shape": list(run.input_shape), "checkpoint": str(run.checkpoint),
                             "step": run.state.get("step")}
    return run.model, run.cfg


def evaluate(run_dir, split="test", checkpoint="best", overrides=None, save=True):
    """What `expkit eval` computes, as a dict: split, checkpoint, step, loss, acc, per_class,
    confusion; `save` writes RUN_DIR/eval/ as the command does."""
    from expkit.afterwards.evaluate import evaluate as evaluate_run

    return evaluate_run(run_dir, split=split, checkpoint=checkpoint, overrides=list(overrides or []), save=save)


def register_model(name, schema=None):
    """Decorator: make `builder(cfg, reg, input_shape, num_classes) -> nn.Module` a model choice."""
    from expkit.config.registry import MODELS
    from expkit.config.schema import register_schema

    if schema is not None:
        register_schema("model", name, schema)
    return MODELS.register(name)
