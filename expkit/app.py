"""The run's lifecycle, decided in one place: status, exit code and clean-up.

    expkit train   commands/train.py: compose, check, claim the folder -> Hydra -> execute
    expkit resume  resuming.py: pick the checkpoint, check the overrides -> execute
    expkit.train   train_api -> execute
    a sweep job    sweep.run_job -> execute

    execute: validate -> provenance (rank 0) -> [launch N workers | build -> Trainer.fit]
             -> hparams -> meta.json status -> metrics

Every way a run can end is mapped here to a status in meta.json and an exit code:
completed 0; bad input 2 (a new run's folder is removed, a resumed run's record is left
as it was); stopped by signal N 128+N (interrupted, after a checkpoint); anything else 1
(failed, with the error in meta.json and the traceback in train.log).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from expkit.config.compose import compose, task_config, upgrade_saved
from expkit.config.imports import OWN, given, using
from expkit.config.imports import provenance as own_code
from expkit.config.resolvers import suffix
from expkit.config.schema import validate
from expkit.errors import EXIT_BAD_INPUT, EXIT_FAILED, ConfigError, RunFailed
from expkit.run.folder import FolderLock, RunDir, unique_dir, write_atomic
from expkit.run.provenance import command_line
from expkit.training.build import build, write_hparams

if TYPE_CHECKING:
    from expkit.config.schema import RunConfig
    from expkit.run.checkpoint import Checkpoint

log = logging.getLogger("expkit")


def train_api(overrides: list[str], config_dir: str | None = None, runs_root: str = "runs",
              model: Any = None, data: Any = None, init: Any = None) -> tuple[Path, dict[str, float]]:
    """`expkit.train([...])`: Hydra's compose API, for notebooks. `model`, `data`, `init`:
    own code, as import paths or as the objects themselves (imports.given)."""
    objects, shown = given(model=model, data=data, init=init)
    chosen = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    for group in shown:
        if group in chosen:
            raise ConfigError(f"{group}: given twice, as the override {group}=... and as the {group} argument.")
    overrides = [*(f"{g}={OWN[g][1]}" for g in shown), *overrides]
    cfg = compose(overrides, config_dir, hydra=True)
    for group, path in shown.items():
        cfg[group][OWN[group][2]] = path
    if objects and cfg.trainer.get("devices", 1) > 1:
        raise ConfigError("trainer.devices: objects given to expkit.train stay in this process; to train with "
                          "several processes, name your code by import path (model.factory=MODULE:NAME, ...).")
    run_dir = Path(unique_dir(time.strftime(f"{runs_root}/%Y-%m-%d/%H-%M-%S") + suffix(cfg.get("name"))))
    rundir = RunDir(run_dir)
    rundir.hydra_dir.mkdir(parents=True)
    OmegaConf.save(task_config(cfg), rundir.hydra_config)
    OmegaConf.save(cfg.hydra, rundir.hydra_settings, resolve=False)
    OmegaConf.save(OmegaConf.create(overrides), rundir.hydra_overrides)
    try:
        with using(objects=objects):
            metrics = execute(cfg, run_dir, overrides, discard_on_bad_input=True)
    except RunFailed as e:
        raise ConfigError(str(e)) if e.exit_code == EXIT_BAD_INPUT else RuntimeError(str(e)) from None
    return run_dir, metrics


def execute(cfg: DictConfig, run_dir: Path, overrides: list[str], *, discard_on_bad_input: bool,
            resume: Checkpoint | None = None, on_resume: Callable[[], None] | None = None,
            provenance: bool = True, typed: RunConfig | None = None) -> dict[str, float]:
    """Validate, train and record one run in `run_dir`. Raises RunFailed with the
    message for the user; the run folder records the outcome either way. When resuming,
    `on_resume` records the resume once the checkpoint has loaded into the model.
    `provenance=False`: a worker of expkit's own DDP launch (the launcher writes the
    record and holds the folder's lock). `typed`: `cfg` validated already (a resume
    checks it before it picks the checkpoint), so it is not validated again."""
    from expkit.training.launch import inside_worker_group

    life = RunLife(run_dir, resume=resume, on_resume=on_resume, provenance=provenance,
                   discard_on_bad_input=discard_on_bad_input)
    with life.stop:
        try:
            typed = life.start(cfg, overrides, typed)
            if typed["trainer"].devices > 1 and not inside_worker_group():
                return life.launch(typed)
            return life.train(typed)
        except (RunFailed, ConfigError) as e:
            raise life.refused(e) from None
        except Stopped as e:
            raise life.stopped(e) from None
        except KeyboardInterrupt:  # Ctrl-C where no handler could be set (not the main thread)
            raise life.stopped(Stopped("SIGINT", second=life.trainer is not None)) from None
        except Exception as e:
            raise life.crashed(e) from e
        finally:
            life.close()


class RunLife:
    """One run's life in its folder, in the order execute() goes through it: start (lock,
    log, validate, provenance), then train or launch the workers, and each way it can end
    mapped to meta.json's status and the RunFailed the caller raises."""

    def __init__(self, run_dir: Path, *, resume: Checkpoint | None, on_resume: Callable[[], None] | None,
                 provenance: bool, discard_on_bad_input: bool):
        from expkit.training import dist

        self.run_dir, self.rundir = run_dir, RunDir(run_dir)
        self.resume, self.on_resume, self.discard = resume, on_resume, discard_on_bad_input
        self.rank = dist.rank()
        self.lock = FolderLock(run_dir) if self.rank == 0 and provenance else None
        self.stop = StopSignals()
        self.trainer = None
        self.resumed = False  # the run's record says a resume started (on_resume ran)

    def start(self, cfg: DictConfig, overrides: list[str], typed: RunConfig | None) -> RunConfig:
        from expkit.training import dist
        from expkit.training.logs import setup_logging

        if self.lock is not None:
            self.lock.acquire()
        setup_logging(self.run_dir, self.rank)
        try:
            typed = typed if typed is not None else validate(task_config(cfg))
        except ConfigError as e:
            raise RunFailed(str(e), EXIT_BAD_INPUT) from None
        recording = self.resume is None and self.lock is not None
        if recording:
            self.rundir.write_provenance(typed.to_yaml(), command=command_line(), overrides=overrides,
                                         world_size=max(dist.world_size(), typed["trainer"].devices),
                                         untracked_max_bytes=typed["trainer"].untracked_max_kb * 1024)
        own = own_code(typed)  # own code: the import path, and the file it came from
        for key, entry in own.items():
            log.info("%s: %s from %s", key, entry["path"], entry.get("file") or "the calling process")
        if own and recording:
            self.rundir.update_meta(imports=own)
        return typed

    def launch(self, typed: RunConfig) -> dict[str, float]:
        check_devices(typed["trainer"])  # before anything records a resume
        self.stop.release()  # torch elastic handles the signals while its workers run
        self.resumed = self.on_resume is not None
        return launch_and_wait(typed, self.run_dir, self.resume, self.on_resume)

    def train(self, typed: RunConfig) -> dict[str, float]:
        from expkit.training import dist
        from expkit.training.logs import next_steps

        self.trainer = trainer = build(typed, self.run_dir, self.resume)
        if self.on_resume is not None and self.rank == 0:
            self.on_resume()  # the run's record changes only once its checkpoint fits
        self.resumed = self.on_resume is not None
        self.stop.attach(trainer)
        metrics = trainer.fit()
        self.stop.recording = True
        if self.rank == 0:
            write_hparams(trainer, typed)
            late = {"signal": self.stop.received} if self.stop.received else {}
            stopped = trainer.early_stop.record(typed["trainer"].epochs)
            self.rundir.finish("completed", metrics=metrics, **late, **({"stopped_early": stopped} if stopped else {}))
            main = trainer.main_metric
            log.info("done: %s %.4f (best %.4f) in %s", main, metrics.get(main, float("nan")),
                     metrics.get(f"best/{main}", float("nan")), self.run_dir)
            if not in_sweep():  # a sweep says it once, for all its jobs, after its summary
                log.info("%s", next_steps(self.run_dir))
        try:
            # DDP: the wrapper's reducer holds the process group; without it the group is
            # freed inside teardown, not in the interpreter's exit where gloo's threads abort.
            trainer.release_model()
            dist.teardown()  # DDP: every rank leaves the group it joined in build(), together
        except Exception as e:  # the run is complete and recorded; a peer gone now changes nothing
            log.warning("leaving the process group: %s", e)
        if self.stop.received:  # it came during the last evaluation: the run is complete, but stop
            raise RunFailed(f"completed, then stopped by {self.stop.received}",
                            Stopped(self.stop.received).exit_code, recorded=True)
        return metrics

    def record(self, status: str, **fields: Any) -> None:
        """meta.json's outcome; a record that cannot be written (a full disk) is said in the
        log, and the run still ends with its own message and exit status."""
        try:
            self.rundir.finish(status, **fields)
        except OSError as e:
            log.error("could not record status %s in %s: %s", status, self.rundir.meta_path, e.strerror or e)

    def refused(self, e: RunFailed | ConfigError) -> RunFailed:
        from expkit.training.logs import close_logging

        self.stop.recording = True
        failure = e if isinstance(e, RunFailed) else RunFailed(str(e), EXIT_BAD_INPUT)
        lock = self.lock
        if failure.exit_code == EXIT_BAD_INPUT and self.trainer is None and not self.resumed and (
                self.resume is not None or self.discard or lock is None or not lock.held):
            if self.resume is None and self.discard and lock is not None and lock.held:
                close_logging()
                remove_run_folder(self.run_dir)  # bad input leaves no run folder behind
            # a refused resume leaves the run's record (status, config) as it was; so does a
            # second writer, which never held the folder
        elif self.rank == 0 and not failure.recorded:  # a sweep job keeps its folder: the summary lists it
            log.error("%s", failure)
            self.record("failed", error=str(failure))
        return failure

    def crashed(self, e: Exception) -> RunFailed:
        from expkit.run.checkpoint import CheckpointError
        from expkit.training.trainer import Interrupted, NonFiniteLoss

        self.stop.recording = True
        if isinstance(e, Interrupted):
            if self.rank == 0:
                self.record("interrupted", interrupted_at_step=e.step, signal=e.signal_name)
                log.warning("%s; continue with: expkit resume %s", e, self.run_dir)
            code = 128 + getattr(signal, e.signal_name, signal.SIGTERM)
            return RunFailed(f"{e}. Continue with: expkit resume {self.run_dir}", code, recorded=True)
        if isinstance(e, (NonFiniteLoss, CheckpointError)):
            message = str(e)
        elif isinstance(e, OSError) and (e.filename or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)):
            # a full disk, a folder gone: name where, not a traceback the disk has no room for
            where = e.filename or f"into {self.run_dir}"
            message = f"training failed: {e.strerror or e} writing {where} (details in {self.rundir.log})"
            _log_traceback_to_file()
        else:
            message = f"training failed: {type(e).__name__}: {e} (traceback in {self.rundir.log})"
            _log_traceback_to_file()
        log.error("%s", message)  # every rank: a crash on rank 1 shows in train.log too
        if self.rank == 0:
            self.record("failed", error=message)
        return RunFailed(message, EXIT_FAILED, recorded=True)

    def stopped(self, e: Stopped) -> RunFailed:
        """Record a stop that could not wait for a checkpoint, and say what it means."""
        from expkit.training.logs import close_logging

        self.stop.recording = True
        trainer, rundir, run_dir = self.trainer, self.rundir, self.run_dir
        fresh = self.resume is None
        if self.rank != 0:
            return RunFailed(f"stopped by {e}", e.exit_code, recorded=True)
        if e.second and trainer is not None:
            self.record("interrupted", interrupted_at_step=trainer.step, signal=e.signal_name,
                        note=f"a second signal ({e.signal_name}) stopped it at once, without a checkpoint at "
                             "this step")
            return RunFailed(f"stopped at once by a second signal ({e.signal_name}). Continue from the last "
                             f"checkpoint with: expkit resume {run_dir}", e.exit_code, recorded=True)
        if trainer is None and not self.resumed and not fresh:
            return RunFailed(f"stopped by {e.signal_name} before the resume started; the run is as it was",
                             e.exit_code, recorded=True)
        if trainer is None and fresh and not rundir.meta_path.exists():
            if self.discard:
                close_logging()
                remove_run_folder(run_dir)  # stopped before anything was recorded: leave nothing behind
                return RunFailed(f"stopped by {e.signal_name} before the run started; nothing was kept",
                                 e.exit_code, recorded=True)
            # a sweep's job keeps its folder; with nothing recorded there is nothing to resume
            again = " (the sweep runs this job with sweep.resume=true)" if in_sweep() else ""
            return RunFailed(f"stopped by {e.signal_name} before the run started; nothing was recorded{again}",
                             e.exit_code, recorded=True)
        if rundir.meta_path.exists():
            if trainer is None and not self.resumed:
                self.record("interrupted", signal=e.signal_name, before_first_checkpoint=True,
                            note="stopped while starting, before the first checkpoint: nothing to resume; "
                                 "train it again")
                return RunFailed(f"stopped by {e.signal_name} while starting, before the first checkpoint: "
                                 "nothing to resume; train it again", e.exit_code, recorded=True)
            self.record("interrupted", signal=e.signal_name,
                        note=f"stopped by {e.signal_name} while starting the resume; its last checkpoint is "
                             "unchanged")
        return RunFailed(f"stopped by {e.signal_name}. Continue with: expkit resume {run_dir}", e.exit_code,
                         recorded=True)

    def close(self) -> None:
        from expkit.training.logs import close_logging

        if self.trainer is not None:
            self.trainer.writer.close()  # flush: a failed or interrupted run still shows its curves
        close_logging()
        if self.lock is not None:
            self.lock.release()


