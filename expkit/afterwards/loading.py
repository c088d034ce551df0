"""A run folder's checkpoint back in the model it was trained as: the saved config (with
optional overrides, e.g. another data set of the same shape), the model built by the same
builder as training, the weights read with weights_only, and what predicting needs (the
classes and the normalization of the run's training data)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from expkit.config.compose import upgrade_saved
from expkit.errors import ConfigError
from expkit.run.checkpoint import BEST, LAST, Checkpoint
from expkit.run.folder import RunDir

NAMED = (BEST, LAST)


@dataclass
class RunModel:
    path: Path  # the run folder
    cfg: DictConfig  # the run's config, overrides applied
    typed: dict[str, Any]  # the same, validated
    model: Any  # the nn.Module, in eval mode, weights loaded
    saved: Checkpoint  # what the checkpoint file holds
    label: str  # best, last, or the checkpoint file's stem: names eval/ and export/ outputs
    checkpoint: Path
    classes: list[str]
    mean: list[float]
    std: list[float]
    input_shape: tuple[int, ...]
    device: Any
    task: Any = None  # expkit.tasks.Task: what the outputs mean (scoring, predictions)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)  # the training data's, as recorded

    @property
    def target_stats(self) -> tuple[list[float], list[float]] | None:
        """A regression's target mean and std (per target) of its training split."""
        if self.facts.get("target_mean") is None:
            return None
        return list(self.facts["target_mean"]), list(self.facts["target_std"])

    def describe(self) -> str:
        return f"checkpoint {self.label} (epoch {self.saved.epoch}, step {self.saved.step})"


def open_run(run_dir: str | Path) -> tuple[Path, DictConfig]:
    rundir = RunDir(run_dir)
    if not rundir.path.exists():
        raise ConfigError(f"RUN_DIR {str(run_dir)!r} does not exist.")
    if not rundir.path.is_dir():
        raise ConfigError(f"RUN_DIR {str(run_dir)!r} is not a folder.")
    name = rundir.config.name
    if not rundir.config.exists():
        raise ConfigError(f"{str(run_dir)!r} is not an expkit run folder (it has no {name}).")
    try:
        return rundir.path, upgrade_saved(rundir.load_config())
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{str(run_dir)!r}: cannot read its {name}: {str(e).splitlines()[0]}") from None


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`data=folder data.root=DIR` replaces the data group with that choice as conf/ composes
    it; `key=value` changes one key of the saved config."""
    from expkit.config.compose import compose, explain_compose_error, with_overrides
    from expkit.config.schema import CHOICE_KEY, SINGLE

    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} is not of the form key=value (or group=choice).")
    groups = {o.split("=", 1)[0] for o in overrides if "." not in o.split("=", 1)[0]} & (set(CHOICE_KEY) | set(SINGLE))
    in_groups = [o for o in overrides if o.lstrip("+").split("=", 1)[0].split(".")[0] in groups]
    rest = [o for o in overrides if o not in in_groups]
    cfg = cfg.copy()
    if groups:
        try:
            composed = compose(in_groups)
        except Exception as e:
            raise ConfigError(explain_compose_error(e, in_groups, None)) from None
        for group in groups:
            cfg[group] = composed[group]
    return with_overrides(cfg, rest) if rest else cfg


def checkpoint_file(path: Path, checkpoint: str) -> tuple[str, Path]:
    """(label, file) for `--checkpoint best|last|FILE`. A relative FILE is looked for in
    the run folder first (checkpoints/step-000000040.pt), then in its checkpoints/ folder
    (step-000000040.pt), then in the current folder."""
    from expkit.run.checkpoint import named_file

    folder = RunDir(path).checkpoints
    if checkpoint in NAMED:
        file = named_file(folder, checkpoint)
        if not file.exists():
            raise ConfigError(f"--checkpoint {checkpoint}: {path} has no {file.relative_to(path)} (the run wrote no "
                              "checkpoint: trainer.checkpoint=false, or it stopped before its first epoch ended).")
        return checkpoint, file
    given = Path(checkpoint)
    places = [given] if given.is_absolute() else [path / given, folder / given, given]
    file = next((p for p in places if p.is_file()), None)
    if file is None:
        raise ConfigError(f"--checkpoint {checkpoint}: no such file in {path}, its {folder.name}/ or the current "
                          "folder (give best, last, or a checkpoint file).")
    return file.name.removesuffix(".pt"), file


def read_checkpoint(file: Path, own: bool) -> Checkpoint:
    """weights_only; a damaged file or one that is not an expkit checkpoint is bad input."""
    from expkit.run.checkpoint import CheckpointError, load_file

    try:
        return load_file(file, map_location="cpu", require_checksum=own)
    except CheckpointError as e:
        raise ConfigError(f"checkpoint {file}: {' '.join(str(e).split())}") from None


def data_facts(path: Path, saved: Checkpoint, typed: dict[str, Any]) -> dict[str, Any]:
    """Classes, input shape and normalization of the run's training data: from the
    checkpoint, else meta.json, else the run's data built again (checkpoints of older runs)."""
    for facts in (saved.data, RunDir(path).meta_or_empty().get("data")):
        if facts and all(facts.get(k) is not None for k in ("classes", "input_shape", "mean", "std")):
            return facts
    from expkit.data import build_data
    from expkit.data.sources import reading_only

    with reading_only():
        data = build_data(typed["data"], typed["seed"], task=typed["task"].name)
    return {"classes": data.classes, "input_shape": list(data.input_shape), "mean": data.mean, "std": data.std,
            **(data.targets.record() if data.targets is not None else {})}


