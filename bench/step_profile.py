"""Where expkit's training step spends time that a hand-written loop does not: a breakdown.

    .venv/bin/python bench/step_profile.py [--model mlp|cnn] [--out FILE]

One expkit Trainer and one plain loop (bench/plain_loop.py) are built on the same data and
model. Each piece of work that expkit's loop adds to the forward, loss, backward and
optimizer step is then timed alone on the real objects: the best of 7 repeats of many calls
(noise only ever adds time), in microseconds per training step (a piece that runs at log
steps or once an epoch is divided by the steps between). The plain step and expkit's
forward-to-optimizer step are timed the same way, over whole epochs. The sum of the pieces
is what expkit's defaults cost per step; bench/loop_interleaved.py measures the same gap
as a ratio of whole epochs.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import CONFIGS, build_trainer, emit, quiet_expkit  # noqa: E402
from plain_loop import Config, PlainLoop  # noqa: E402

REPEATS = 7


def best_us(fn: Callable[[], object], calls: int) -> float:
    """Microseconds per call: the best of REPEATS timings of `calls` calls."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def measure(c: Config) -> dict:
    from expkit.training.logs import Progress
    from expkit.training.trainer import TrainTally

    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        tr = build_trainer(c, [], Path(tmp) / "expkit")
        plain = PlainLoop(c)
        loader = tr.data.train
        steps, log_every = len(loader), tr.t.log_every
        x, y = next(iter(plain.train_batches))
        tr.train_epoch(0)  # warm up: allocator, first events
        plain.train_epoch(0)

        def plain_epoch() -> None:
            plain.train_epoch(1)

        def expkit_steps() -> None:  # expkit's forward, loss, backward, optimizer: train_step alone
            tr.log_grads_next = False
            for bx, by in plain.train_batches:
                tr.train_step(bx, by)

        loss, logits = tr.train_step(x, y)
        tally = TrainTally()
        for _ in range(log_every):
            tally.add(tr.step, loss.detach(), logits.detach(), y)
        kept = TrainTally()

        def tally_step(*args) -> None:  # what a step adds; a fold every FOLD_EVERY steps included
            kept.add(1, *args)

        def log_step() -> None:  # a log step's reduction, train/* scalars and gradient norms
            t = TrainTally()
            t.losses, t.logits = list(tally.losses), list(tally.logits)
            t.targets, t.batch_sizes, t.first_step = list(tally.targets), list(tally.batch_sizes), 1
            tr.log_grads_next = True
            tr.log_train(t)

        events_per_epoch = 2 + 3 * (steps // log_every + 1)  # opt/lr at changes, time/*, log steps' groups

        def epoch_events() -> None:  # an epoch's events: handed to the writer thread and flushed
            for _ in range(events_per_epoch):
                tr.writer.scalar("bench/x", 1.0, tr.step)
                tr.step += 1
            tr.writer.flush()

        def epoch_setup() -> None:
            tr.model.train()
            loader.sampler.set_epoch(3)
            progress = Progress(tr.t.progress, tr.main)
            progress.start("epoch", steps)
            TrainTally(None)
            progress.stop()

        tr.logged_lr = (tr.step + 1, tr.optimizer.param_groups[0]["lr"])
        bookkeeping_progress = Progress(tr.t.progress, tr.main)

        def bookkeeping() -> None:  # the loop's own lines around a step
            tr.log_grads_next = tr.main and ((tr.step + 1) % log_every == 0 or tr.batch + 1 == steps)
            bookkeeping_progress.update()
            tr.should_stop()
            tr.reached_max_steps()

        def extras() -> None:  # what train_step adds around the math: autocast, clipping, schedule
            with tr.autocast():
                pass
            tr.clip_gradients()
            tr.schedule.step_batch()

        pieces = {
            "data: a batch from expkit's loader (minus the plain loop's)": (
                best_us(lambda: list(loader.iterate()), 3) / steps
                - best_us(lambda: list(plain.train_batches), 3) / steps),
            "to_device (a no-op copy on the CPU)": best_us(lambda: tr.to_device(x, y), 2000),
            "opt/lr: check for a change (points at log steps and changes)": best_us(tr.log_lr, 5000),
            "train loss/acc tally: keep loss, logits, targets": best_us(
                lambda: tally_step(loss.detach(), logits.detach(), y), 5000),
            "train_step extras: autocast, clip check, schedule": best_us(extras, 5000),
            "loop bookkeeping: progress, stop check, step limit": best_us(bookkeeping, 5000),
            f"log step every {log_every}: reduce tally, train/*, gradient norms": best_us(log_step, 200) / log_every,
            f"events: ~{events_per_epoch} an epoch, to the writer thread and flushed":
                best_us(epoch_events, 20) / steps,
            "epoch setup: train mode, sampler, progress": best_us(epoch_setup, 200) / steps,
        }
        plain_us = best_us(plain_epoch, 1) / steps
        expkit_step_us = best_us(expkit_steps, 1) / steps
        tr.writer.close()
    return {"config": c, "steps": steps, "pieces": pieces, "plain_us": plain_us, "expkit_step_us": expkit_step_us}


def table(res: dict) -> list[str]:
    plain = res["plain_us"]
    total = sum(res["pieces"].values())
    lines = [
        f"Step profile, {res['config'].model} ({res['steps']} steps an epoch; plain loop step {plain:.0f} us, "
        f"expkit's train_step alone {res['expkit_step_us']:.0f} us):",
        "",
        "| piece of expkit's loop | us per step | % of the plain step |",
        "| --- | ---: | ---: |",
    ]
    for name, us in res["pieces"].items():
        lines.append(f"| {name} | {us:.1f} | {100 * us / plain:.2f}% |")
    lines += [f"| **sum: expkit's own work per step** | **{total:.1f}** | **{100 * total / plain:.2f}%** |",
              "", f"Expected expkit / plain loop steps/s from the sum: {plain / (plain + total):.3f}."]
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="mlp")
    parser.add_argument("--out", help="also write the result (markdown) here")
    args = parser.parse_args(argv)
    emit(table(measure(CONFIGS[args.model])), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