def in_sweep() -> bool:
    """Whether this process runs a job of a Hydra multirun. (A job's own DDP workers,
    trainer.devices > 1, cannot tell: rank 0 of such a job prints its own closing line.)"""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def remove_run_folder(run_dir: Path) -> None:
    """Remove a run folder that holds no run (expkit made it: `expkit train` refuses a
    given folder that holds files), and the date folders above it in runs/ when that
    leaves them empty, so refused input leaves nothing behind."""
    shutil.rmtree(run_dir, ignore_errors=True)
    runs = (Path.cwd() / "runs").resolve()
    for parent in list(run_dir.resolve().parents)[:2]:
        if parent != runs and not parent.is_relative_to(runs):
            break  # outside runs/: a folder the user named, never ours to remove
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


def check_devices(t) -> None:
    """trainer.devices > 1: that many GPUs, or CPU processes within the usable cores."""
    import torch

    from expkit.training.dist import usable_cores

    gpus = torch.cuda.device_count() if t.accelerator != "cpu" else 0
    if t.accelerator == "cuda" and t.devices > gpus:
        raise ConfigError(f"trainer.devices: value {t.devices} is more than the {gpus} GPU(s) here; "
                          "use trainer.accelerator=cpu for CPU processes.")
    if t.accelerator == "auto" and 0 < gpus < t.devices:
        raise ConfigError(f"trainer.devices: value {t.devices} is more than the {gpus} GPU(s) here; "
                          "lower it, or set trainer.accelerator=cpu to train with CPU processes.")
    if gpus == 0 and t.devices > usable_cores() and not t.oversubscribe:
        raise ConfigError(f"trainer.devices: value {t.devices} is more CPU processes than the {usable_cores()} "
                          "usable core(s) here; lower it, or force it with trainer.oversubscribe=true.")


