"""Every config key in one place: its type, its default, the values it allows and a
one-line description. These dataclasses are the only defaults: they are registered in
Hydra's ConfigStore as the bases of the YAML files in conf/ (`defaults: [base_sgd,
_self_]`), which carry only what a choice changes, so a default cannot be written twice.

`validate` checks a composed config against them before anything is built, and turns
every problem into one line that names the key, the value and what is allowed. This
module imports no torch.

Groups with several builders (data, model, optim, sched, init, task) choose their schema by
the registry key inside the group (`data.name`, `model.arch`, `optim.name`, `sched.name`,
`init.name`, `task.name`); a choice added with `register_schema` is validated the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf import errors as oc_errors

from expkit.errors import ConfigError, did_you_mean

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid")
NORMS = ("none", "batch", "layer", "group", "instance")
# What metrics.json holds for classification, and so what a sweep can sort by or optimize;
# other tasks have their own (expkit/tasks/names.py), checked against the task chosen.
METRICS = ("val/acc", "val/loss", "best/val/acc", "train/acc", "train/loss", "test/acc", "test/loss")
# A run's name becomes part of its folder's name: one safe path component.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]{0,99}")


@dataclass(frozen=True)
class Check:
    """A value check beside its field: `ok(value)` and the words for what is allowed."""

    ok: Any
    allowed: str


def ge(n: float) -> Check:
    # inf and nan pass a comparison or fail it silently: a learning rate of 1e309 is inf
    return Check(lambda v: math.isfinite(v) and v >= n,
                 f"{'an integer' if isinstance(n, int) else 'a finite number'} >= {n}")


def gt(n: float) -> Check:
    return Check(lambda v: math.isfinite(v) and v > n, f"a finite number > {n}")


def fraction(low_open: bool = False, high_open: bool = True) -> Check:
    """A number in [0, 1), (0, 1), ..."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    return Check(lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1),
                 f"a number in {lo}0, 1{hi}")


def positive_ints(what: str = "a non-empty list of integers >= 1") -> Check:
    return Check(lambda v: len(v) >= 1 and min(v) >= 1, what)


SHAPE = Check(lambda v: len(v) in (1, 3) and min(v) >= 1, "[features] or [channels, height, width], each >= 1")
BETAS = Check(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)")
MILESTONES = Check(lambda v: len(v) > 0 and v[0] >= 1 and all(a < b for a, b in zip(v, v[1:], strict=False)),
                   "a non-empty, strictly increasing list of epochs >= 1")


