"""expkit: a config-driven experiment CLI for PyTorch.

Nothing heavy is imported here, so `expkit --help` stays instant. In a notebook:

    import expkit
    run_dir, metrics = expkit.train(["model=mlp", "trainer.epochs=3"])
    model, cfg = expkit.load(run_dir)              # best.pt's weights, in eval mode
    result = expkit.evaluate(run_dir, split="test")
    run_dir, metrics = expkit.resume(run_dir, ["trainer.epochs=5"])
"""

from expkit.version import __version__  # noqa: F401 - expkit.__version__


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


def resume(run_dir, overrides=(), *, force=False, strict=False, model=None, data=None, init=None, trust_code=False):
    """Continue the run in `run_dir` from its newest valid checkpoint, as `expkit resume`
    does; return (run_dir, final metrics). A run trained with objects of a notebook needs
    them again: expkit.resume(run_dir, model=Net, init=init_weights). `trust_code`: as
    --trust-code, import own code the run names that is not the file it recorded."""
    from expkit.resuming import resume_api

    return resume_api(run_dir, list(overrides), force=force, strict=strict, model=model, data=data, init=init,
                      trust=trust_code)


def runs(root="runs", status=None, where=None, sort=None, limit=None):
    """Every run folder under `root` as a list of dicts, the rows `expkit runs --json` prints;
    `where`: ["optim=adamw", ...] on the resolved config."""
    from expkit.runlist import list_runs

    return list_runs(root, status=status, where=where, sort=sort, limit=limit)


def load(run_dir, checkpoint="best", device="cpu", *, model=None, data=None, init=None, trust_code=False):
    """(the run's model with the checkpoint's weights, in eval mode; the run's config).
    The model takes inputs normalized as in training: `model.expkit_info` holds the mean,
    std, classes and input shape (and the task; for regression the targets' mean and std,
    as the model predicts standardized targets). A run trained with objects of a notebook needs them
    again (model=Net, ...), as for expkit.resume; `trust_code` as for expkit.resume."""
    from expkit.afterwards.loading import load_run, run_code

    with run_code(run_dir, _objects(model, data, init), trust=trust_code):
        run = load_run(run_dir, checkpoint, device=device)
    run.model.expkit_info = {"classes": run.classes, "mean": run.mean, "std": run.std,
                             "input_shape": list(run.input_shape), "checkpoint": str(run.checkpoint),
                             "step": run.saved.step, "task": run.task.name}
    if run.task.name == "regression":  # outputs are standardized: value = output * target_std + target_mean
        mean, std = run.target_stats
        run.model.expkit_info.update(targets=run.task.names, target_mean=mean, target_std=std)
    elif run.task.name == "multilabel":
        run.model.expkit_info.update(labels=run.task.names, thresholds=run.task.threshold.tolist())
    return run.model, run.cfg


def evaluate(run_dir, split="test", checkpoint="best", overrides=None, save=True, *, model=None, data=None,
             init=None, trust_code=False):
    """What `expkit eval` computes, as a dict: split, checkpoint, step, loss, acc, per_class,
    confusion; `save` writes RUN_DIR/eval/ as the command does. Objects of a notebook that
    trained the run: as for expkit.load."""
    from expkit.afterwards.evaluate import evaluate as evaluate_run
    from expkit.afterwards.loading import run_code

    with run_code(run_dir, _objects(model, data, init), trust=trust_code):
        return evaluate_run(run_dir, split=split, checkpoint=checkpoint, overrides=list(overrides or []), save=save)


def _objects(model, data, init):
    """The notebook's objects that stand for a run's own code (strings are refused: a run's
    import paths come from its config)."""
    from expkit.config.imports import given
    from expkit.errors import ConfigError

    objects, shown = given(model=model, data=data, init=init)
    named = [g for g in shown if g not in objects]
    if named:
        raise ConfigError(f"{named[0]}: the run imports its own {named[0]} code from its config; pass an object "
                          "(the class or function itself), or nothing.")
    return objects


def register_model(name, schema=None):
    """Decorator: make `builder(cfg, reg, input_shape, num_classes) -> nn.Module` a model choice."""
    from expkit.config.registry import MODELS
    from expkit.config.schema import register_schema

    if schema is not None:
        register_schema("model", name, schema)
    return MODELS.register(name)
