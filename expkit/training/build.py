"""Build everything a run trains with, from a validated config, in the order the course
teaches it: device and threads -> seed -> data -> model -> init -> optimizer -> schedule
-> (DDP, compile) -> Trainer. Also what the run's log and TensorBoard say about them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expkit.config.compose import flatten
from expkit.errors import ConfigError
from expkit.run.folder import RunDir
from expkit.training.logs import console_extra

if TYPE_CHECKING:
    from expkit.config.schema import RunConfig
    from expkit.run.checkpoint import Checkpoint

log = logging.getLogger("expkit")


def pick_device(accelerator: str):
    import torch

    from expkit.training import dist

    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator: value 'cuda' is not available on this machine "
                          "(torch sees no GPU); use auto or cpu.")
    if accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank())


def build(typed: RunConfig, run_dir: Path, resume: Checkpoint | None = None):
    """Everything the Trainer needs, in the order the course teaches it, from the config
    `validate` made."""
    import torch

    from expkit.data import build_data
    from expkit.training import dist
    from expkit.training.init import apply_init
    from expkit.training.optim import build_optim
    from expkit.training.sched import Schedule
    from expkit.training.tb import NullWriter, make_writer
    from expkit.training.trainer import Trainer

    t = typed["trainer"]
    device = set_up_process(typed)
    log_header(typed, run_dir, device, resumed=resume is not None)

    data = build_data(typed["data"], typed["seed"], dist.rank(), dist.world_size(), device, task=typed["task"].name)
    log_data(data, t.verbose)

    model = build_model_for(typed, data.input_shape, data.outputs)
    apply_init(model, typed["init"], typed["model"].activation)
    log_model(model, typed["model"].arch, t.verbose)
    model.to(device)
    if t.channels_last and len(data.input_shape) == 3:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optim(model, typed["optim"])
    schedule = Schedule(optimizer, typed["sched"], t.epochs, -(-len(data.train) // t.accumulate))  # optimizer steps
    if dist.initialized():  # torchrun with one process too: the same DDP path as with many
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if t.compile:
        model = torch.compile(model)

    # On resume the TensorBoard writer opens only once the checkpoint fits (a refused resume
    # leaves no event file), purging what the run logged after the checkpoint's step.
    writer = NullWriter() if resume is not None else make_writer(run_dir, dist.is_main() and t.tensorboard)
    trainer = Trainer(cfg=typed, model=model, optimizer=optimizer, schedule=schedule, data=data,
                      device=device, run_dir=run_dir, writer=writer)
    if resume is not None:
        restore(trainer, resume, run_dir)
    elif dist.is_main():
        write_text_summaries(writer, typed, run_dir, model)
    rundir = RunDir(run_dir)
    if dist.is_main() and rundir.meta_path.exists():  # once the checkpoint fits: a refused resume changes nothing
        record_data(rundir, typed["data"], data)
        rundir.update_meta(task={"name": trainer.task.name, "main": trainer.main_metric,
                                 "metrics": sorted(trainer.task.metrics())})
    return trainer


def restore(trainer, resume: Checkpoint, run_dir: Path) -> None:
    """The checkpoint into the Trainer (bad input when it does not fit), then the TensorBoard
    writer, which drops what the run logged after the checkpoint's step."""
    from expkit.training import dist
    from expkit.training.tb import make_writer

    try:
        trainer.load_checkpoint(resume)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"checkpoint {resume.path} does not fit this model/config: "
                          f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    trainer.writer = make_writer(run_dir, dist.is_main() and trainer.t.tensorboard, purge_step=resume.step + 1)
    log.info("resumed from %s: epoch %d, batch %d, step %d", resume.path, trainer.epoch,
             trainer.batch, trainer.step)


def log_data(data, verbose: bool) -> None:
    from expkit.data import describe_test

    log.info("data %s (%s, %s loader) from %s: %s; input %s; mean %s std %s",
             data.info["name"], data.info["mode"], data.info["loader"], data.info["location"],
             ", ".join(f"{k} {v}" for k, v in data.info["sizes"].items()), data.info["input_shape"],
             _short(data.mean), _short(data.std))
    log.info("%s", describe_test(data.info))
    targets = data.targets
    if targets is None or targets.task == "multilabel":
        what = "class counts" if targets is None else f"positives of the labels {', '.join(targets.names[:20])}"
        log.info("%s: %s", what, data.info["class_counts"], extra=console_extra(verbose))
    else:
        log.info("targets %s: %d output(s)%s", ", ".join(targets.names[:20]), targets.outputs,
                 f"; standardized with mean {_short(targets.mean)} std {_short(targets.std)} of the training split"
                 if targets.mean is not None else "")


def record_data(rundir: RunDir, cfg, data) -> None:
    """meta.json `data`: where the examples came from, how they were split, and the
    fingerprint of the ones used (added to what the object holds already)."""
    entry = dict(rundir.read_meta().get("data") or {})
    entry.update(data.record(), source=data.info["location"], val_fraction=cfg.val_fraction, sample=cfg.sample,
                 sha256=data.info.get("sha256"), fingerprint_of=data.info.get("fingerprint_of"))
    rundir.update_meta(data=entry)