def key(default: Any, help: str, choices: tuple | None = None, check: Check | None = None) -> Any:  # noqa: A002
    """A dataclass field with a one-line description, and what it allows: `choices` (a
    tuple of values) or `check` (a Check; a null value of an optional key passes)."""
    meta = {"help": help, "choices": choices, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = key("digits", "data set: digits, mnist, fashion_mnist, cifar10, folder, synthetic, csv, diabetes, "
                              "python (own)")
    root: str | None = key(None, "where data sets live; null = $EXPKIT_DATA or ~/.cache/expkit/data")
    batch_size: int = key(64, "examples per step on each device (per-device, not global)", check=ge(1))
    val_fraction: float = key(0.1, "share of the training split held out for validation", check=fraction())
    sample: int | None = key(None, "null = full mode; N = sample mode: train on N examples", check=ge(1))
    num_workers: int | None = key(0, "DataLoader worker processes (DataLoader path only); null = one per CPU "
                                     "core of this process less one, at most 8", check=ge(0))
    augment: bool = key(False, "random crop and horizontal flip on training images")
    download: bool = key(True, "download torchvision data sets that are missing from root")
    split_seed: int = key(0, "seed of the test, train/val splits and the sample (same split every run)")
    test_fraction: float = key(0.2, "share held out as the test split where the data set has none of its own, "
                                    "carved before the train/val split; 0 = no test split", check=fraction())
    loader: str = key("auto", "batching path", ("auto", "tensor", "dataloader"))
    on_device: bool = key(True, "tensor path: keep the data set on the accelerator")


@dataclass
class FolderDataConfig(DataConfig):
    image_size: int = key(32, "folder data: images are resized to image_size x image_size", check=ge(1))
    channels: int = key(3, "folder data: 1 = grayscale, 3 = RGB", (1, 3))
    cache: bool = key(False, "folder data: decode every image once into a uint8 memory map beside data.root, "
                             "then batch from it (crop and flip on the training device)")
    cache_dir: str | None = key(None, "folder data: where data.cache keeps its maps; null = ROOT.expkit-cache "
                                      "beside data.root")
    max_memory: int | None = key(None, "folder data, data.cache: MiB one process may hold; splits whose floats "
                                       "fit are kept in memory, a map that fits is memory-mapped, a larger one read "
                                       "row by row; null = half the RAM", check=ge(1))
    prefetch: int = key(2, "folder data: batches loaded ahead (DataLoader prefetch_factor per worker; "
                           "the cache's reader thread)", check=ge(1))


@dataclass
class SyntheticDataConfig(DataConfig):
    shape: list[int] = key([1, 28, 28], "synthetic: shape of one example (C, H, W) or (F,)", check=SHAPE)
    num_classes: int = key(10, "number of classes (synthetic; python: null = from the data)", check=ge(2))
    size: int = key(2048, "synthetic: number of training examples (validation adds val_fraction, test "
                          "test_fraction)", check=ge(1))


@dataclass
class PythonDataConfig(DataConfig):
    factory: str | None = key(None, "own data: MODULE:NAME of a function (or class) returning a torch Dataset, "
                                    "(x, y) tensors, or a tuple (train, val, test) of them")
    kwargs: dict[str, Any] = key({}, "own data: keyword arguments for the factory (+data.kwargs.NAME=VALUE)")
    num_classes: int | None = key(None, "own data: number of classes; null = the Dataset's `classes`, "
                                        "else the largest label + 1", check=ge(2))
    normalize: bool = key(True, "own data: standardize each channel with the training split's mean and std")


@dataclass
class CSVDataConfig(DataConfig):
    path: str | None = key(None, "csv: the file; a header row names the columns, every other row is one example")
    target: Any = key(None, "csv: the target column, or a list of columns (several targets, or one 0/1 column per "
                            "label for task=multilabel)")
    features: list[str] | None = key(None, "csv: the feature columns; null = every column but the targets")
    normalize: bool = key(True, "standardize each feature with the training split's mean and std")


@dataclass
class TabularDataConfig(DataConfig):
    normalize: bool = key(True, "standardize each feature with the training split's mean and std")


# ---------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    arch: str = key("cnn", "model builder: mlp, cnn, resnet, tv (torchvision), python (own) or a registered one")
    activation: str = key("relu", "nonlinearity", ACTIVATIONS)


@dataclass
class MLPConfig(ModelConfig):
    depth: int = key(3, "number of hidden layers", check=ge(1))
    width: int = key(256, "units per hidden layer", check=ge(1))


@dataclass
class CNNConfig(ModelConfig):
    channels: list[int] = key([32, 64], "output channels of each conv stage", check=positive_ints())
    convs_per_stage: int = key(2, "3x3 convolutions per stage", check=ge(1))
    pool: str = key("max", "downsampling after each stage", ("max", "avg", "none"))
    hidden: int = key(128, "units of the hidden linear layer before the classifier (0 = none)")


@dataclass
class ResNetConfig(ModelConfig):
    width: int = key(16, "channels of the first stage (doubled at each later stage)", check=ge(1))
    stages: int = key(3, "number of stages (stride 2 between stages)", check=ge(1))
    blocks: int = key(2, "residual blocks per stage (each block has two 3x3 convs)", check=ge(1))
    skip: bool = key(True, "use the identity/projection skip connections (false = plain deep CNN)")


@dataclass
class TorchvisionModelConfig(ModelConfig):
    name: str = key("resnet18", "torchvision.models name, adapted to the data's channels/classes")
    kwargs: dict[str, Any] = key({}, "keyword arguments for the torchvision builder (+model.kwargs.dropout=0.2)")
    small_input: str = key("warn", "an ImageNet stem (a 7x7 stride-2 conv and a max pool) on images of 64 pixels "
                                   "or less: warn, adapt (a 3x3 stride-1 conv, no pool, as CIFAR ResNets do) or "
                                   "keep", ("warn", "adapt", "keep"))


@dataclass
class PythonModelConfig(ModelConfig):
    factory: str | None = key(None, "own model: MODULE:NAME of an nn.Module class or a function returning "
                                    "one; gets input_shape and num_classes if it has parameters of these names")
    kwargs: dict[str, Any] = key({}, "own model: keyword arguments for it (+model.kwargs.NAME=VALUE)")


# ------------------------------------------------------------------------------ optim
@dataclass
class OptimConfig:
    name: str = key("adamw", "sgd, adam, adamw, rmsprop, or any torch.optim class name")
    lr: float = key(1e-3, "learning rate", check=gt(0))
    weight_decay: float = key(0.0, "weight decay, applied to weights only by default", check=ge(0.0))
    decay_norm_and_bias: bool = key(False, "also decay biases and norm parameters")
    kwargs: dict[str, Any] = key({}, "extra keyword arguments for the torch.optim class")


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = key(0.9, "momentum", check=fraction())
    nesterov: bool = key(False, "Nesterov momentum (needs momentum > 0)")


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = key([0.9, 0.999], "Adam betas", check=BETAS)
    eps: float = key(1e-8, "Adam epsilon", check=gt(0))


@dataclass
class RMSpropConfig(OptimConfig):
    alpha: float = key(0.99, "smoothing constant", check=fraction(low_open=True))
    momentum: float = key(0.0, "momentum", check=fraction())
    eps: float = key(1e-8, "epsilon", check=gt(0))


# ------------------------------------------------------------------------------ sched
SCHEDULERS = ("none", "step", "multistep", "exponential", "plateau", "cosine", "onecycle")


@dataclass
class SchedConfig:
    name: str = key("none", "LR scheduler", SCHEDULERS)
    warmup_epochs: float = key(0.0, "linear warmup from ~0 to optim.lr over this many epochs", check=ge(0.0))


@dataclass
class StepSchedConfig(SchedConfig):
    step_size: int = key(5, "epochs between LR drops", check=ge(1))
    gamma: float = key(0.1, "LR factor at each drop", check=gt(0))


@dataclass
class MultiStepSchedConfig(SchedConfig):
    milestones: list[int] = key([10, 15], "epochs (after warmup) at which the LR drops", check=MILESTONES)
    gamma: float = key(0.1, "LR factor at each milestone", check=gt(0))


@dataclass
class ExponentialSchedConfig(SchedConfig):
    gamma: float = key(0.9, "LR factor every epoch", check=gt(0))


@dataclass
class PlateauSchedConfig(SchedConfig):
    monitor: str = key("val/loss", "validation metric watched: val/loss or one of the task's (val/acc, val/rmse, ...)")
    factor: float = key(0.1, "LR factor when the metric stops improving", check=fraction(low_open=True))
    patience: int = key(2, "evaluations without improvement before the LR drops", check=ge(0))
    min_lr: float = key(0.0, "lower bound on the LR", check=ge(0.0))


@dataclass
class CosineSchedConfig(SchedConfig):
    eta_min: float = key(0.0, "final LR of the cosine curve")


@dataclass
class OneCycleSchedConfig(SchedConfig):
    max_lr: float | None = key(None, "peak LR; null = 10 x optim.lr", check=gt(0))
    pct_start: float = key(0.3, "share of steps spent increasing the LR", check=fraction(low_open=True))
    anneal_strategy: str = key("cos", "annealing shape", ("cos", "linear"))
    div_factor: float = key(25.0, "initial LR = max_lr / div_factor", check=gt(0))
    final_div_factor: float = key(1e4, "final LR = initial LR / final_div_factor", check=gt(0))


# ------------------------------------------------------------------------------- init
LAYER_SCHEMES = (
    "default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
    "orthogonal", "normal", "zeros", "ones",
)
INIT_SCHEMES = (*LAYER_SCHEMES, "custom", "function")


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
    conv: str = key("kaiming_normal", "scheme for conv weights", LAYER_SCHEMES)
    linear: str = key("xavier_uniform", "scheme for linear weights", LAYER_SCHEMES)
    norm_weight: float = key(1.0, "constant for batchnorm weights")
    norm_bias: float = key(0.0, "constant for batchnorm biases")
    bias: float = key(0.0, "constant for conv/linear biases")


@dataclass
class FunctionInitConfig(InitConfig):
    function: str | None = key(None, "own init: MODULE:NAME of a function of one module, applied with "
                                     "model.apply (to every submodule)")


# -------------------------------------------------------------------------------- reg
@dataclass
class RegConfig:
    dropout: float = key(0.0, "dropout before each linear layer", check=fraction())
    dropout_conv: float = key(0.0, "dropout after each conv stage's pooling", check=fraction())
    norm: str | None = key("none", "normalization layer after each conv/linear layer of the built-in models; "
                                   "null, in configs older than this key, = what reg.batchnorm says", NORMS)
    batchnorm: bool | None = key(None, "the old name of the batchnorm switch, kept as an alias: true = "
                                       "reg.norm=batch, false = no batchnorm (reg.norm=batch becomes none); "
                                       "null = unused")
    norm_position: str = key("before", "where the norm goes: before or after the activation", ("before", "after"))
    norm_groups: int = key(8, "reg.norm=group: groups per layer (the most up to this that divide the channels)",
                           check=ge(1))
    grad_clip: float | None = key(None, "clip gradients at this value; null = off", check=gt(0))
    grad_clip_mode: str = key("norm", "clip the global norm or each value", ("norm", "value"))
    label_smoothing: float = key(0.0, "cross-entropy label smoothing", check=fraction())


# ---------------------------------------------------------------------------- trainer
MONITORS = ("val/acc", "val/loss")  # classification's; each task has its own (expkit/tasks/names.py)


@dataclass
class EarlyStopConfig:
    monitor: str | None = key(None, "validation metric that picks best.pt and stops early (val/loss or one of the "
                                    "task's); null = sweep.metric")
    patience: int | None = key(None, "stop after this many evaluations without improvement; null = off",
                               check=ge(1))
    min_delta: float = key(0.0, "an improvement smaller than this does not count", check=ge(0.0))


@dataclass
class TrainerConfig:
    epochs: int = key(10, "number of passes over the training data", check=ge(1))
    eval_every: int = key(1, "evaluate every N epochs (and always after the last)", check=ge(1))
    log_every: int = key(10, "log train/loss and train/acc every N steps", check=ge(1))
    devices: int = key(1, "processes/GPUs; > 1 trains with DDP", check=ge(1))
    accelerator: str = key("auto", "where to train", ("auto", "cpu", "cuda"))
    precision: str = key("32", "32, bf16 (autocast) or 16 (autocast + GradScaler)", ("32", "bf16", "16"))
    deterministic: bool = key(False, "deterministic algorithms (slower on GPU)")
    checkpoint: bool = key(True, "write checkpoints/last.pt and best.pt")
    keep_last: int = key(2, "numbered checkpoints kept", check=ge(1))
    checkpoint_async: bool = key(True, "write checkpoints on a background thread while training goes on "
                                       "(one at a time; a stop signal's checkpoint is always written at once)")
    progress: str = key("auto", "progress bar: auto (only in a terminal), on, off", ("auto", "on", "off"))
    verbose: bool = key(False, "also print the full config, the model's layer table, git, environment and class "
                               "counts on the console (train.log always has them; by default the console gets one "
                               "line each for config and model)")
    histogram_every: int = key(0, "weight/gradient histograms every N epochs; 0 = off", check=ge(0))
    tensorboard: bool = key(True, "write TensorBoard events (false: train.log and metrics.json only)")
    graph: bool = key(True, "write the model graph to TensorBoard once")
    compile: bool = key(False, "torch.compile the model (checkpoints are the same either way; a resume may switch it)")
    accumulate: int = key(1, "micro-batches per optimizer step (gradient accumulation); steps, schedules, log_every "
                             "and max_steps count optimizer steps", check=ge(1))
    ema: float | None = key(None, "decay of an exponential moving average of the weights, e.g. 0.999; validation, "
                                  "test, best.pt and export use the averaged weights; null = off",
                            check=Check(lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.999"))
    ema_warmup: bool = key(False, "ramp the EMA decay up as min(ema, (1 + step) / (10 + step)), so the average "
                                  "forgets the first weights quickly")
    profile: int = key(0, "trace this many training steps with torch.profiler (after a few warm-up steps) into "
                          "profile/trace.json and log the top operators; 0 = off", check=ge(0))
    weight_norm_every: int = key(0, "log weight/norm/<layer> at the first log step at least N steps after the last; "
                                    "0 = at each epoch's last step", check=ge(0))
    channels_last: bool = key(False, "channels-last memory format for image models")
    num_threads: int | None = key(None, "torch CPU threads per process; null = OMP_NUM_THREADS if set, "
                                        "else usable cores / processes", check=ge(1))
    max_steps: int | None = key(None, "stop after this many optimizer steps (debugging)", check=ge(1))
    oversubscribe: bool = key(False, "allow more CPU processes (trainer.devices) than usable cores")
    untracked_max_kb: int = key(256, "untracked text files up to this size (KiB) are copied into the run folder "
                                     "(untracked.json); larger or binary ones are listed with size and sha256",
                                check=ge(0))
    test_at_end: bool = key(True, "after training, score the best checkpoint on the test split")
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig,
                                        metadata={"help": "early stopping", "choices": None, "check": None})


@dataclass
class SweepConfig:
    resume: bool = key(False, "multirun: skip completed jobs, resume interrupted ones")
    metric: str = key("val/acc", "metric the sweep summary sorts by and Optuna optimizes: one of the task's "
                                 "(conf/config.yaml sets the task's main one: val/acc, val/rmse, val/map)")


# ------------------------------------------------------------------------------- task
def _thresholds_ok(v: Any) -> bool:
    values = list(v) if isinstance(v, (list, tuple, ListConfig)) else [v]
    return len(values) >= 1 and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1
                                    for t in values)


@dataclass
class TaskConfig:
    name: str = key("classification", "what the model's output means: classification, regression, multilabel, "
                                      "python (own loss and metrics)")


@dataclass
class ClassificationTaskConfig(TaskConfig):
    topk: int = key(0, "also score top-k accuracy (val/topK_acc) when the data has more than k classes; 0 = off",
                    check=ge(0))


@dataclass
class RegressionTaskConfig(TaskConfig):
    loss: str = key("mse", "training loss, on targets standardized with the training split's mean and std",
                    ("mse", "l1", "huber"))
    huber_delta: float = key(1.0, "huber: where the loss turns from squared to linear, in standard deviations",
                             check=gt(0))


@dataclass
class MultilabelTaskConfig(TaskConfig):
    threshold: Any = key(0.5, "a label is predicted when its probability is above this: one number, or one per "
                              "label", check=Check(_thresholds_ok, "a number in (0, 1) or a list of them"))


@dataclass
class PythonTaskConfig(TaskConfig):
    factory: str | None = key(None, "own task: MODULE:NAME of a loss function (outputs, targets) -> scalar tensor, "
                                    "or of a class or object with loss() and metrics()")
    metrics: str | None = key(None, "own task: MODULE:NAME of a function (outputs, targets) -> {name: number} over "
                                    "a whole split, when task.factory names a loss function")
    kwargs: dict[str, Any] = key({}, "own task: keyword arguments for a factory class (+task.kwargs.NAME=VALUE)")


# ---------------------------------------------------------------------- registries
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {
        "digits": DataConfig, "mnist": DataConfig, "fashion_mnist": DataConfig,
        "cifar10": DataConfig, "folder": FolderDataConfig, "synthetic": SyntheticDataConfig,
        "python": PythonDataConfig, "csv": CSVDataConfig, "diabetes": TabularDataConfig,
    },
    "model": {
        "mlp": MLPConfig, "cnn": CNNConfig, "resnet": ResNetConfig, "tv": TorchvisionModelConfig,
        "python": PythonModelConfig,
    },
    "optim": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamConfig, "rmsprop": RMSpropConfig},
    "sched": {
        "none": SchedConfig, "step": StepSchedConfig, "multistep": MultiStepSchedConfig,
        "exponential": ExponentialSchedConfig, "plateau": PlateauSchedConfig,
        "cosine": CosineSchedConfig, "onecycle": OneCycleSchedConfig,
    },
    "init": {name: InitConfig for name in LAYER_SCHEMES}
    | {"custom": CustomInitConfig, "function": FunctionInitConfig},
    "task": {"classification": ClassificationTaskConfig, "regression": RegressionTaskConfig,
             "multilabel": MultilabelTaskConfig, "python": PythonTaskConfig},
}
# The key inside each group that picks its builder.
CHOICE_KEY = {"data": "name", "model": "arch", "optim": "name", "sched": "name", "init": "name", "task": "name"}
BASES = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "sched": SchedConfig,
         "init": InitConfig, "task": TaskConfig}
