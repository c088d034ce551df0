"""The training loop, top to bottom.

    fit()
      before_fit()                    graph, data grids, text: once, rank 0 only
      for each epoch (from a checkpoint's epoch and batch when resuming):
        train_epoch()
          for each batch: train_step()  forward (autocast) -> loss -> backward; every
                                        trainer.accumulate batches (and at the epoch's end):
                                        clip -> optimizer -> schedule.step_batch() -> EMA
          every trainer.log_every steps: log_train()   the loop's only host-device sync
          trainer.profile: the profiler's step
          a stop signal: checkpoint mid-epoch, raise Interrupted
        schedule.step_epoch()
        every trainer.eval_every epochs and after the last: evaluate() -> schedule.step_eval()
                                                             -> early_stop.update() -> metrics.json
        save_checkpoint()             last.pt every epoch, best.pt when the monitored metric improved
                                      (written on a background thread: trainer.checkpoint_async)
        early_stop.should_stop()      trainer.early_stop.patience evaluations without improvement
      after_fit()                     best.pt scored on the test split, misclassified grid

Every piece that is checkpointed has state_dict()/load_state_dict(), so resume is exact:
model, optimizer, schedule, grad scaler, position (epoch, batch, step), best metric, early
stopping and the RNG states (Python, NumPy, torch, CUDA).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from expkit import collector
from expkit.config.compose import flatten
from expkit.run import checkpoint
from expkit.run.folder import RunDir, write_json
from expkit.tasks import build_task
from expkit.tasks.names import lower_is_better, main_metric
from expkit.training import dist
from expkit.training.early_stop import EarlyStop, resolve_monitor
from expkit.training.ema import EMA
from expkit.training.logs import Progress

if TYPE_CHECKING:
    from expkit.config.schema import RunConfig

log = logging.getLogger("expkit")
# Test hook: EXPKIT_TEST_CRASH="RANK:STEP" makes that rank raise after that step, to test
# that one crashing rank brings the whole group down quickly.
CRASH_AT = tuple(int(v) for v in os.environ["EXPKIT_TEST_CRASH"].split(":")) if os.environ.get(
    "EXPKIT_TEST_CRASH") else None
PLAIN_LINE_EVERY_S = 30.0  # without a terminal, a progress line at most this often (and per epoch)
# Gradient warnings, checked at log steps only. A layer's gradient vanishes when its norm is
# below VANISHING_RATIO x max(the largest layer's norm, the train loss): the loss term
# catches gradients that are tiny in every layer alike (a deep ReLU net with Xavier init).
# Gradients explode when the global norm before clipping is EXPLODING_RATIO x the median of
# the earlier log steps' norms, or not finite.
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 100.0


class TrainTally:
    """The training loss and accuracy since the last log step. A step only keeps references
    to its loss, logits and targets (no tensor op, no host sync); `to_host` reduces them with
    one max over the classes and one sync, at log steps and checkpoints. Every FOLD_EVERY
    steps the logits kept so far are reduced to a correct count on the device, so a long gap
    between log steps holds at most that many batches of logits. Loss terms (loss x batch size) are summed
    exactly (math.fsum), so a run resumed between two log steps, whose earlier terms come
    from the checkpoint, logs the same train/loss as a run that was never interrupted."""

    FOLD_EVERY = 32

    def __init__(self, saved: dict[str, Any] | None = None, accuracy: bool = True):
        self.accuracy = accuracy  # classification counts correct predictions; other tasks log the loss only
        self.losses: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.batch_sizes: list[int] = []
        self.correct_on_device: torch.Tensor | None = None  # the folded steps' correct count
        self.first_step = 0  # the 1-based step of self.losses[0]
        saved = saved or {}
        self.terms: list[float] = list(saved.get("terms", []))
        self.correct: int = int(saved.get("correct", 0))
        self.count: int = int(saved.get("count", 0))
        self.bad_step: int | None = None  # the first step whose loss was NaN or Inf

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        if not self.losses:
            self.first_step = step
        self.losses.append(loss)
        self.batch_sizes.append(y.shape[0])
        if not self.accuracy:
            return
        self.logits.append(logits)
        self.targets.append(y)
        if len(self.logits) >= self.FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        # max's indices are argmax's (the first maximum), at a third of argmax's cost on a CPU.
        with torch.no_grad():
            correct = (torch.cat(self.logits).max(1).indices == torch.cat(self.targets)).sum()
        self.correct_on_device = correct if self.correct_on_device is None else self.correct_on_device + correct
        self.logits, self.targets = [], []

    def to_host(self, extra: list[torch.Tensor] | None = None) -> list[float]:
        """Reduce what was kept, in one host sync; `extra` (the log step's gradient norms, 0-d
        tensors) comes back in the same transfer, as floats. One stack holds the losses, the
        correct count and `extra` (in float32 or wider: torch.stack promotes the integer
        count), so a log step costs a handful of tensor ops, not one per piece."""
        extra = list(extra or [])
        if not self.losses:
            return torch.stack(extra).tolist() if extra else []
        if self.accuracy and self.logits:
            self.fold()
        device = self.losses[0].device
        if extra and extra[0].device != device:
            extra = [e.to(device) for e in extra]
        n = len(self.losses)
        with torch.no_grad():  # with accuracy, every kept step was folded into correct_on_device
            parts = [*self.losses, self.correct_on_device] if self.accuracy else self.losses
            values = torch.stack(parts + extra).tolist()
        losses, extras = values[:n], values[len(parts):]
        for i, loss in enumerate(losses):
            if self.bad_step is None and not math.isfinite(loss):
                self.bad_step = self.first_step + i
        self.terms += [loss * n for loss, n in zip(losses, self.batch_sizes, strict=True)]
        self.correct += int(values[n]) if self.accuracy else 0
        self.count += sum(self.batch_sizes)
        self.losses, self.batch_sizes, self.correct_on_device = [], [], None
        return extras

    def mean_loss(self) -> float:
        return math.fsum(self.terms) / self.count

    def state_dict(self) -> dict[str, Any]:
        self.to_host()
        return {"terms": list(self.terms), "correct": self.correct, "count": self.count}


class Interrupted(Exception):
    """A stop signal arrived; a checkpoint was written at `step`."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint written")
        self.signal_name, self.step = signal_name, step


