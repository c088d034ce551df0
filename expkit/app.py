"""The Hydra task: validated config -> run folder -> training -> status.

    compose (Hydra) -> validate (schema.py) -> run folder + provenance (rundir.py)
      -> data, model, init, optimizer, schedule -> Trainer.fit -> metrics.json -> status

`expkit train` enters through `hydra_main` (so -m, --cfg, --info, sweepers and launchers
work as Hydra users expect), `expkit.train([...])` through Hydra's compose API, and
`expkit resume` through the config saved in the run folder. All three meet in `execute`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from expkit.rundir import RunDir, unique_dir, write_atomic
from expkit.schema import ConfigError, validate

log = logging.getLogger("expkit")
CONFIG_MODULE = "expkit.conf"
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _suffix(name: Any) -> str:
    return f"-{name}" if name else ""


def _slug(text: str) -> str:
    """A folder name from Hydra's override_dirname: no slashes, not too long."""
    text = str(text).replace("/", "_").replace(" ", "") or "defaults"
    return text if len(text) <= 120 else text[:120] + "..."


# False while `expkit train` only prints (--cfg all --resolve resolves hydra.run.dir and
# hydra.sweep.dir): the folder names are shown, no folder is made.
CLAIM_RUN_DIRS = True


def claim_run_dir(path: str) -> str:
    """hydra.run.dir's resolver: a fresh folder, the same one for every rank under torchrun."""
    if not CLAIM_RUN_DIRS:
        return path
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ:
        from expkit.dist import agree_on_run_dir

        return agree_on_run_dir(path, unique_dir)
    return unique_dir(path)


def register_resolvers() -> None:
    from expkit.sweep import direction, hydra_subdir

    for name, fn, cache in (("expkit_unique", claim_run_dir, True), ("expkit_suffix", _suffix, False),
                            ("expkit_slug", _slug, False), ("expkit_hydra_subdir", hydra_subdir, False),
                            ("expkit_direction", direction, False)):
        if not OmegaConf.has_resolver(name):
            # Cached: Hydra may resolve hydra.run.dir more than once; it must claim one folder.
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


register_resolvers()


class RunFailed(Exception):
    """What the user sees and the exit status; `recorded`: meta.json already says why."""

    def __init__(self, message: str, exit_code: int, recorded: bool = False):
        super().__init__(message)
        self.exit_code, self.recorded = exit_code, recorded


def task_config(cfg: DictConfig) -> DictConfig:
    """The config without Hydra's own `hydra` node (resolving that would claim folders)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(task_config(cfg), resolve=True)


# ---------------------------------------------------------------- entry points
def hydra_task(cfg: DictConfig) -> float | None:
    """Body of `expkit train`, called by Hydra once per job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    if multirun:  # skip/resume on sweep.resume, NaN for a failed job, the sweep summary: expkit/sweep.py
        from expkit.sweep import run_job

        return run_job(cfg, run_dir, overrides, Path(hc.sweep.dir))
    try:
        metrics = execute(cfg, run_dir, overrides, discard_on_bad_input=True)
    except RunFailed as e:
        print(f"expkit: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    return metrics.get(cfg.get("sweep", {}).get("metric", "val/acc"))


def train_api(overrides: list[str], config_dir: str | None = None,
              runs_root: str = "runs") -> tuple[Path, dict[str, float]]:
    """`expkit.train([...])`: Hydra's compose API, for notebooks."""
    from hydra import compose, initialize_config_module

    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=overrides + extra, return_hydra_config=True)
    name = cfg.get("name")
    run_dir = Path(unique_dir(time.strftime(f"{runs_root}/%Y-%m-%d/%H-%M-%S") + _suffix(name)))
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    OmegaConf.save(task_config(cfg), hydra_dir / "config.yaml")
    OmegaConf.save(cfg.hydra, hydra_dir / "hydra.yaml", resolve=False)
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
    try:
        metrics = execute(cfg, run_dir, overrides, discard_on_bad_input=True)
    except RunFailed as e:
        raise ConfigError(str(e)) if e.exit_code == EXIT_BAD_INPUT else RuntimeError(str(e)) from None
    return run_dir, metrics