def launch_and_wait(typed: dict[str, Any], run_dir: Path, resume: Checkpoint | None,
                    on_resume: Callable[[], None] | None) -> dict[str, float]:
    """`trainer.devices=N`: this process made the run folder; N workers train in it."""
    import json

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from expkit.training.launch import describe_failure, launch_workers

    t = typed["trainer"]
    rundir = RunDir(run_dir)
    # The workers read config.yaml, so a resume records itself before they start; if they
    # then refuse the checkpoint (exit status 2), the run's record is put back as it was.
    record = {p: p.read_text() for p in (rundir.meta_path, rundir.config)}
    if on_resume is not None:
        on_resume()
    try:
        launch_workers(run_dir, t.devices, resume.path if resume is not None else None)
    except ChildFailedError as e:
        message = describe_failure(e)
        meta = rundir.read_meta()
        code = e.get_first_failure()[1].exitcode
        if code >= 128 and meta.get("status") == "interrupted":  # the workers stopped on a signal, as agreed
            raise RunFailed(f"stopped by {meta.get('signal')}. Continue with: expkit resume {run_dir}", code,
                            recorded=True) from None
        if code == EXIT_BAD_INPUT and resume is not None:
            for path, text in record.items():
                write_atomic(path, text)
            raise RunFailed(message, EXIT_BAD_INPUT, recorded=True) from None
        if code == EXIT_BAD_INPUT:  # a worker refused the input (data, model): as for one process
            raise ConfigError(message) from None
        rundir.finish("failed", error=message)  # the root cause, not a peer's "connection closed"
        if rundir.log.name not in message:
            message += f" (details in {rundir.log})"
        raise RunFailed(message, EXIT_FAILED, recorded=True) from None
    except SignalException as e:
        if rundir.read_meta().get("status") == "running":
            rundir.finish("interrupted", signal=e.sigval.name)
        raise RunFailed(f"stopped by {e.sigval.name}. Continue with: expkit resume {run_dir}",
                        128 + int(e.sigval), recorded=True) from None
    meta = rundir.read_meta()
    if meta.get("status") != "completed":
        raise RunFailed(f"the workers ended with status {meta.get('status')}: {meta.get('error', '')}", EXIT_FAILED)
    return json.loads(rundir.metrics.read_text())


