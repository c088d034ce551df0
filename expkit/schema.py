"""Every config key in one place: its type, default and a one-line description.

The YAML files in conf/ pick values; these dataclasses say what is allowed. `validate`
checks a composed config against them before anything is built, and turns every problem
into one line that names the key, the value and what is allowed. This module imports no
torch, so `expkit train --help` can print the reference quickly.

Groups with several builders (data, model, optim, sched, init) choose their schema by the
registry key inside the group (`data.name`, `model.arch`, `optim.name`, `sched.name`,
`init.name`); a choice added with `register_schema` is validated the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid")


class ConfigError(ValueError):
    """A bad config value. The message is what the user sees, without a traceback."""


def key(default: Any, help: str, choices: tuple | None = None) -> Any:  # noqa: A002
    """A dataclass field with a one-line description (and optional allowed values)."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = key("digits", "data set: digits, mnist, fashion_mnist, cifar10, folder, synthetic")
    root: str | None = key(None, "where data sets live; null = $EXPKIT_DATA or ~/.cache/expkit/data")
    batch_size: int = key(64, "examples per step on each device (per-device, not global)")
    val_fraction: float = key(0.1, "share of the training split held out for validation")
    sample: int | None = key(None, "null = full mode; N = sample mode: train on N examples")
    num_workers: int = key(0, "DataLoader worker processes (DataLoader path only)")
    augment: bool = key(False, "random crop and horizontal flip on training images")
    download: bool = key(True, "download torchvision data sets that are missing from root")
    split_seed: int = key(0, "seed of the train/val split and the sample (same split every run)")
    loader: str = key("auto", "batching path", ("auto", "tensor", "dataloader"))
    on_device: bool = key(True, "tensor path: keep the data set on the accelerator")


@dataclass
class FolderDataConfig(DataConfig):
    image_size: int = key(32, "folder data: images are resized to image_size x image_size")
    channels: int = key(3, "folder data: 1 = grayscale, 3 = RGB", (1, 3))


@dataclass
class SyntheticDataConfig(DataConfig):
    shape: list[int] = key([1, 28, 28], "synthetic: shape of one example (C, H, W) or (F,)")
    num_classes: int = key(10, "synthetic: number of classes")
    size: int = key(2048, "synthetic: number of training examples (validation adds val_fraction)")


# ---------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    arch: str = key("cnn", "model builder: mlp, cnn, resnet, tv (torchvision) or a registered one")
    activation: str = key("relu", "nonlinearity", ACTIVATIONS)


@dataclass
class MLPConfig(ModelConfig):
    depth: int = key(3, "number of hidden layers")
    width: int = key(256, "units per hidden layer")


@dataclass
class CNNConfig(ModelConfig):
    channels: list[int] = key([32, 64], "output channels of each conv stage")
    convs_per_stage: int = key(2, "3x3 convolutions per stage")
    pool: str = key("max", "downsampling after each stage", ("max", "avg", "none"))
    hidden: int = key(128, "units of the hidden linear layer before the classifier (0 = none)")


@dataclass
class ResNetConfig(ModelConfig):
    width: int = key(16, "channels of the first stage (doubled at each later stage)")
    stages: int = key(3, "number of stages (stride 2 between stages)")
    blocks: int = key(2, "residual blocks per stage (each block has two 3x3 convs)")
    skip: bool = key(True, "use the identity/projection skip connections (false = plain deep CNN)")


@dataclass
class TorchvisionModelConfig(ModelConfig):
    name: str = key("resnet18", "torchvision.models name, adapted to the data's channels/classes")


# ------------------------------------------------------------------------------ optim
@dataclass
class OptimConfig:
    name: str = key("adamw", "sgd, adam, adamw, rmsprop, or any torch.optim class name")
    lr: float = key(1e-3, "learning rate (> 0)")
    weight_decay: float = key(0.0, "weight decay (>= 0), applied to weights only by default")
    decay_norm_and_bias: bool = key(False, "also decay biases and norm parameters")
    kwargs: dict[str, Any] = key({}, "extra keyword arguments for the torch.optim class")


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = key(0.9, "momentum in [0, 1)")
    nesterov: bool = key(False, "Nesterov momentum (needs momentum > 0)")


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = key([0.9, 0.999], "Adam betas, each in [0, 1)")
    eps: float = key(1e-8, "Adam epsilon (> 0)")