SINGLE = {"reg": RegConfig, "trainer": TrainerConfig, "sweep": SweepConfig}
TOP_LEVEL = {"seed": (int, "seed of every random number generator"),
             "name": (str, "optional run name, appended to the run folder's name")}


def register_schema(group: str, name: str, schema: type) -> None:
    """Let a user's own choice (a model in their package, say) be validated like ours."""
    SCHEMAS[group][name] = schema


def schema_for(group: str, choice: str) -> type | None:
    if choice not in SCHEMAS[group] and group == "model":
        # A user's model registers itself (and its schema) when its plugin module loads.
        from expkit.config.registry import MODELS

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
                f"{prefix}.{k}: unknown key (value {_fmt(values[k])}){did_you_mean(k, allowed, f'{prefix}.') or '.'} "
                f"Allowed keys here: {', '.join(allowed)}."
            )
    for k in values:
        try:
            OmegaConf.merge(base, {k: values[k]})
        except oc_errors.MissingMandatoryValue:
            raise ConfigError(f"{prefix}.{k}: a value is required here (it is ??? in the config).") from None
        except (oc_errors.ConfigKeyError, oc_errors.ConfigAttributeError) as e:
            raise ConfigError(f"{prefix}.{k}: {str(e).splitlines()[0]}") from None
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
        if dataclasses.is_dataclass(value):  # a nested group of keys (trainer.early_stop)
            errors += _check_choices(f"{prefix}.{f.name}", value)
        elif choices and value is not None and value not in choices:
            allowed = ", ".join(str(c) for c in choices)
            hint = did_you_mean(value, choices)
            errors.append(f"{prefix}.{f.name}: value {value!r} is not allowed"
                          f"{hint + ' Choose' if hint else '; choose'} one of {allowed}.")
    return errors