def run_worker(run_dir: str, checkpoint: str | None) -> int:
    """Body of one worker of expkit's own DDP launch: train with the run folder's config,
    from `checkpoint` when resuming: the file `expkit resume` chose (and said why), so
    every worker and meta.json's record name the same one."""
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    path = Path(run_dir)
    cfg = upgrade_saved(RunDir(path).load_config())
    state = None
    if checkpoint:
        from expkit.run.checkpoint import load_file

        state = load_file(Path(checkpoint))
    meta = RunDir(path).read_meta()
    from expkit.data.sources import reading_only

    # A resume downloads and caches no data (a run folder opened again writes nothing outside
    # it); own code comes from the launcher's folder, which the workers start in.
    opened_again = reading_only(training=True) if checkpoint else contextlib.nullcontext()
    try:
        with using(), opened_again:
            execute(cfg, path, meta.get("overrides", []), discard_on_bad_input=False, resume=state, provenance=False)
    except RunFailed as e:
        # Tell the launching agent why, in its own error-file format; it reports the first failure.
        ErrorHandler().record_exception(e)
        return e.exit_code
    return 0


def _log_traceback_to_file() -> None:
    for handler in logging.getLogger("expkit").handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                handler.stream.write(traceback.format_exc())
                handler.flush()
            except OSError:  # a full disk: the message still reaches the console
                pass