@dataclass
class RMSpropConfig(OptimConfig):
    alpha: float = key(0.99, "smoothing constant in (0, 1)")
    momentum: float = key(0.0, "momentum in [0, 1)")
    eps: float = key(1e-8, "epsilon (> 0)")


# ------------------------------------------------------------------------------ sched
SCHEDULERS = ("none", "step", "multistep", "exponential", "plateau", "cosine", "onecycle")


@dataclass
class SchedConfig:
    name: str = key("none", "LR scheduler", SCHEDULERS)
    warmup_epochs: float = key(0.0, "linear warmup from ~0 to optim.lr over this many epochs")


@dataclass
class StepSchedConfig(SchedConfig):
    step_size: int = key(5, "epochs between LR drops")
    gamma: float = key(0.1, "LR factor at each drop (> 0)")


@dataclass
class MultiStepSchedConfig(SchedConfig):
    milestones: list[int] = key([10, 15], "epochs (after warmup) at which the LR drops; increasing")
    gamma: float = key(0.1, "LR factor at each milestone (> 0)")


@dataclass
class ExponentialSchedConfig(SchedConfig):
    gamma: float = key(0.9, "LR factor every epoch (> 0)")


@dataclass
class PlateauSchedConfig(SchedConfig):
    monitor: str = key("val/loss", "validation metric watched", ("val/loss", "val/acc"))
    factor: float = key(0.1, "LR factor when the metric stops improving, in (0, 1)")
    patience: int = key(2, "evaluations without improvement before the LR drops")
    min_lr: float = key(0.0, "lower bound on the LR")


@dataclass
class CosineSchedConfig(SchedConfig):
    eta_min: float = key(0.0, "final LR of the cosine curve")


@dataclass
class OneCycleSchedConfig(SchedConfig):
    max_lr: float | None = key(None, "peak LR; null = 10 x optim.lr")
    pct_start: float = key(0.3, "share of steps spent increasing the LR, in (0, 1)")
    anneal_strategy: str = key("cos", "annealing shape", ("cos", "linear"))
    div_factor: float = key(25.0, "initial LR = max_lr / div_factor")
    final_div_factor: float = key(1e4, "final LR = initial LR / final_div_factor")


# ------------------------------------------------------------------------------- init
INIT_SCHEMES = (
    "default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
    "orthogonal", "normal", "zeros", "ones", "custom",
)


@dataclass
class InitConfig:
    name: str = key("default", "weight-init scheme for conv and linear weights", INIT_SCHEMES)
    mode: str = key("fan_in", "kaiming: which fan to preserve", ("fan_in", "fan_out"))
    nonlinearity: str | None = key(None, "kaiming: the activation its gain is for; null = the model's")
    gain: float | None = key(None, "xavier/orthogonal gain; null = 1")
    std: float = key(0.01, "std of the `normal` scheme")
    zero_bias: bool = key(True, "set biases to zero (every scheme except default)")


@dataclass
class CustomInitConfig(InitConfig):
    conv: str = key("kaiming_normal", "scheme for conv weights", INIT_SCHEMES[:-1])
    linear: str = key("xavier_uniform", "scheme for linear weights", INIT_SCHEMES[:-1])
    norm_weight: float = key(1.0, "constant for batchnorm weights")
    norm_bias: float = key(0.0, "constant for batchnorm biases")
    bias: float = key(0.0, "constant for conv/linear biases")


# -------------------------------------------------------------------------------- reg
@dataclass
class RegConfig:
    dropout: float = key(0.0, "dropout before each linear layer, in [0, 1)")
    dropout_conv: float = key(0.0, "dropout after each conv stage's pooling, in [0, 1)")
    batchnorm: bool = key(False, "batchnorm after conv/linear, before the activation")
    grad_clip: float | None = key(None, "clip gradients at this value (> 0); null = off")
    grad_clip_mode: str = key("norm", "clip the global norm or each value", ("norm", "value"))
    label_smoothing: float = key(0.0, "cross-entropy label smoothing, in [0, 1)")


