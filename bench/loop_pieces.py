"""What each piece of expkit's loop adds to a step, in microseconds, by taking it away.

    .venv/bin/python bench/loop_pieces.py [--model tiny-mlp|mlp|cnn] [--rounds 240] [--placements 16]
                                          [--instances 1] [--out FILE]

On the narrow MLP of bench/loop_interleaved.py's `--model tiny-mlp` (one hidden layer of 8
on 8x8 inputs, steps of well under a millisecond), the plain loop and expkit's Trainer in
several settings take turns, one training epoch each, in an order that rotates every
round; the rounds are split over placements, every contender built anew for each (as in
bench/loop_interleaved.py). Each setting's figure is its microseconds a step more than the
plain loop's in the same round:

- defaults           trainer.log_every=10, TensorBoard on
- log_every=20       half the log steps
- log_every=50       a fifth of them
- logging off        trainer.log_every=1000000000 trainer.tensorboard=false: one log step
                     an epoch (its last step) and no events
- no train/* tally   the defaults with TrainTally.add doing nothing: no step keeps its loss
                     and logits, so no log step reduces them (and no train/loss, train/acc
                     points); what the tally costs
- no gradient norms  the defaults without the log steps' gradient and weight norms (no
                     grad/norm, weight/norm points); what the norms cost

Timed alone, the loop's own lines cost a few microseconds a step; inside the loop, after a
training step has filled the caches with its own data, they and the log step's small
tensor ops cost several times more. Taking a piece away measures it where it runs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import build_trainer, cli, interleave_placements, quiet_expkit, rotate  # noqa: E402
from loop_interleaved import added_us  # noqa: E402
from plain_loop import Config, PlainLoop  # noqa: E402

SETTINGS = {
    "defaults": [],
    "log_every=20": ["trainer.log_every=20"],
    "log_every=50": ["trainer.log_every=50"],
    "logging off": ["trainer.log_every=1000000000", "trainer.tensorboard=false"],
    "no train/* tally": [],
    "no gradient norms": [],
}
PLACEMENTS = 16


def untallied(trainer) -> None:
    """`trainer` with a train/* tally that keeps nothing."""
    new_tally = trainer.new_tally

    def empty(saved=None):
        tally = new_tally(saved)
        tally.add = lambda *args: None
        return tally

    trainer.new_tally = empty


def without_norms(trainer) -> None:
    """`trainer` whose log steps compute no gradient or weight norms."""
    trainer.gradient_norms = lambda: None


def measure(c: Config, rounds: int, placements: int = PLACEMENTS, instances: int = 1) -> dict:
    """Per round, each contender's epoch seconds (the mean over its `instances` copies, each
    timed in the rotation) and each setting's microseconds a step more than the plain loop."""
    steps: list[int] = []
    names = ["plain loop", *SETTINGS]

    def build(p: int):
        epochs, trainers = {}, []
        for key, name in rotate([(f"{name} #{i}", name) for i in range(instances) for name in names], p):
            if name == "plain loop":
                epochs[key] = PlainLoop(c).train_epoch
                continue
            t = build_trainer(c, SETTINGS[name], Path(tmp) / f"{p}-{len(trainers)}")
            if name == "no train/* tally":
                untallied(t)
            elif name == "no gradient norms":
                without_norms(t)
            trainers.append(t)
            epochs[key] = lambda r, t=t: (t.train_epoch(r), t.writer.flush())
        steps.append(len(trainers[0].data.train))

        def close(rounds_run: int) -> None:
            for t in trainers:
                t.writer.close()

        return epochs, close

    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        timed, _, sizes = interleave_placements(build, rounds, placements)
    seconds = {name: [statistics.mean(in_round) for in_round in
                      zip(*(timed[f"{name} #{i}"] for i in range(instances)), strict=True)] for name in names}
    res = {"config": c, "rounds": rounds, "placements": len(sizes), "instances": instances, "steps": steps[0],
           "seconds": seconds}
    return {**res, "added_us": {name: added_us(res, of=name, to="plain loop") for name in SETTINGS}}


def table(res: dict) -> list[str]:
    c = res["config"]
    plain_ms = 1000 * statistics.median(res["seconds"]["plain loop"]) / res["steps"]
    lines = [
        f"Loop pieces, {c.label()} on {'x'.join(map(str, c.shape))} ({res['steps']} steps an epoch, "
        f"{res['rounds']} rounds of one training epoch of each of {res.get('instances', 1)} instance(s) of each "
        f"contender, interleaved, over {res['placements']} placements; plain loop: {plain_ms:.2f} ms a step):",
        "",
        "| expkit | microseconds a step more than the plain loop: median of rounds (quartiles) | mean |",
        "| --- | ---: | ---: |",
    ]
    for name, added in res["added_us"].items():
        q = statistics.quantiles(added, n=4) if len(added) > 1 else added * 3
        lines.append(f"| {name} | {statistics.median(added):+.1f} ({q[0]:+.1f} to {q[2]:+.1f}) "
                     f"| {statistics.mean(added):+.1f} |")
    return lines


if __name__ == "__main__":
    sys.exit(cli(None, __doc__, measure, table, rounds=240, model="tiny-mlp", extra={
        "instances": {"type": int, "default": 1, "help": "copies of each contender, each timed (default 1)"},
        "placements": {"type": int, "default": PLACEMENTS,
                       "help": f"sets of contenders built anew, the rounds split over them (default {PLACEMENTS})"}}))