# ------------------------------------------------------------------- the run
def execute(cfg: DictConfig, run_dir: Path, overrides: list[str], *, discard_on_bad_input: bool,
            resume: dict[str, Any] | None = None, provenance: bool = True) -> dict[str, float]:
    """Validate, train and record one run in `run_dir`. Raises RunFailed with the
    message for the user; the run folder records the outcome either way."""
    from expkit import dist
    from expkit.logs import close_logging, setup_logging

    rundir = RunDir(run_dir)
    rank = dist.rank()
    setup_logging(run_dir, rank)
    started_training = False
    trainer = None
    try:
        try:
            typed = validate(task_config(cfg))
        except ConfigError as e:
            raise RunFailed(str(e), EXIT_BAD_INPUT) from None
        if resume is None and rank == 0 and provenance:
            rundir.write_provenance(OmegaConf.to_yaml(task_config(cfg), resolve=True),
                                    command=sys.argv, overrides=overrides,
                                    world_size=max(dist.world_size(), typed["trainer"].devices))
        from expkit.launch import inside_worker_group

        if typed["trainer"].devices > 1 and not inside_worker_group():
            return launch_and_wait(typed, run_dir, resume)
        trainer = build(typed, cfg, run_dir, resume)
        started_training = True
        if resume is not None and rank == 0 and resume.get("on_start"):
            resume["on_start"]()  # the run's record changes only once its checkpoint fits
        with stop_signals(trainer):
            metrics = trainer.fit()
        if rank == 0:
            write_hparams(trainer, typed, cfg)
            rundir.finish("completed", metrics=metrics)
            log.info("done: val/acc %.4f (best %.4f) in %s", metrics.get("val/acc", float("nan")),
                     metrics.get("best/val/acc", float("nan")), run_dir)
            log.info("TensorBoard: tensorboard --logdir %s", run_dir)
        return metrics
    except (RunFailed, ConfigError) as e:
        failure = e if isinstance(e, RunFailed) else RunFailed(str(e), EXIT_BAD_INPUT)
        if failure.exit_code == EXIT_BAD_INPUT and not started_training and discard_on_bad_input and rank == 0:
            close_logging()
            shutil.rmtree(run_dir, ignore_errors=True)  # bad input leaves no run folder behind
        elif resume is not None and not started_training:
            pass  # a refused resume leaves the run's record (status, config) as it was
        elif rank == 0 and not failure.recorded:
            log.error("%s", failure)
            rundir.finish("failed", error=str(failure))
        raise failure from None
    except KeyboardInterrupt:
        # A second Ctrl-C/SIGTERM while stopping: leave at once, but say so in the record.
        step = trainer.step if trainer is not None else None
        if rank == 0:
            rundir.finish("interrupted", interrupted_at_step=step,
                          note="second signal: stopped without writing a checkpoint at this step")
        raise RunFailed(f"stopped at once by a second signal. Continue from the last checkpoint with: "
                        f"expkit resume {run_dir}", 130, recorded=True) from None
    except Exception as e:
        from expkit.trainer import Interrupted, NonFiniteLoss

        if isinstance(e, Interrupted):
            if rank == 0:
                rundir.finish("interrupted", interrupted_at_step=e.step, signal=e.signal_name)
                log.warning("%s; continue with: expkit resume %s", e, run_dir)
            code = 128 + getattr(signal, e.signal_name, signal.SIGTERM)
            raise RunFailed(f"{e}. Continue with: expkit resume {run_dir}", code) from None
        if isinstance(e, NonFiniteLoss):
            message = str(e)
        else:
            message = f"training failed: {type(e).__name__}: {e} (traceback in {run_dir / 'train.log'})"
            _log_traceback_to_file()
        log.error("%s", message)  # every rank: a crash on rank 1 shows in train.log too
        if rank == 0:
            rundir.finish("failed", error=message)
        raise RunFailed(message, EXIT_FAILED) from e
    finally:
        if trainer is not None:
            trainer.writer.close()  # flush: a failed or interrupted run still shows its curves
        close_logging()