# ---------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    epochs: int = key(10, "number of passes over the training data (>= 1)")
    eval_every: int = key(1, "evaluate every N epochs (and always after the last)")
    log_every: int = key(10, "log train/loss and train/acc every N steps")
    devices: int = key(1, "processes/GPUs; > 1 trains with DDP")
    accelerator: str = key("auto", "where to train", ("auto", "cpu", "cuda"))
    precision: str = key("32", "32, bf16 (autocast) or 16 (autocast + GradScaler)", ("32", "bf16", "16"))
    deterministic: bool = key(False, "deterministic algorithms (slower on GPU)")
    checkpoint: bool = key(True, "write checkpoints/last.pt and best.pt")
    keep_last: int = key(2, "numbered checkpoints kept (>= 1)")
    progress: str = key("auto", "progress bar: auto (only in a terminal), on, off", ("auto", "on", "off"))
    histogram_every: int = key(0, "weight/gradient histograms every N epochs; 0 = off")
    tensorboard: bool = key(True, "write TensorBoard events (false: train.log and metrics.json only)")
    graph: bool = key(True, "write the model graph to TensorBoard once")
    compile: bool = key(False, "torch.compile the model")
    channels_last: bool = key(False, "channels-last memory format for image models")
    num_threads: int | None = key(None, "torch CPU threads per process; null = OMP_NUM_THREADS if set, "
                                        "else usable cores / processes")
    max_steps: int | None = key(None, "stop after this many optimizer steps (debugging)")


@dataclass
class SweepConfig:
    resume: bool = key(False, "multirun: skip completed jobs, resume interrupted ones")
    metric: str = key("val/acc", "metric the sweep summary sorts by and Optuna optimizes")


# ---------------------------------------------------------------------- registries
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {
        "digits": DataConfig, "mnist": DataConfig, "fashion_mnist": DataConfig,
        "cifar10": DataConfig, "folder": FolderDataConfig, "synthetic": SyntheticDataConfig,
    },
    "model": {
        "mlp": MLPConfig, "cnn": CNNConfig, "resnet": ResNetConfig, "tv": TorchvisionModelConfig,
    },
    "optim": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamConfig, "rmsprop": RMSpropConfig},
    "sched": {
        "none": SchedConfig, "step": StepSchedConfig, "multistep": MultiStepSchedConfig,
        "exponential": ExponentialSchedConfig, "plateau": PlateauSchedConfig,
        "cosine": CosineSchedConfig, "onecycle": OneCycleSchedConfig,
    },
    "init": {name: InitConfig for name in INIT_SCHEMES if name != "custom"}
    | {"custom": CustomInitConfig},
}
# The key inside each group that picks its builder.
CHOICE_KEY = {"data": "name", "model": "arch", "optim": "name", "sched": "name", "init": "name"}
BASES = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "sched": SchedConfig,
         "init": InitConfig}
SINGLE = {"reg": RegConfig, "trainer": TrainerConfig, "sweep": SweepConfig}
TOP_LEVEL = {"seed": (int, "seed of every random number generator"),
             "name": (str, "optional run name, appended to the run folder's name")}


def register_schema(group: str, name: str, schema: type) -> None:
    """Let a user's own choice (a model in their package, say) be validated like ours."""
    SCHEMAS[group][name] = schema


def schema_for(group: str, choice: str) -> type | None:
    if choice not in SCHEMAS[group] and group == "model":
        # A user's model registers itself (and its schema) when its plugin module loads.
        from expkit.registry import MODELS

        MODELS.names()
    if choice in SCHEMAS[group]:
        return SCHEMAS[group][choice]
    if group == "optim":
        return OptimConfig  # any torch.optim class by name; checked when it is built
    return None


# ---------------------------------------------------------------------- validation
def _fmt(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value)


def type_name(typ: Any) -> str:
    return typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))


def _merge_group(prefix: str, schema: type, values: DictConfig) -> Any:
    """Merge user values into the typed schema; name the first bad key."""
    base = OmegaConf.structured(schema)
    allowed = [f.name for f in dataclasses.fields(schema)]
    for k in values:
        if k not in allowed:
            raise ConfigError(
                f"{prefix}.{k}: unknown key (value {_fmt(values[k])}). "
                f"Allowed keys here: {', '.join(allowed)}."
            )
    for k in values:
        try:
            OmegaConf.merge(base, {k: values[k]})
        except oc_errors.MissingMandatoryValue:
            raise ConfigError(f"{prefix}.{k}: a value is required here (it is ??? in the config).") from None
        except oc_errors.ValidationError:
            typ = next(f.type for f in dataclasses.fields(schema) if f.name == k)
            raise ConfigError(
                f"{prefix}.{k}: value {_fmt(values[k])} is not of type {type_name(typ)}."
            ) from None
    return OmegaConf.to_object(OmegaConf.merge(base, values))