def _field_errors(prefix: str, obj: Any) -> list[str]:
    errors = []
    for f in dataclasses.fields(obj):
        check, value = f.metadata.get("check"), getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            errors += _field_errors(f"{prefix}.{f.name}", value)
        elif check is not None and value is not None and not check.ok(value):
            optional = "None" in str(f.type)
            errors.append(f"{prefix}.{f.name}: value {value!r} is not allowed; expected "
                          f"{'null or ' if optional else ''}{check.allowed}.")
    return errors


def _range_errors(typed: dict[str, Any]) -> list[str]:
    """Each field's own check (beside it in the dataclass), then the checks that involve
    two keys."""
    errors = []
    for group, obj in typed.items():
        if dataclasses.is_dataclass(obj):
            errors += _field_errors(group, obj)
    s, o, t = typed["sched"], typed["optim"], typed["trainer"]
    # Only worth saying when trainer.epochs itself is valid (otherwise its own error says it).
    if t.epochs >= 1 and s.warmup_epochs >= t.epochs:
        errors.append(f"sched.warmup_epochs: value {s.warmup_epochs!r} is not allowed; expected a number below "
                      f"trainer.epochs ({t.epochs}).")
    if getattr(o, "nesterov", False) and not o.momentum > 0:
        errors.append(f"optim.nesterov: value {o.nesterov!r} is not allowed; expected false unless "
                      "optim.momentum > 0.")
    r = typed["reg"]
    try:
        r.norm = resolve_norm(r.norm, r.batchnorm)
        r.batchnorm = r.norm == "batch"  # the alias, agreeing with it, for builders that read it
    except ConfigError as e:
        errors.append(str(e))
    if r.norm == "instance" and typed["model"].arch == "mlp":
        errors.append("reg.norm: value 'instance' is not allowed with model=mlp; instance norm normalizes each "
                      "channel of a conv layer over its pixels and an MLP has none; choose none, batch, layer "
                      "or group.")
    errors += _task_errors(typed)
    from expkit.config.imports import OWN, own_groups

    for group in own_groups(typed):  # own code: the import path is required
        choice_key, choice, path_key = OWN[group]
        if getattr(typed[group], path_key) is None:
            errors.append(f"{group}.{path_key}: a value is required with {group}={choice}; expected MODULE:NAME, "
                          f"e.g. {group}.{path_key}=mymodule:my_{'data' if group == 'data' else group} for a "
                          "function in mymodule.py of the current directory.")
    return errors