def launch_and_wait(typed: dict[str, Any], run_dir: Path, resume: dict[str, Any] | None) -> dict[str, float]:
    """`trainer.devices=N`: this process made the run folder; N workers train in it."""
    import json

    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from expkit.launch import describe_failure, launch_workers

    t = typed["trainer"]
    gpus = torch.cuda.device_count() if t.accelerator != "cpu" else 0
    if t.accelerator == "cuda" and t.devices > gpus:
        raise ConfigError(f"trainer.devices: value {t.devices} is more than the {gpus} GPU(s) here; "
                          "use trainer.accelerator=cpu for CPU processes.")
    if t.accelerator == "auto" and 0 < gpus < t.devices:
        raise ConfigError(f"trainer.devices: value {t.devices} is more than the {gpus} GPU(s) here; "
                          "lower it, or set trainer.accelerator=cpu to train with CPU processes.")
    rundir = RunDir(run_dir)
    # The workers read config.yaml, so a resume records itself before they start; if they
    # then refuse the checkpoint (exit status 2), the run's record is put back as it was.
    record = {p: p.read_text() for p in (rundir.meta_path, run_dir / "config.yaml")}
    if resume is not None and resume.get("on_start"):
        resume["on_start"]()
    try:
        launch_workers(run_dir, t.devices, resume["path"] if resume is not None else None)
    except ChildFailedError as e:
        message = describe_failure(e)
        if resume is not None and e.get_first_failure()[1].exitcode == EXIT_BAD_INPUT:
            for path, text in record.items():
                write_atomic(path, text)
            raise RunFailed(message, EXIT_BAD_INPUT, recorded=True) from None
        rundir.finish("failed", error=message)  # the root cause, not a peer's "connection closed"
        if "train.log" not in message:
            message += f" (details in {run_dir / 'train.log'})"
        raise RunFailed(message, EXIT_FAILED, recorded=True) from None
    except SignalException as e:
        if rundir.read_meta().get("status") == "running":
            rundir.finish("interrupted", signal=e.sigval.name)
        raise RunFailed(f"stopped by {e.sigval.name}. Continue with: expkit resume {run_dir}",
                        128 + int(e.sigval), recorded=True) from None
    meta = rundir.read_meta()
    if meta.get("status") != "completed":
        raise RunFailed(f"the workers ended with status {meta.get('status')}: {meta.get('error', '')}", EXIT_FAILED)
    return json.loads((run_dir / "metrics.json").read_text())


def run_worker(run_dir: str, checkpoint: str | None) -> int:
    """Body of one worker of expkit's own DDP launch: train with the run folder's config,
    from `checkpoint` when resuming: the file `expkit resume` chose (and said why), so
    every worker and meta.json's record name the same one."""
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    path = Path(run_dir)
    cfg = OmegaConf.load(path / "config.yaml")
    state = None
    if checkpoint:
        from expkit.checkpoint import load_file

        state = {"state": load_file(Path(checkpoint)), "path": Path(checkpoint)}
    overrides = RunDir(path).read_meta().get("overrides", [])
    try:
        execute(cfg, path, overrides, discard_on_bad_input=False, resume=state, provenance=False)
    except RunFailed as e:
        # Tell the launching agent why, in its own error-file format; it reports the first failure.
        ErrorHandler().record_exception(e)
        return e.exit_code
    return 0


def _log_traceback_to_file() -> None:
    for handler in logging.getLogger("expkit").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(traceback.format_exc())
            handler.flush()


def pick_device(accelerator: str):
    import torch

    from expkit import dist

    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator: value 'cuda' is not available on this machine "
                          "(torch sees no GPU); use auto or cpu.")
    if accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank())