def _check_choices(prefix: str, obj: Any) -> list[str]:
    errors = []
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if choices and value is not None and value not in choices:
            allowed = ", ".join(str(c) for c in choices)
            errors.append(f"{prefix}.{f.name}: value {value!r} is not allowed; choose one of {allowed}.")
    return errors


def _range_errors(cfg: dict[str, Any]) -> list[str]:
    """Value checks that types cannot express. Each entry: (ok, key, value, allowed)."""
    d, m, o, s, r, t = (cfg[g] for g in ("data", "model", "optim", "sched", "reg", "trainer"))
    checks = [
        (d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer >= 1"),
        (0 <= d.val_fraction < 1, "data.val_fraction", d.val_fraction, "a number in [0, 1)"),
        (d.sample is None or d.sample >= 1, "data.sample", d.sample, "null (full mode) or an integer >= 1"),
        (d.num_workers >= 0, "data.num_workers", d.num_workers, "an integer >= 0"),
        (o.lr > 0, "optim.lr", o.lr, "a number > 0"),
        (o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0"),
        (0 <= r.dropout < 1, "reg.dropout", r.dropout, "a number in [0, 1)"),
        (0 <= r.dropout_conv < 1, "reg.dropout_conv", r.dropout_conv, "a number in [0, 1)"),
        (r.grad_clip is None or r.grad_clip > 0, "reg.grad_clip", r.grad_clip, "null or a number > 0"),
        (0 <= r.label_smoothing < 1, "reg.label_smoothing", r.label_smoothing, "a number in [0, 1)"),
        (t.epochs >= 1, "trainer.epochs", t.epochs, "an integer >= 1"),
        (t.eval_every >= 1, "trainer.eval_every", t.eval_every, "an integer >= 1"),
        (t.log_every >= 1, "trainer.log_every", t.log_every, "an integer >= 1"),
        (t.devices >= 1, "trainer.devices", t.devices, "an integer >= 1"),
        (t.keep_last >= 1, "trainer.keep_last", t.keep_last, "an integer >= 1"),
        (t.histogram_every >= 0, "trainer.histogram_every", t.histogram_every, "an integer >= 0"),
        (t.max_steps is None or t.max_steps >= 1, "trainer.max_steps", t.max_steps, "null or an integer >= 1"),
        (t.num_threads is None or t.num_threads >= 1, "trainer.num_threads", t.num_threads, "null or an integer >= 1"),
        (s.warmup_epochs >= 0, "sched.warmup_epochs", s.warmup_epochs, "a number >= 0"),
        # Only worth saying when trainer.epochs itself is valid (otherwise its own error says it).
        (s.warmup_epochs < t.epochs or t.epochs < 1, "sched.warmup_epochs", s.warmup_epochs,
         f"a number below trainer.epochs ({t.epochs})"),
    ]
    if hasattr(m, "depth"):
        checks.append((m.depth >= 1, "model.depth", m.depth, "an integer >= 1"))
    if hasattr(m, "width"):
        checks.append((m.width >= 1, "model.width", m.width, "an integer >= 1"))
    if hasattr(m, "channels"):
        checks.append((len(m.channels) >= 1 and min(m.channels) >= 1, "model.channels", m.channels,
                       "a non-empty list of integers >= 1"))
    for name in ("blocks", "stages", "convs_per_stage"):
        if hasattr(m, name):
            checks.append((getattr(m, name) >= 1, f"model.{name}", getattr(m, name), "an integer >= 1"))
    if hasattr(s, "gamma"):
        checks.append((s.gamma > 0, "sched.gamma", s.gamma, "a number > 0"))
    if hasattr(s, "step_size"):
        checks.append((s.step_size >= 1, "sched.step_size", s.step_size, "an integer >= 1"))
    if hasattr(s, "milestones"):
        ms = s.milestones
        ok = len(ms) > 0 and all(a < b for a, b in zip(ms, ms[1:], strict=False)) and ms[0] >= 1
        checks.append((ok, "sched.milestones", ms, "a non-empty, strictly increasing list of epochs >= 1"))
    if hasattr(s, "factor"):
        checks.append((0 < s.factor < 1, "sched.factor", s.factor, "a number in (0, 1)"))
    if hasattr(s, "pct_start"):
        checks.append((0 < s.pct_start < 1, "sched.pct_start", s.pct_start, "a number in (0, 1)"))
    if hasattr(o, "momentum"):
        checks.append((0 <= o.momentum < 1, "optim.momentum", o.momentum, "a number in [0, 1)"))
    if hasattr(o, "nesterov"):
        checks.append((not o.nesterov or o.momentum > 0, "optim.nesterov", o.nesterov,
                       "false unless optim.momentum > 0"))
    if hasattr(o, "betas"):
        ok = len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas)
        checks.append((ok, "optim.betas", o.betas, "two numbers in [0, 1)"))
    if hasattr(o, "eps"):
        checks.append((o.eps > 0, "optim.eps", o.eps, "a number > 0"))
    if hasattr(d, "size"):
        checks.append((d.size >= 1, "data.size", d.size, "an integer >= 1"))
        checks.append((d.num_classes >= 2, "data.num_classes", d.num_classes, "an integer >= 2"))
        checks.append((len(d.shape) in (1, 3) and min(d.shape) >= 1, "data.shape", d.shape,
                       "[features] or [channels, height, width], each >= 1"))
    return [f"{k}: value {v!r} is not allowed; expected {allowed}." for ok, k, v, allowed in checks if not ok]


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check a composed config; return it as typed dataclasses keyed by group.

    Raises ConfigError whose message lists every problem found, one per line.
    """
    errors: list[str] = []
    typed: dict[str, Any] = {}
    known = set(SCHEMAS) | set(SINGLE) | set(TOP_LEVEL)
    for k in cfg:
        if k not in known:
            errors.append(f"{k}: unknown top-level key (value {_fmt(cfg[k])}). "
                          f"Allowed: {', '.join(sorted(known))}.")
    for group, choice_key in CHOICE_KEY.items():
        values = cfg.get(group)
        if values is None:
            errors.append(f"{group}: missing config group.")
            continue
        choice = values.get(choice_key)
        schema = schema_for(group, choice)
        if schema is None:
            allowed = ", ".join(sorted(SCHEMAS[group]))
            errors.append(f"{group}.{choice_key}: value {choice!r} is not a known {group}; choose one of {allowed}.")
            continue
        try:
            typed[group] = _merge_group(group, schema, values)
            errors += _check_choices(group, typed[group])
        except ConfigError as e:
            errors.append(str(e))
    for group, schema in SINGLE.items():
        try:
            typed[group] = _merge_group(group, schema, cfg.get(group) or OmegaConf.create({}))
            errors += _check_choices(group, typed[group])
        except ConfigError as e:
            errors.append(str(e))
    for k in TOP_LEVEL:
        value = cfg.get(k)
        if k == "seed" and (not isinstance(value, int) or isinstance(value, bool)):
            errors.append(f"seed: value {value!r} is not allowed; expected an integer.")
        elif k == "name" and value is not None and not isinstance(value, str):
            errors.append(f"name: value {value!r} is not allowed; expected a string or null.")
        typed[k] = value
    if not errors:
        errors += _range_errors(typed)
    if errors:
        raise ConfigError("\n".join(errors))
    return typed


def key_reference() -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) rows for `expkit train --help` and the README."""
    rows: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()

    def add(prefix: str, schema: type, note: str = "") -> None:
        for f in dataclasses.fields(schema):
            full = f"{prefix}.{f.name}"
            if full in seen:
                continue
            seen.add(full)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f.metadata.get("choices")
            allowed = f" ({', '.join(map(str, choices))})" if choices and "(" not in f.metadata["help"] else ""
            rows.append((full, type_name(f.type), repr(default), f.metadata.get("help", "") + allowed + note))

    for group in CHOICE_KEY:
        for choice, schema in SCHEMAS[group].items():
            base = BASES[group]
            extra = "" if schema is base else f" [{CHOICE_KEY[group]}={choice}]"
            add(group, schema, extra)
    for group, schema in SINGLE.items():
        add(group, schema)
    for k, (typ, help_) in TOP_LEVEL.items():
        rows.append((k, typ.__name__, "", help_))
    return rows