def task_metric_names(typed: dict[str, Any]) -> tuple[str, dict[str, bool]]:
    """(the task's name, its metrics of one split -> higher is better)."""
    from expkit.tasks.names import split_metrics

    task = typed["task"]
    return task.name, split_metrics(task.name, getattr(task, "topk", 0))


def _task_errors(typed: dict[str, Any]) -> list[str]:
    """The metric keys that name a task's metrics (sweep.metric, the monitors) against the
    task chosen, and the keys that only one task uses."""
    from expkit.tasks.names import full_names

    task, per_split = task_metric_names(typed)
    if task == "python":
        return []  # own metrics are known once the task's code is imported (check_task_metrics)
    errors = []
    vals = [f"val/{n}" for n in per_split]
    named = [("sweep.metric", typed["sweep"].metric, full_names(task, getattr(typed["task"], "topk", 0))),
             ("trainer.early_stop.monitor", typed["trainer"].early_stop.monitor, vals)]
    if hasattr(typed["sched"], "monitor"):
        named.append(("sched.monitor", typed["sched"].monitor, vals))
    for name, value, allowed in named:
        if value is not None and value not in allowed:
            hint = did_you_mean(value, allowed)
            errors.append(f"{name}: value {value!r} is not a metric of task={task}{hint + ' Its' if hint else '; its'} "
                          f"metrics: {', '.join(allowed)}.")
    if task != "classification" and typed["reg"].label_smoothing:
        errors.append(f"reg.label_smoothing: value {typed['reg'].label_smoothing!r} is not allowed with task={task}; "
                      "label smoothing is for cross-entropy (task=classification); use 0.")
    return errors