def task_for(typed: dict[str, Any], facts: dict[str, Any]):
    """The run's task, from its config and its training data's recorded facts."""
    from types import SimpleNamespace

    from expkit.data.targets import Targets
    from expkit.tasks import build_task

    name = typed["task"].name
    classes = list(facts.get("classes") or [])
    outputs = int(facts.get("outputs") or len(classes))
    targets = Targets(name, outputs, list(facts.get("targets") or classes), facts.get("target_mean"),
                      facts.get("target_std"))
    if name == "regression" and targets.mean is None:
        raise ConfigError("the run's records hold no target statistics (target_mean, target_std) for its "
                          "regression targets; its checkpoint and meta.json were not written by expkit.")
    data = SimpleNamespace(num_classes=len(classes), classes=classes, outputs=outputs, targets=targets)
    return build_task(typed, data)


@contextlib.contextmanager
def run_code(run_dir: str | Path, objects: dict[str, Any] | None = None, trust: bool = False) -> Iterator[None]:
    """A context in which the run's own code (model.factory=..., data.factory=...,
    init.function=...) may be imported: from the project folder (the current directory),
    once config/imports.check_trust has found it to be the code the run recorded (or the
    user passed --trust-code: `trust`); `objects` (group -> object, from the Python API)
    stand for code a notebook defined. Bad input before anything is imported otherwise."""
    from expkit.config.imports import check_trust, using

    rundir = RunDir(run_dir)
    if rundir.writer_alive():
        print(f"expkit: warning: {rundir.path} is being written by another process now (a run still training "
              "or resuming); its checkpoints may change while they are read", file=sys.stderr)
    with using(objects=objects):
        if rundir.config.is_file():  # else load_run says it is not a run folder
            _, saved = open_run(run_dir)
            check_trust(saved, rundir.meta_or_empty(), rundir.path, trust, is_run=RunDir.holds_run)
        yield


def load_run(run_dir: str | Path, checkpoint: str = "best", overrides: list[str] | tuple[str, ...] = (),
             device: str | None = None) -> RunModel:
    """The run's model with the checkpoint's weights, in eval mode, on `device` (default:
    trainer.accelerator's choice)."""
    import torch

    from expkit.config.schema import validate
    from expkit.training.build import build_model_for, pick_device
    from expkit.training.trainer import model_mismatch

    path, saved = open_run(run_dir)
    cfg = apply_overrides(saved, list(overrides))
    typed = validate(cfg)
    typed["data"] = dataclasses.replace(typed["data"], augment=False)  # scoring sees the plain examples
    if getattr(typed["data"], "cache", False):  # its batches equal the decode path's; builds nowhere a folder names
        typed["data"] = dataclasses.replace(typed["data"], cache=False)
    label, file = checkpoint_file(path, checkpoint)
    own = file.resolve().parent == RunDir(path).checkpoints.resolve()
    saved_state = read_checkpoint(file, own)
    from expkit.resuming import check_same_run

    check_same_run(saved_state, typed.plain, list(overrides), RunDir(path).meta_or_empty(),
                   advice="Score it with the run folder it came from.")
    facts = data_facts(path, saved_state, validate(saved) if overrides else typed)
    model = build_model_for(typed, facts["input_shape"], int(facts.get("outputs") or len(facts["classes"])))
    try:
        model.load_state_dict(saved_state.weights)  # the EMA's where the run kept one
    except RuntimeError as e:
        reason = model_mismatch(saved_state.config, typed.plain, e)
        raise ConfigError(f"checkpoint {file} does not fit this run's model: {reason}") from None
    target = torch.device(device) if device else pick_device(typed["trainer"].accelerator)
    model.to(target).eval()
    return RunModel(path=path, cfg=cfg, typed=typed, model=model, saved=saved_state, label=label, checkpoint=file,
                    classes=list(facts["classes"]), mean=list(facts["mean"]), std=list(facts["std"]),
                    input_shape=tuple(facts["input_shape"]), device=target, task=task_for(typed, facts),
                    facts=dict(facts))


def normalize(x, run: RunModel):
    """Raw inputs in [0, 1] -> what the model was trained on."""
    import torch

    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = torch.tensor(run.mean, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(run.std, dtype=x.dtype, device=x.device).view(shape)
    return (x - mean) / std