class Stopped(BaseException):  # noqa: N818 - like KeyboardInterrupt, which Hydra also lets through
    """A stop signal that ends the process at once: one that arrived before there was
    anything to checkpoint, or a second one while stopping."""

    def __init__(self, signal_name: str, second: bool = False):
        super().__init__(f"{'second ' if second else ''}{signal_name}")
        self.signal_name, self.second = signal_name, second

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signal_name, signal.SIGTERM))


class StopSignals:
    """SIGTERM, SIGINT and SIGUSR1 (SLURM's warning), for the whole life of a run folder:
    `expkit train` holds it from claiming the folder, execute() until the outcome is
    recorded. The first signal asks the trainer, once there is one, to stop after the
    current step and write a checkpoint; before that there is nothing to save, so it
    stops at once (Stopped). A second signal stops at once. Signal handlers can only be
    set in the main thread; elsewhere (a notebook's worker thread) this does nothing."""

    SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1")  # SIGHUP: the terminal closed, ssh lost

    def __init__(self):
        self.received: str | None = None
        self.trainer = None
        self.recording = False  # the outcome is being written: a late signal must not cut that short
        self.previous: dict[int, Any] = {}

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.recording:
            log.warning("%s received while recording how the run ended; finishing that first", name)
            self.received = self.received or name
            return
        if self.received is not None:
            raise Stopped(name, second=True)
        self.received = name
        if self.trainer is None:
            raise Stopped(name)
        self.trainer.stop_signal = name
        log.warning("%s received: stopping after this step and writing a checkpoint", name)

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def release(self) -> None:
        """Hand the signals back (torch elastic installs its own while it runs workers)."""
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous = {}

    def __exit__(self, *exc):
        self.release()
        return False