def set_up_process(typed: RunConfig):
    """The device, threads, determinism, process group and seeds of this process; the device."""
    import torch

    from expkit.training import dist
    from expkit.training.trainer import seed_everything

    t = typed["trainer"]
    device = pick_device(t.accelerator)
    # The node's cores shared among its processes, so DDP workers do not oversubscribe the CPU.
    torch.set_num_threads(t.num_threads or dist.default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not t.deterministic
    dist.setup(device)
    seed_everything(typed["seed"] + dist.rank())  # dropout masks differ per rank, as they should
    return device


def build_model_for(typed: dict[str, Any], input_shape, outputs: int):
    """The run's model, untrained: the same builder for training, eval, predict and export.
    `outputs`: its output width, the data's classes, targets or labels."""
    from expkit.models import build_model

    try:
        model = build_model(typed["model"], typed["reg"], tuple(input_shape), outputs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    task = typed["task"].name if "task" in typed else "classification"
    if task != "python":  # an own loss takes whatever the model gives it
        check_output_width(model, tuple(input_shape), outputs, typed["model"], task)
    return model


WIDTH_WORDS = {"classification": ("classes", "one score per class"),
               "regression": ("targets", "one number per target"),
               "multilabel": ("labels", "one score per label")}


def check_output_width(model, input_shape: tuple[int, ...], num_classes: int, cfg,
                       task: str = "classification") -> None:
    """One forward pass of two blank examples, in eval mode (no statistics or dropout masks
    change, no random number drawn), before anything trains: a model whose output is not
    one score per class (a third-party ResNet18 with 10 outputs on 5 classes) is bad input,
    both numbers named, instead of a crash at the end of the run."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as e:  # the model cannot take the data's shape: said as it is
        raise ConfigError(f"model: the model cannot take inputs of shape {list(input_shape)} (the data's): "
                          f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
    finally:
        model.train(was_training)
    shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != [2, num_classes]:
        what = f"{shape[1:] if shape else type(out).__name__}"
        key = "model.factory" if getattr(cfg, "arch", None) == "python" else "model"
        noun, each = WIDTH_WORDS[task]
        raise ConfigError(f"{key}: the model's output for one example is {what}, but the data has {num_classes} "
                          f"{noun} (task={task}); expected [{num_classes}], {each} (set the model's output width, "
                          "e.g. +model.kwargs.num_classes=N, or pass num_classes through).")


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def log_header(typed: RunConfig, run_dir: Path, device, resumed: bool = False) -> None:
    """The run's header in train.log; on the console, unless trainer.verbose, one line for
    the config (the full config, git and environment only in train.log)."""
    import json

    meta = RunDir(run_dir).meta_or_empty()
    detail = console_extra(typed["trainer"].verbose)
    log.info("run folder: %s", run_dir)
    log.info("%s", config_line(typed, [] if resumed else meta.get("overrides") or []))
    log.info("config:\n%s", typed.to_yaml().rstrip(), extra=detail)
    log.info("git: %s", json.dumps(meta.get("git", {})), extra=detail)
    log.info("environment: %s; versions: %s; device %s; threads %d", json.dumps(meta.get("environment", {})),
             json.dumps(meta.get("versions", {})), device, __import__("torch").get_num_threads(), extra=detail)


def config_line(typed: dict[str, Any], overrides: list[str]) -> str:
    """The config in one line: each group's choice, the numbers most runs differ in, and
    the command line's overrides (a resume's own are in its "resumed from" line)."""
    from expkit.config.schema import CHOICE_KEY

    t, o, d = typed["trainer"], typed["optim"], typed["data"]
    # The task only when it is not classification, which every run was before the group existed.
    choices = " ".join(f"{group}={getattr(typed[group], key)}" for group, key in CHOICE_KEY.items()
                       if group != "task" or typed[group].name != "classification")
    line = (f"config: {choices}; lr {o.lr:g}, batch {d.batch_size}, {t.epochs} epoch{'s' * (t.epochs != 1)}, "
            f"seed {typed['seed']}")
    if overrides:
        line += f"; overrides: {' '.join(overrides)}"
    return line + ("" if t.verbose else " (every key: train.log, or trainer.verbose=true)")


def log_model(model, arch: str = "", verbose: bool = True) -> None:
    """The model in one line, and its layer table (train.log; the console with verbose)."""
    lines, total = [], 0
    for name, module in model.named_modules():
        if name and not list(module.children()):
            count = sum(p.numel() for p in module.parameters(recurse=False))
            total += count
            lines.append(f"  {name:<24} {type(module).__name__:<14} {count:>10,}  {_describe(module)}")
    kind = f"{arch} ({type(model).__name__})" if arch else type(model).__name__
    log.info("model: %s, %s parameters in %d layers", kind, f"{total:,}", len(lines))
    log.info("model: %d parameters\n%s", total, "\n".join(lines), extra=console_extra(verbose))


def _describe(module) -> str:
    text = module.extra_repr()
    return text if len(text) < 80 else text[:77] + "..."


def write_text_summaries(writer, typed: RunConfig, run_dir: Path, model) -> None:
    import json

    meta = RunDir(run_dir).meta_or_empty()
    writer.text("config", typed.to_yaml())
    writer.text("git", json.dumps(meta.get("git", {}), indent=2))
    writer.text("model", str(model))


def flat_hparams(typed: RunConfig) -> dict[str, Any]:
    """The config as HPARAMS takes it: dotted keys, scalar values (lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(typed.plain).items()}


def write_hparams(trainer, typed: RunConfig) -> None:
    from expkit.tasks.names import full_names

    m, task = trainer.last_metrics, trainer.task
    # Every metric of the task, train/acc aside (a training-time figure, not a result).
    keys = [k for k in full_names(task.name, getattr(task, "topk", 0), getattr(task, "own_names", None) or ())
            if k != "train/acc"]
    metrics = {f"hparams/{k.replace('/', '_')}": float(m[k]) for k in keys if isinstance(m.get(k), (int, float))}
    trainer.writer.hparams(flat_hparams(typed), metrics, trainer.step)