def build(typed: dict[str, Any], cfg: DictConfig, run_dir: Path, resume: dict[str, Any] | None):
    """Everything the Trainer needs, in the order the course teaches it."""
    import torch

    from expkit import dist
    from expkit.data import build_data
    from expkit.init import apply_init
    from expkit.models import build_model
    from expkit.optim import build_optim
    from expkit.sched import Schedule
    from expkit.tb import NullWriter, make_writer
    from expkit.trainer import Trainer, seed_everything

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
    log_header(typed, cfg, run_dir, device)

    data = build_data(typed["data"], typed["seed"], dist.rank(), dist.world_size(), device)
    log.info("data %s (%s, %s loader) from %s: %s; input %s; mean %s std %s",
             data.info["name"], data.info["mode"], data.info["loader"], data.info["location"],
             ", ".join(f"{k} {v}" for k, v in data.info["sizes"].items()), data.info["input_shape"],
             _short(data.mean), _short(data.std))
    log.info("class counts: %s", data.info["class_counts"])

    try:
        model = build_model(typed["model"], typed["reg"], data.input_shape, data.num_classes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    apply_init(model, typed["init"], typed["model"].activation)
    log_model(model)
    model.to(device)
    if t.channels_last and len(data.input_shape) == 3:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optim(model, typed["optim"])
    schedule = Schedule(optimizer, typed["sched"], t.epochs, len(data.train))
    if dist.world_size() > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if t.compile:
        model = torch.compile(model)

    state = resume["state"] if resume else None
    # On resume the TensorBoard writer opens only once the checkpoint fits (a refused resume
    # leaves no event file), purging what the run logged after the checkpoint's step.
    writer = NullWriter() if state else make_writer(run_dir, dist.is_main() and t.tensorboard)
    trainer = Trainer(cfg=typed, model=model, optimizer=optimizer, schedule=schedule, data=data,
                      device=device, run_dir=run_dir, writer=writer, config_plain=plain(cfg))
    if state:
        try:
            trainer.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"checkpoint {resume['path']} does not fit this model/config: "
                              f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
        trainer.writer = make_writer(run_dir, dist.is_main() and t.tensorboard, purge_step=state["step"] + 1)
        log.info("resumed from %s: epoch %d, batch %d, step %d", resume["path"], trainer.epoch,
                 trainer.batch, trainer.step)
    elif dist.is_main():
        write_text_summaries(writer, cfg, run_dir, model)
    return trainer


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def log_header(typed, cfg: DictConfig, run_dir: Path, device) -> None:
    import json

    meta = RunDir(run_dir).read_meta() if (run_dir / "meta.json").exists() else {}
    log.info("run folder: %s", run_dir)
    log.info("config:\n%s", OmegaConf.to_yaml(task_config(cfg), resolve=True).rstrip())
    log.info("git: %s", json.dumps(meta.get("git", {})))
    log.info("environment: %s; versions: %s; device %s; threads %d", json.dumps(meta.get("environment", {})),
             json.dumps(meta.get("versions", {})), device, __import__("torch").get_num_threads())


def log_model(model) -> None:
    lines, total = [], 0
    for name, module in model.named_modules():
        if name and not list(module.children()):
            count = sum(p.numel() for p in module.parameters(recurse=False))
            total += count
            lines.append(f"  {name:<24} {type(module).__name__:<14} {count:>10,}  {_describe(module)}")
    log.info("model: %d parameters\n%s", total, "\n".join(lines))


def _describe(module) -> str:
    text = module.extra_repr()
    return text if len(text) < 80 else text[:77] + "..."


def write_text_summaries(writer, cfg: DictConfig, run_dir: Path, model) -> None:
    import json

    meta = RunDir(run_dir).read_meta() if (run_dir / "meta.json").exists() else {}
    writer.text("config", OmegaConf.to_yaml(task_config(cfg), resolve=True))
    writer.text("git", json.dumps(meta.get("git", {}), indent=2))
    writer.text("model", str(model))


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", plain(cfg))
    return out


def write_hparams(trainer, typed, cfg: DictConfig) -> None:
    m = trainer.last_metrics
    metrics = {f"hparams/{k.replace('/', '_')}": float(m[k])
               for k in ("val/acc", "val/loss", "best/val/acc", "train/loss", "test/acc") if k in m}
    trainer.writer.hparams(flat_hparams(cfg), metrics, trainer.step)


class stop_signals:
    """SIGTERM, SIGINT and SIGUSR1 (SLURM's warning) ask the trainer to stop after the
    current step, write a checkpoint and exit; a second signal stops at once."""

    SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self, trainer):
        self.trainer, self.previous = trainer, {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.trainer.stop_signal is not None:
            raise KeyboardInterrupt(f"second {name}")
        self.trainer.stop_signal = name
        log.warning("%s received: stopping after this step and writing a checkpoint", name)

    def __enter__(self):
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        return False