class RunConfig(dict):
    """A config validated once: group -> its dataclass (seed, name -> their values), and
    `plain`, the same config resolved to plain data, which is what the records hold
    (config.yaml, the checkpoint's config, TensorBoard's config text and hparams).
    `validate` makes it; the builders and the Trainer take this one object."""

    def __init__(self, groups: dict[str, Any], plain: dict[str, Any]):
        super().__init__(groups)
        self.plain = plain
        self._yaml: str | None = None

    def to_yaml(self) -> str:
        """config.yaml's text; made once (the log, TensorBoard and the run folder show it)."""
        if self._yaml is None:
            self._yaml = OmegaConf.to_yaml(OmegaConf.create(self.plain))
        return self._yaml


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config without Hydra's node, every interpolation resolved, as plain data; an
    interpolation that does not resolve (`${nope}`, `${oc.env:UNSET}`) is bad input."""
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except oc_errors.InterpolationResolutionError as e:
        raw = OmegaConf.to_container(cfg, resolve=False)
        for part in str(e.full_key).split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        reason = str(e).splitlines()[0].replace("KeyError raised while resolving interpolation: ", "")
        raise ConfigError(f"{e.full_key}: value {raw!r} does not resolve ({reason}); expected a value or an "
                          "interpolation of a key that exists (${optim.lr}, ${oc.env:NAME,default}).") from None
    out.pop("hydra", None)
    return in_record_order(out)


RECORD_ORDER = ("data", "model", "optim", "sched", "init", "reg", "trainer", "task")


def in_record_order(plain: dict[str, Any]) -> dict[str, Any]:
    """The groups in the order records have always listed them (the defaults list composes
    task and model before data, so that a data choice can pick them), the rest after."""
    return {**{k: plain[k] for k in RECORD_ORDER if k in plain},
            **{k: v for k, v in plain.items() if k not in RECORD_ORDER}}


def validate(cfg: DictConfig) -> RunConfig:
    """Check a composed config; return it as typed dataclasses keyed by group, with its
    resolved plain form (RunConfig).

    Raises ConfigError whose message lists every problem found, one per line.
    """
    if cfg.get("task") is None:  # configs from before the task group: classification was the only task
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.task = {"name": "classification"}
    plain = resolved(cfg)
    errors: list[str] = []
    typed: dict[str, Any] = {}
    known = set(SCHEMAS) | set(SINGLE) | set(TOP_LEVEL)
    for k in cfg:
        if k not in known:
            errors.append(f"{k}: unknown top-level key (value {_fmt(cfg[k])}){did_you_mean(k, known) or '.'} "
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
            hint = did_you_mean(choice, SCHEMAS[group])
            errors.append(f"{group}.{choice_key}: value {choice!r} is not a known {group}"
                          f"{hint + ' Choose' if hint else '; choose'} one of {allowed}.")
            continue
        try:
            typed[group] = _merge_group(group, schema, values)
            errors += _check_choices(group, typed[group])
        except ConfigError as e:
            errors.append(str(e))
    for group, schema in SINGLE.items():
        try:
            # Resolved: a default may interpolate another group's key (sweep.metric: the task's).
            values = plain.get(group) if isinstance(plain.get(group), dict) else {}
            typed[group] = _merge_group(group, schema, OmegaConf.create(values))
            errors += _check_choices(group, typed[group])
        except ConfigError as e:
            errors.append(str(e))
    for k in TOP_LEVEL:
        value = cfg.get(k)
        if k == "seed" and (not isinstance(value, int) or isinstance(value, bool)):
            errors.append(f"seed: value {value!r} is not allowed; expected an integer.")
        elif k == "name" and value is not None and not (isinstance(value, str) and NAME.fullmatch(value)):
            errors.append(f"name: value {value!r} is not allowed; expected null or up to 100 letters, digits "
                          "and . _ - + = , starting with a letter or digit (it becomes part of the folder name).")
        typed[k] = value
    if not errors:
        errors += _range_errors(typed)
    if not errors:  # own code (model=python, data=python, init=function): import it and check it fits
        from expkit.config.imports import check_imports

        errors += check_imports(typed)
    if errors:
        raise ConfigError("\n".join(errors))
    if isinstance(plain.get("reg"), dict):  # the records say which norm trained, not how it was asked for
        plain["reg"].update(norm=typed["reg"].norm, batchnorm=typed["reg"].batchnorm)
    return RunConfig(typed, plain)


def resolve_norm(norm: str | None, batchnorm: bool | None) -> str:
    """The one normalization reg.norm names, with reg.batchnorm (the old key) read as an
    alias: true asks for batch (refused beside another named norm), false turns batch off."""
    norm = norm or "none"
    if batchnorm is None:
        return norm
    if batchnorm:
        if norm not in ("none", "batch"):
            raise ConfigError(f"reg.batchnorm: value true (the old name of reg.norm=batch) contradicts "
                              f"reg.norm={norm}; give only reg.norm.")
        return "batch"
    return "none" if norm == "batch" else norm


def base_name(schema: type) -> str:
    """The ConfigStore name of a schema: what a YAML file of conf/ lists in its defaults."""
    return "base_" + schema.__name__.removesuffix("Config").lower()


def store_schemas() -> None:
    """Register every schema in Hydra's ConfigStore under its group, as `base_<name>`."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, by_choice in SCHEMAS.items():
        for schema in {*by_choice.values(), BASES[group]}:
            cs.store(group=group, name=base_name(schema), node=schema)
    for group, schema in SINGLE.items():
        cs.store(group=group, name=base_name(schema), node=schema)