class NonFiniteLoss(Exception):
    def __init__(self, step: int, what: str = "training loss"):
        super().__init__(f"the {what} became NaN or Inf at step {step}; stopping without a checkpoint of it "
                         "(try a lower optim.lr, reg.grad_clip, or another init)")
        self.step = step


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # Python's 625-word state as one tensor, not a list: torch.save's pickler calls back
    # into Python for every object it writes, and a tensor is one object.
    state = {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss], "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    mt = mt.tolist() if isinstance(mt, torch.Tensor) else mt  # older checkpoints hold a list
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the saving process saw; a resume that sees fewer GPUs restores
        # those it has (torch.cuda.set_rng_state_all would fail on a missing device).
        for i, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile's and DDP's wrappers: what checkpoints hold."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, *, cfg: RunConfig, model: nn.Module, optimizer, schedule, data,
                 device: torch.device, run_dir: Path, writer):
        self.cfg, self.t, self.reg = cfg, cfg["trainer"], cfg["reg"]
        self.model, self.optimizer, self.schedule, self.data = model, optimizer, schedule, data
        self.device, self.run_dir, self.writer = device, Path(run_dir), writer
        self.rundir = RunDir(run_dir)
        self.config_plain = cfg.plain  # the resolved config, recorded in every checkpoint
        self.main = dist.is_main()
        self.raw_model = unwrap(model)
        self.task = build_task(cfg, data)
        es = self.t.early_stop
        self.early_stop = EarlyStop(resolve_monitor(cfg), es.patience, es.min_delta)
        # The task's main validation metric (val/acc, val/rmse, ...): best/<it> in metrics.json. An
        # own task's is the one it is monitored by (sweep.metric: one of its own metrics, say).
        self.main_metric = self.early_stop.monitor if self.task.name == "python" else main_metric(self.task.name)
        self.main_higher = not lower_is_better(self.main_metric)
        precision = self.t.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)
        self.no_context = nullcontext()  # reusable: what autocast() and no_sync() give when off
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16" else None
        self.channels_last = self.t.channels_last and len(data.input_shape) == 3
        # Position and results; all restored by load_state_dict.
        self.epoch, self.batch, self.step = 0, 0, 0
        # The best value of the main metric so far (the checkpoint's field keeps its first name).
        self.best_acc = -math.inf if self.main_higher else math.inf
        self.last_metrics: dict[str, float] = {}
        self.stop_signal: str | None = None  # set by the signal handler in app.py
        # The weights whose gradient and weight norms are logged (matrices and kernels); the
        # same Parameter objects for the whole run (loading a checkpoint copies into them).
        self.weights = [(n, p) for n, p in self.raw_model.named_parameters() if p.ndim >= 2]
        self.move_inputs = device.type != "cpu" or self.channels_last
        self.distributed = dist.initialized()  # build() joined the group before making the Trainer
        self.warned_vanishing = self.warned_exploding = False
        # The global gradient norm (before clipping) of each earlier log step until the exploding
        # warning, kept sorted for its median (a long run has thousands to sort otherwise).
        self.grad_history: list[float] = []
        self.log_grads_next = False  # set by train_epoch when the coming step is a log step
        self.grads_before_clip: tuple[list[str], list[torch.Tensor]] | None = None
        self.errors: list = []  # misclassified validation examples of the last evaluation
        self.tally = self.new_tally()  # train loss (and accuracy) since the last log step
        self.restored_tally: dict[str, Any] | None = None
        self.saver = checkpoint.BackgroundSaver()
        self.logged_lr: tuple[int, float] | None = None  # (step, value) of the last opt/lr point
        self.weights_logged_at: int | None = None  # the step of the last weight/norm points
        self.micro = 0  # micro-batches of the optimizer step in progress (trainer.accumulate)
        self.ema = EMA(self.raw_model, self.t.ema, self.t.ema_warmup) if self.t.ema is not None else None
        self.profiler = None  # trainer.profile's StepProfiler while it traces

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        collector.resume()  # the console script paused it for the start
        if self.t.profile and self.main:
            from expkit.training.profile import StepProfiler

            self.profiler = StepProfiler(self.t.profile, self.rundir.profile_trace, self.device)
        try:
            self.train_epochs()
        except BaseException:
            self.finish_saving(raising=True)
            raise
        finally:
            if self.profiler is not None:  # a run shorter than the trace: what was traced
                self.profiler = self.profiler.stop()
        self.finish_saving()
        return self.after_fit()

    def train_epochs(self) -> None:
        if self.step == 0:
            self.before_fit()
        for epoch in range(self.epoch, self.t.epochs):
            if self.early_stop.should_stop():  # resumed from the checkpoint written as it stopped
                break
            self.epoch = epoch
            self.train_epoch(epoch, start_batch=self.batch)
            if self.batch >= len(self.data.train):  # not when trainer.max_steps stopped mid-epoch
                self.epoch, self.batch = epoch + 1, 0
                self.schedule.step_epoch()
                if self.main and self.t.histogram_every and (epoch + 1) % self.t.histogram_every == 0:
                    self.log_histograms()
            last = epoch + 1 == self.t.epochs or self.reached_max_steps()
            improved = False
            if (epoch + 1) % self.t.eval_every == 0 or last:
                errors = 64 if last or self.early_stop.enabled else 0
                improved = self.evaluate_and_record(epoch + 1, collect_errors=errors)
            stop = self.early_stop.should_stop()
            if stop and not last:
                es = self.early_stop
                log.info("early stop after epoch %d: %s has not improved by more than %g for %d evaluation(s) "
                         "(best %s at epoch %s)", epoch + 1, es.monitor, es.min_delta, es.wait,
                         "none" if es.best is None else f"{es.best:.4f}", es.best_epoch)
            if self.t.checkpoint:
                self.save_checkpoint(best=improved)
            if last or stop:
                break

    def reached_max_steps(self) -> bool:
        return self.t.max_steps is not None and self.step >= self.t.max_steps

    def train_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.model.train()  # dropout on, batchnorm uses batch statistics
        loader = self.data.train
        loader.sampler.set_epoch(epoch)
        # Looked up once: the loop below runs every step, and a small model's step is short.
        batches, n, log_every = len(loader), self.t.accumulate, self.t.log_every
        main = self.main
        progress = Progress(self.t.progress, main)
        # The progress bar counts optimizer steps.
        progress.start(f"epoch {epoch + 1}/{self.t.epochs}", -(-batches // n), -(-start_batch // n))
        # A run resumed mid-epoch starts from the interrupted run's tally, so its next
        # train/loss point averages the same batches as an uninterrupted run's.
        self.tally = tally = self.new_tally(self.restored_tally)
        self.restored_tally = None
        started, samples = time.perf_counter(), 0
        last_line = started
        for batch, (x, y) in enumerate(loader.iterate(start_batch), start=start_batch):
            x, y = self.to_device(x, y)
            ending = batch + 1 == batches
            # trainer.accumulate: an optimizer step after every n micro-batches and after the
            # epoch's last one (a smaller group), so checkpoints and stops fall between steps.
            stepping = n == 1 or (batch + 1) % n == 0 or ending
            if stepping:
                self.log_grads_next = main and ((self.step + 1) % log_every == 0 or ending)
                self.log_lr()
            if n == 1:  # train_step(x, y) as always (tests and users wrap it so)
                loss, logits = self.train_step(x, y)
            else:
                loss, logits = self.train_step(x, y, min(n, batches - batch // n * n), stepping)
            tally.add(self.step, loss.detach(), logits.detach(), y)
            samples += y.shape[0]
            self.batch = batch + 1
            if not stepping:
                continue
            if self.profiler is not None:
                self.profiler = self.profiler.step()
            if self.step % log_every == 0 or ending:
                speed = samples / max(time.perf_counter() - started, 1e-9)
                stats = f"{self.log_train(tally)} {speed:,.0f}/s"
                progress.update(0, stats)
                self.tally = tally = self.new_tally()
                # Without a progress bar (CI, SLURM, a file): a plain line now and then.
                if not progress.active and (time.perf_counter() - last_line >= PLAIN_LINE_EVERY_S or ending):
                    last_line = time.perf_counter()
                    log.info("epoch %d/%d batch %d/%d step %d  %s", epoch + 1, self.t.epochs, self.batch,
                             batches, self.step, stats)
            progress.update()
            if self.should_stop():
                progress.stop()
                self.interrupt()
            if self.reached_max_steps():
                break
        progress.stop()
        elapsed = time.perf_counter() - started
        self.writer.scalars({"time/epoch_s": elapsed, "time/samples_per_s": samples / max(elapsed, 1e-9)},
                            self.step)

    def new_tally(self, saved: dict[str, Any] | None = None) -> TrainTally:
        return TrainTally(saved, accuracy=self.task.train_accuracy)

    def log_lr(self) -> None:
        """opt/lr of the coming step, written only where the curve needs a point: at log steps
        and where the LR changes (with the last step of the old value, so TensorBoard draws
        the step a schedule takes). Between two points the LR is the earlier point's value;
        a schedule that changes the LR every step (onecycle, warmup) gets a point every step."""
        step, lr = self.step + 1, self.optimizer.param_groups[0]["lr"]
        last = self.logged_lr
        if last is not None and lr == last[1] and not self.log_grads_next:
            return
        if last is not None and lr != last[1] and last[0] < step - 1:
            self.writer.scalar("opt/lr", last[1], step - 1)
        self.writer.scalar("opt/lr", lr, step)
        self.logged_lr = (step, lr)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, group: int = 1,
                   stepping: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch's forward and backward; the optimizer step when `stepping` (the
        last of a `group` of micro-batches whose gradients add up, each loss / group)."""
        if self.micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        with self.no_sync(not stepping):
            with self.autocast():
                logits = self.model(x)
                loss = self.task.loss(logits, y)
            scaled = loss if group == 1 else loss / group
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if not stepping:
            self.micro += 1
            return loss, logits
        self.micro = 0
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
        if self.log_grads_next and self.reg.grad_clip is not None:
            self.grads_before_clip = self.grad_norms()  # grad/norm shows what clipping is about to hide
        self.clip_gradients()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step_batch()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.step)
        if CRASH_AT and (dist.rank(), self.step) == CRASH_AT:
            raise RuntimeError(f"injected crash on rank {dist.rank()} at step {self.step} (EXPKIT_TEST_CRASH)")
        return loss, logits

    def no_sync(self, skip: bool):
        """DDP: no gradient all-reduce on the micro-batches before an optimizer step."""
        if skip and self.distributed:
            ddp = getattr(self.model, "_orig_mod", self.model)
            if isinstance(ddp, nn.parallel.DistributedDataParallel):
                return ddp.no_sync()
        return self.no_context

    def scoring(self):
        """The weights validation and test score: the EMA's where trainer.ema is on."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    def clip_gradients(self) -> None:
        if self.reg.grad_clip is None:
            return
        params = self.raw_model.parameters()
        if self.reg.grad_clip_mode == "norm":
            nn.utils.clip_grad_norm_(params, self.reg.grad_clip)
        else:
            nn.utils.clip_grad_value_(params, self.reg.grad_clip)

    @torch.no_grad()
    def evaluate(self, loader, collect_errors: int = 0) -> tuple[dict[str, float], list]:
        """The task's metrics over the whole split (loss and accuracy for classification),
        summed across ranks, so they equal a single-process evaluation; and, for
        classification, up to `collect_errors` misclassified examples."""
        self.model.eval()  # dropout off, batchnorm uses its running averages
        scorer = self.task.scorer(self.device)
        errors: list = []
        collect_errors = collect_errors if self.task.name == "classification" else 0
        for x, y in loader.iterate():
            x, y = self.to_device(x, y)
            with self.autocast():
                logits = self.model(x)
            scorer.add(logits, y)
            if collect_errors and len(errors) < collect_errors:
                pred = logits.argmax(1)
                wrong = (pred != y).nonzero().flatten()[: collect_errors - len(errors)]
                errors += [(x[i].float().cpu(), int(y[i]), int(pred[i])) for i in wrong]
        metrics = scorer.result()
        self.model.train()
        return metrics, errors

    def evaluate_val(self, collect_errors: int = 0) -> dict[str, float]:
        """The validation split scored with the EMA weights where trainer.ema is on, and then
        also with the trained weights (raw/val/*, the curves to compare the average with)."""
        if self.ema is not None:
            raw, _ = self.evaluate(self.data.val)
            raw_val = {f"raw/val/{k}": v for k, v in raw.items()}
            self.last_metrics.update(raw_val)
            self.writer.scalars(raw_val, self.step)
        with self.scoring():
            metrics, self.errors = self.evaluate(self.data.val, collect_errors)
        return metrics

    def evaluate_and_record(self, epoch: int, collect_errors: int = 0) -> bool:
        metrics = self.evaluate_val(collect_errors)
        val = {f"val/{k}": v for k, v in ordered(metrics).items()}
        if self.early_stop.monitor not in val:  # an own task's metrics are known once it has scored
            from expkit.errors import ConfigError

            raise ConfigError(f"sweep.metric (or trainer.early_stop.monitor): value {self.early_stop.monitor!r} is not "
                              f"a metric of this task; its metrics: {', '.join(val)}.")
        self.schedule.step_eval(val)
        # A non-finite loss never makes a checkpoint the best one.
        improved = self.early_stop.update(val, epoch) and math.isfinite(val["val/loss"])
        main = val.get(self.main_metric, math.nan)
        if math.isfinite(main) and (main > self.best_acc if self.main_higher else main < self.best_acc):
            self.best_acc = main
        self.last_metrics.update(val)
        self.last_metrics[f"best/{self.main_metric}"] = self.best_acc
        self.writer.scalars(val, self.step)
        self.writer.flush()  # a crash later still leaves these curves on disk
        log.info("epoch %d/%d step %d  %s  best %.4f  lr %.3g", epoch, self.t.epochs, self.step,
                 "  ".join(f"{k} {v:.4f}" for k, v in val.items()), self.best_acc,
                 self.optimizer.param_groups[0]["lr"])
        self.write_metrics()
        return improved

    # --------------------------------------------------------------- logging
    def log_train(self, tally: TrainTally) -> str:
        gradients = self.gradient_norms() if self.main else None
        norms = tally.to_host(gradients[1] if gradients else None)  # the log step's one host sync
        if tally.bad_step is not None:
            raise NonFiniteLoss(tally.bad_step)
        if tally.count == 0:
            return ""
        loss = tally.mean_loss()
        train = {"train/loss": loss} | ({"train/acc": tally.correct / tally.count} if tally.accuracy else {})
        self.last_metrics.update(train)
        self.writer.scalars(train, self.step)
        if gradients:
            self.log_gradients(gradients[0], norms, loss)
        lr = self.optimizer.param_groups[0]["lr"]
        acc = f" train/acc {train['train/acc']:.3f}" if tally.accuracy else ""
        return f"train/loss {loss:.4f}{acc} lr {lr:.3g}"

    def grad_norms(self, with_weights: bool = False) -> tuple[list[str], list[torch.Tensor]]:
        """Each weight's gradient norm (then, `with_weights`, each weight's norm), as 0-d tensors
        on the device (no host sync): one foreach call over every layer."""
        weights = [(n, p) for n, p in self.weights if p.grad is not None]  # frozen layers have none
        if not weights:
            return [], []
        tensors = [p.grad for _, p in weights] + ([p.detach() for _, p in weights] if with_weights else [])
        return [n for n, _ in weights], list(torch._foreach_norm(tensors))

    def weight_norms_due(self) -> bool:
        """weight/norm/<layer> on its own, slower schedule (trainer.weight_norm_every): weights
        move slowly, and their norms cost a pass over every weight."""
        every, last = self.t.weight_norm_every, self.weights_logged_at
        due = last is None or (self.batch == len(self.data.train) if every == 0 else self.step - last >= every)
        if due:
            self.weights_logged_at = self.step
        return due

    def gradient_norms(self) -> tuple[list[str], list[torch.Tensor]] | None:
        """A log step's norms on the device, for log_train's one transfer: per-layer gradient
        norms before clipping, after it (with reg.grad_clip), then the weights' when due."""
        before, self.grads_before_clip = self.grads_before_clip, None
        names, norms_now = self.grad_norms(with_weights=self.weight_norms_due())
        if not names:
            return None
        if before is not None and before[0] != names:
            before = None
        pre = before[1] if before is not None else norms_now[:len(names)]
        return names, pre + norms_now

    def log_gradients(self, names: list[str], norms: list[float], loss: float | None = None) -> None:
        """Global and per-layer gradient norms before clipping (grad/norm, grad/norm/<layer>),
        the global norm after it (grad/norm_clipped, when reg.grad_clip is on) and weight norms;
        vanishing and exploding gradients show up as curves, and as a warning."""
        k = len(names)
        grad_norms, clipped, weight_norms = norms[:k], norms[k:2 * k], norms[2 * k:]
        total = math.sqrt(sum(g * g for g in grad_norms))
        self.writer.scalar("grad/norm", total, self.step)
        if self.reg.grad_clip is not None:
            self.writer.scalar("grad/norm_clipped", math.sqrt(sum(g * g for g in clipped)), self.step)
        for name, g in zip(names, grad_norms, strict=True):
            self.writer.scalar(f"grad/norm/{name}", g, self.step)
        for name, w in zip(names, weight_norms, strict=False):  # none when not due
            self.writer.scalar(f"weight/norm/{name}", w, self.step)
        self.warn_vanishing(names, grad_norms, loss)
        self.warn_exploding(total)

    def warn_vanishing(self, names: list[str], grads: list[float], loss: float | None) -> None:
        if self.warned_vanishing or not all(math.isfinite(g) for g in grads):
            return
        scale = max(max(grads), loss if loss is not None and math.isfinite(loss) else 0.0)
        faded = [i for i, g in enumerate(grads) if g < VANISHING_RATIO * scale]
        if scale <= 0 or not faded:
            return
        self.warned_vanishing = True
        worst = min(faded, key=lambda i: grads[i])
        log.warning("vanishing gradients at step %d: %d of %d layers have a gradient norm below %.0e x %.2e "
                    "(the largest layer's gradient norm or the train loss, whichever is larger); smallest: %s "
                    "%.2e; first layer %s %.2e, last layer %s %.2e; consider kaiming init, normalization "
                    "(reg.norm), skip connections or another activation", self.step, len(faded), len(grads),
                    VANISHING_RATIO, scale, names[worst], grads[worst], names[0], grads[0], names[-1], grads[-1])

    def warn_exploding(self, total: float) -> None:
        if self.warned_exploding:
            return
        earlier = self.grad_history
        median = earlier[len(earlier) // 2] if len(earlier) >= 3 else None
        if math.isfinite(total) and (median is None or not total > EXPLODING_RATIO * median):
            bisect.insort(earlier, total)
            return
        self.warned_exploding = True
        grown = "is not finite" if not math.isfinite(total) else (
            f"is {total / median:.0f}x the median of the earlier log steps ({median:.2e})")
        log.warning("exploding gradients at step %d: the gradient norm before clipping, %.2e, %s; consider "
                    "reg.grad_clip, a lower optim.lr, normalization (reg.norm) or another init", self.step,
                    total, grown)

    def log_histograms(self) -> None:
        """DISTRIBUTIONS / HISTOGRAMS: weights and the last step's gradients per layer."""
        for name, p in self.raw_model.named_parameters():
            self.writer.histogram(f"weights/{name}", p.detach().float().cpu(), self.step)
            if p.grad is not None:
                self.writer.histogram(f"grads/{name}", p.grad.detach().float().cpu(), self.step)

    def before_fit(self) -> None:
        if not self.main:
            return
        from expkit.training.tb import write_data_grids, write_graph

        write_data_grids(self.writer, self.data)
        if self.t.graph:
            write_graph(self.writer, self.raw_model, self.data, self.device)
        self.writer.flush()

    def after_fit(self) -> dict[str, float]:
        from expkit.training.tb import write_misclassified

        self.last_metrics.update({"epoch": self.epoch, "step": self.step})
        if self.data.test is not None and self.t.test_at_end:
            self.score_test()
        elif self.t.test_at_end:
            log.info("test: no test split to score (data.test_fraction=0)")
        if self.main and len(self.data.input_shape) == 3 and self.task.name == "classification":
            write_misclassified(self.writer, self.errors, self.data, self.step)
        self.write_metrics()
        self.writer.flush()
        return dict(self.last_metrics)

    def score_test(self) -> None:
        """The best checkpoint's weights on the test split, then the last weights back."""
        best_pt = checkpoint.named_file(self.rundir.checkpoints, checkpoint.BEST)
        shown = best_pt.relative_to(self.run_dir)
        dist.barrier()  # rank 0 has written best.pt before any rank reads it
        if not (self.t.checkpoint and best_pt.exists()):
            with self.scoring():
                test, _ = self.evaluate(self.data.test)
            scored, step = f"the last weights (trainer.checkpoint=false: no {best_pt.name})", self.step
        else:
            best_state = checkpoint.load_file(best_pt, map_location=self.device)
            last = {k: v.detach().clone() for k, v in self.raw_model.state_dict().items()}
            self.raw_model.load_state_dict(best_state.weights)  # the EMA's where the run kept one
            try:
                test, _ = self.evaluate(self.data.test)
            finally:
                self.raw_model.load_state_dict(last)
            step = best_state.step
            best = self.early_stop.best
            scored = (f"{shown} (epoch {best_state.epoch}, step {step}"
                      + (f", best {self.early_stop.monitor} {best:.4f})" if best is not None else ")"))
        scores = {f"test/{k}": v for k, v in ordered(test).items()}
        self.last_metrics.update(scores | {"test/step": step})
        self.writer.scalars(scores, step)
        log.info("test: scored %s on the test split (%d examples): %s", scored,
                 self.data.info["sizes"].get("test", 0), "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    def write_metrics(self) -> None:
        if self.main:
            write_json(self.rundir.metrics, dict(self.last_metrics, epoch=self.epoch, step=self.step))

    # ---------------------------------------------------------------- helpers
    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.move_inputs:  # batches of a CPU run are where they belong already
            return x, y
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def autocast(self):
        if self.autocast_dtype is None:
            return self.no_context
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def should_stop(self) -> bool:
        """Alone, after any step (a signal during an evaluation stops after the next one);
        under DDP every rank must stop at the same step, so they agree (one tiny
        all-reduce) only at log steps."""
        if not self.distributed:
            return self.stop_signal is not None
        if self.step % self.t.log_every != 0:
            return False
        stop = dist.all_reduce_max_flag(self.stop_signal is not None, self.device)
        self.stop_signal = self.stop_signal or ("SIGTERM" if stop else None)
        return stop

    def interrupt(self) -> None:
        # A stop always leaves a checkpoint to resume from, even with trainer.checkpoint=false.
        self.save_checkpoint(best=False, wait=True)
        # Under DDP every rank leaves together, once rank 0 has written the file: a rank that
        # exits early makes torch elastic stop the others while they still work.
        dist.barrier()
        raise Interrupted(self.stop_signal, self.step)

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint(
            model=self.raw_model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            schedule=self.schedule.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=self.epoch, batch=self.batch, step=self.step,
            best_acc=self.best_acc, metrics=dict(self.last_metrics),
            early_stop=self.early_stop.state_dict(),
            # What predicting with the weights needs: the input's normalization and the classes.
            data={"name": self.data.info.get("name"), "classes": list(self.data.classes),
                  "input_shape": list(self.data.input_shape), "mean": list(self.data.mean),
                  "std": list(self.data.std),
                  **(self.data.targets.record() if self.data.targets is not None else {}),
                  **({"columns": self.data.info["columns"]} if "columns" in self.data.info else {})},
            warned_vanishing=self.warned_vanishing, warned_exploding=self.warned_exploding,
            train_tally=self.tally.state_dict() if self.batch else None,
            rng=rng_state(), world_size=dist.world_size(),
            config=self.config_plain,
            ema=self.ema.state_dict() if self.ema is not None else None,
        )

    def load_checkpoint(self, saved: checkpoint.Checkpoint) -> None:
        try:
            self.raw_model.load_state_dict(saved.model)
        except RuntimeError as e:
            raise ValueError(model_mismatch(saved.config, self.config_plain, e)) from None
        built = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved.optimizer)
        # resume --force optim.weight_decay=... (or optim.lr with sched=none): the optimizer as
        # built from the new config, not the checkpoint's hyperparameters. Only keys the
        # config changed: a key the checkpoint's config lacks (an older run) changed nothing.
        before, now = (saved.config or {}).get("optim") or {}, self.config_plain.get("optim") or {}
        changed = {k for k, v in now.items() if k in before and before[k] != v}
        kwargs_before = before.get("kwargs") if isinstance(before.get("kwargs"), dict) else {}
        changed |= {k for k, v in (now.get("kwargs") or {}).items() if kwargs_before.get(k, v) != v}  # optim=torch
        for group, values in zip(self.optimizer.param_groups, built, strict=True):
            group.update({k: v for k, v in values.items() if k in changed})
        if saved.schedule is not None:
            self.schedule.load_state_dict(saved.schedule)
        if self.scaler is not None and saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
        self.epoch, self.batch, self.step = saved.epoch, saved.batch, saved.step
        self.best_acc, self.last_metrics = saved.best_acc, dict(saved.metrics)
        self.early_stop.load_state_dict(saved.early_stop, self.best_acc)
        self.warned_vanishing, self.warned_exploding = saved.warned_vanishing, saved.warned_exploding
        self.restored_tally = saved.train_tally
        if self.ema is not None:  # a checkpoint of a run without EMA: the average starts from its weights
            self.ema.load_state_dict(saved.ema if saved.ema is not None else self.raw_model.state_dict())
        # Every rank continues its own streams (dropout masks, augmentation differ per rank).
        ranks, rank = saved.rng_ranks, dist.rank()
        set_rng_state(ranks[rank] if ranks and rank < len(ranks) else saved.rng)

    def release_model(self) -> None:
        """Drop the DDP and torch.compile wrappers once training is over (the plain module,
        its weights and the records stay)."""
        if self.model is self.raw_model:
            return
        self.model = self.raw_model
        if self.distributed:
            import gc

            gc.collect()  # the wrapper's reference cycles, so its process group goes now

    def finish_saving(self, raising: bool = False) -> None:
        """Wait for the checkpoint in flight. While another error is on its way out, a failed
        write is logged rather than raised over it (the earlier checkpoint stays valid)."""
        try:
            self.saver.wait()
        except Exception as e:
            if not raising:
                raise
            log.error("the last checkpoint could not be written either: %s", e)

    def save_checkpoint(self, best: bool, wait: bool = False) -> None:
        # Never a checkpoint of broken weights: a resume would start from NaN. (The loss is
        # checked only at log steps, so the weights may break between two of them.)
        params = [p.detach() for p in self.raw_model.parameters()]
        # A sum is finite only if every term is: one cheap reduction a tensor (isfinite would
        # write a mask of each); the exact check runs only when a sum is not finite, which
        # large but finite weights can also make.
        finite = (bool(torch.stack([p.sum(dtype=torch.float32) for p in params]).sum().isfinite())
                  or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()))
        if dist.all_reduce_max_flag(not finite, self.device):  # every rank decides alike
            raise NonFiniteLoss(self.step, what="weights")
        rng_ranks = None
        if dist.initialized() and dist.world_size() > 1:  # collective: every rank takes part
            rng_ranks = [None] * dist.world_size()
            torch.distributed.all_gather_object(rng_ranks, rng_state())
        if not self.main:
            return
        state = self.checkpoint_state()
        state.rng_ranks = rng_ranks
        folder = self.rundir.checkpoints
        if self.t.checkpoint_async and not wait:
            self.saver.submit(folder, state, best, self.t.keep_last)
            return
        self.saver.wait()
        started = time.perf_counter()
        checkpoint.save(folder, state, best, self.t.keep_last)
        log.debug("checkpoint at step %d written in %.3f s", self.step, time.perf_counter() - started)


def ordered(metrics: dict[str, float]) -> dict[str, float]:
    """The loss first, then the task's own metrics (classification: loss, acc, as always)."""
    return {"loss": metrics["loss"], **{k: v for k, v in metrics.items() if k != "loss"}}


def model_mismatch(saved_cfg: dict[str, Any] | None, cfg: dict[str, Any], error: Exception) -> str:
    """One line: which config keys differ from the checkpoint's, and torch's first complaint."""
    details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    first = details[0] if details else str(error).splitlines()[0]
    first = first.replace("copying a param with shape ", "checkpoint ").replace(
        " from checkpoint, the shape in current model is ", ", model ").replace("torch.Size(", "(")
    if not saved_cfg:
        return f"the model's weights do not fit: {first}"
    old, new = flatten(saved_cfg), flatten(cfg)
    keys = [k for k in sorted(set(old) | set(new)) if k.split(".")[0] in ("model", "data", "reg", "init")
            and old.get(k) != new.get(k)]
    differ = "; ".join(f"{k} was {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in keys[:4])
    return f"the model differs from the checkpoint's ({differ or 'same model keys'}): {first}"
