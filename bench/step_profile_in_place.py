"""Where expkit's loop spends its time, timed inside the loop.

    .venv/bin/python bench/step_profile_in_place.py [--model mlp|cnn] [--rounds 40] [--instances 2] [--out FILE]

bench/step_profile.py times each piece of expkit's loop alone. Inside the loop, right after a
training step has filled the caches with its own data, some pieces cost more (the log step
about twice as much), so that sum understates the gap bench/loop_interleaved.py measures.
Here the pieces are timed where they run: the real Trainer's methods (data, train_step, the
log step and, within it, the train/* reduction and the norms, keeping a step's loss and
logits, the opt/lr check, the events' flush) are wrapped with timers, and
its training epochs take turns with the plain loop's, as in bench/loop_interleaved.py
(--instances copies of each, the order rotating every round). The plain loop is timed the
same way: its data, and the rest of its epoch (its steps).

The timers the plain loop lacks are counted at what one costs alone; inside the loop they
cost more, so "other loop work", what is left of expkit's epoch (its own lines between the
calls: step counters, the stop and step-limit checks, the progress bar, the log step's line,
and that extra), is an upper bound.

Figures: ms per epoch, the median over rounds of the mean over instances; % of the plain
loop's epoch.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import INSTANCES_OPTION, build_trainer, cli, interleave, quiet_expkit  # noqa: E402
from plain_loop import Config, PlainLoop  # noqa: E402

# (key, label) in the table's order; an indented label is part of the row above it.
EXPKIT_PIECES = [
    ("data", "data: the next batch"),
    ("train_step", "forward, loss, backward, optimizer step (train_step)"),
    ("log_train", "log step every trainer.log_every steps (log_train)"),
    ("to_host", "  of which the train/* reduction (TrainTally.to_host)"),
    ("grad_norms", "  of which the gradient and weight norms (grad_norms)"),
    ("tally_add", "keeping each step's loss, logits and targets (TrainTally.add)"),
    ("log_lr", "opt/lr: check for a change (log_lr)"),
    ("flush", "events to the disk, once an epoch (writer.flush)"),
]


class Clock:
    """Seconds spent in each wrapped call, per piece, for the epoch under way."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def add(self, key: str, seconds: float) -> None:
        self.spent[key] += seconds
        self.spent[f"calls {key}"] += 1

    def wrap(self, key: str, fn: Callable) -> Callable:
        return timed(lambda: self, key, fn)

    def batches(self, key: str, iterable) -> Iterator:
        it = iter(iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.add(key, time.perf_counter() - start)
            yield item

    def epoch(self, run: Callable[[], object]) -> dict[str, float]:
        """Run one epoch; the seconds of each piece and of the whole epoch."""
        self.spent = defaultdict(float)
        start = time.perf_counter()
        run()
        return {**self.spent, "epoch": time.perf_counter() - start}


def timed(clock: Callable[[], Clock], key: str, fn: Callable) -> Callable:
    """`fn`, its time added to `key` on the clock that `clock()` gives at the call."""
    def call(*args, **kwargs):
        on, start = clock(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            on.add(key, time.perf_counter() - start)
    return call


running_expkit_clock: list[Clock] = [Clock()]  # the clock of the expkit instance whose epoch is running


def timer_cost_s() -> float:
    """Seconds one timed call adds around the call itself, timed alone on a no-op (the best
    of 5 runs of 20,000 calls); inside the loop it may cost more."""
    clock = Clock()
    best = {}
    for name, fn in (("timed", clock.wrap("calibration", lambda: None)), ("bare", lambda: None)):
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(20_000):
                fn()
            runs.append((time.perf_counter() - start) / 20_000)
        best[name] = min(runs)
    return max(best["timed"] - best["bare"], 0.0)


def instrument_expkit(trainer, clock: Clock) -> None:
    """Timers on this Trainer's pieces (its instance attributes shadow the methods)."""
    loader = trainer.data.train
    iterate = loader.iterate
    loader.iterate = lambda start_batch=0: clock.batches("data", iterate(start_batch))
    for key in ("train_step", "log_train", "grad_norms", "log_lr"):
        setattr(trainer, key, clock.wrap(key, getattr(trainer, key)))
    trainer.writer.flush = clock.wrap("flush", trainer.writer.flush)


@contextlib.contextmanager
def timed_tally():
    """A TrainTally is made anew at every log step, so it is timed through its class, on the
    clock of the instance whose epoch is running; the class is left as found."""
    from expkit.training.trainer import TrainTally

    add, to_host = TrainTally.add, TrainTally.to_host
    TrainTally.add = timed(lambda: running_expkit_clock[0], "tally_add", add)
    TrainTally.to_host = timed(lambda: running_expkit_clock[0], "to_host", to_host)
    try:
        yield
    finally:
        TrainTally.add, TrainTally.to_host = add, to_host


class TimedBatches:
    """The plain loop's batches, with the time to fetch each one on `clock`."""

    def __init__(self, batches, clock: Clock):
        self.inner, self.clock = batches, clock

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator:
        return self.clock.batches("data", self.inner)


def measure(c: Config, rounds: int, instances: int = 2) -> dict:
    samples: dict[str, list[dict[str, float]]] = defaultdict(list)  # "expkit i" / "plain i": per round
    epochs: dict[str, Callable[[int], None]] = {}
    with quiet_expkit(), timed_tally(), tempfile.TemporaryDirectory() as tmp:
        trainers = [build_trainer(c, [], Path(tmp) / f"expkit-{i}") for i in range(instances)]
        for i, trainer in enumerate(trainers):
            clock = Clock()
            instrument_expkit(trainer, clock)

            def expkit_epoch(r: int, trainer=trainer, clock=clock, name=f"expkit {i}") -> None:
                running_expkit_clock[0] = clock
                samples[name].append(clock.epoch(lambda: (trainer.train_epoch(r), trainer.writer.flush())))
            epochs[f"expkit {i}"] = expkit_epoch
        for i in range(instances):
            plain, clock = PlainLoop(c), Clock()
            plain.train_batches = TimedBatches(plain.train_batches, clock)

            def plain_epoch(r: int, plain=plain, clock=clock, name=f"plain {i}") -> None:
                samples[name].append(clock.epoch(lambda: plain.train_epoch(r)))
            epochs[f"plain {i}"] = plain_epoch
        steps = len(trainers[0].data.train)
        interleave(epochs, rounds)
        for t in trainers:
            t.writer.close()

    timer_s = timer_cost_s()
    # Timers the plain loop has too (one per batch) cancel out; nested ones (inside
    # log_train) are inside a piece's own time.
    extra_timed = ("train_step", "log_train", "tally_add", "log_lr", "flush")

    def expkit_round(s: dict[str, float]) -> dict[str, float]:
        """One expkit epoch's pieces, with the timers' cost and the rest of the epoch."""
        timed_calls = sum(s.get(f"calls {k}", 0) for k in extra_timed)
        timers = timer_s * timed_calls
        other = s["epoch"] - sum(s.get(k, 0.0) for k in ("data", *extra_timed)) - timers
        return {**s, "timers": timers, "other": other, "timed calls": timed_calls}

    def plain_round(s: dict[str, float]) -> dict[str, float]:
        return {**s, "train_step": s["epoch"] - s.get("data", 0.0)}

    def per_epoch(group: str, complete: Callable, keys, unit: float = 1000) -> dict[str, float]:
        """Per key: the median over rounds (the warm-up round left out) of the instances'
        mean, times `unit` (seconds to ms by default)."""
        per_instance = [[complete(s) for s in samples[n][1:]] for n in samples if n.startswith(group + " ")]
        rounds_seen = list(zip(*per_instance, strict=True))
        return {key: unit * statistics.median(statistics.mean(s.get(key, 0.0) for s in r) for r in rounds_seen)
                for key in keys}

    expkit = per_epoch("expkit", expkit_round, (*(k for k, _ in EXPKIT_PIECES), "timers", "other", "epoch"))
    expkit |= per_epoch("expkit", expkit_round, ("timed calls",), unit=1)
    plain = per_epoch("plain", plain_round, ("data", "train_step", "epoch"))
    return {"config": c, "rounds": rounds, "instances": instances, "steps": steps, "expkit": expkit,
            "plain": plain}


def table(res: dict) -> list[str]:
    e, p = res["expkit"], res["plain"]

    def pct(ms: float) -> str:
        return f"{100 * ms / p['epoch']:.2f}%"

    def row(label: str, ms: float, plain_ms: float | None = None) -> str:
        plain_text = "-" if plain_ms is None else f"{plain_ms:.2f}"
        return f"| {label} | {ms:.2f} | {plain_text} | {pct(ms - (plain_ms or 0.0))} |"

    own = e["epoch"] - p["epoch"]
    lines = [
        f"Step profile in place, {res['config'].model} ({res['steps']} steps an epoch; {res['rounds']} rounds of one "
        f"training epoch of each of {res['instances']} instances of expkit and of the plain loop, interleaved; "
        "ms per epoch, the median over rounds):",
        "",
        "| piece | expkit ms | plain loop ms | expkit - plain, % of the plain epoch |",
        "| --- | ---: | ---: | ---: |",
        row("data: the next batch", e["data"], p["data"]),
        row("forward, loss, backward, optimizer step", e["train_step"], p["train_step"]),
    ]
    lines += [row(label, e[key]) for key, label in EXPKIT_PIECES[2:]]
    lines += [row(f"the timers themselves ({e['timed calls']:.0f} timed calls more than the plain loop's, at "
                  "their cost alone)", e["timers"]),
              row("other loop work (its own lines between the calls)", e["other"]),
              f"| **the epoch** | **{e['epoch']:.2f}** | **{p['epoch']:.2f}** | **{pct(own)}** |",
              "", f"expkit / plain loop steps/s, from these epochs: {p['epoch'] / e['epoch']:.3f}."]
    return lines


if __name__ == "__main__":
    sys.exit(cli(None, __doc__, measure, table, extra=INSTANCES_OPTION))
