"""expkit's training loop against the hand-written one, finely interleaved in one process.

    .venv/bin/python bench/loop_interleaved.py [--model mlp|cnn|tiny-mlp] [--rounds 40] [--instances 2]
                                               [--placements 8] [--out FILE]

bench/run.py's loop section trains each contender for a few epochs in turn; on a shared
two-core machine the plain loop's own speed moves by a third between rounds, so ratios of
whole contenders spread too much to tell 0.97 from 1.00. Here expkit's Trainer (at its
defaults: TensorBoard, train/* and gradient norms every `trainer.log_every` steps, `opt/lr`
at log steps and changes) and the plain loop are built on the same data, model and
optimizer, and their training epochs take turns in an order that rotates every round, for
many rounds, so both see the same machine state to within a second. Evaluation and
checkpoints are not in the timed epochs (section 1's whole-epoch rows count them). Ratio:
expkit steps/s / plain loop steps/s, the median of the per-round ratios and the ratio of the
totals, on wall and on process CPU time.

Two instances of one loop differ by where their tensors landed in memory, by more than
the gap this measures: a pair of groups of two plain loops, built once, stay up to 8% apart
for as long as they live (0.92-1.07 over twenty such builds here). So each contender is
--instances copies (default 2), each timed in the rotation, a round's ratio is of the
copies' mean epoch times, and the rounds are split over --placements sets of contenders
(default 8): before each set's rounds, every instance of the last set is dropped and all
are built anew, in an order rotated each time (so no contender keeps taking the memory
another one freed), and warmed up by one untimed round. The median over all rounds then
averages over placements instead of resting on one. A second group of plain loops, built
the same way, takes its turns too: plain / plain is the floor of the measurement; a gap
to expkit smaller than the floor's distance from 1 cannot be told from it.

The table also gives the difference in microseconds a step. `--model tiny-mlp` (an MLP of
one layer of 8 on 8x8 inputs, steps of well under a millisecond) measures that difference
where it is large against the step: the loop's own cost, to a few microseconds, which a
ratio of 5 ms steps with a floor of +-1% cannot resolve.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import (  # noqa: E402
    INSTANCES_OPTION,
    build_trainer,
    cli,
    interleave_placements,
    ms_per_step,
    quiet_expkit,
    ratio_summary,
    rotate,
    speed_ratios,
)
from plain_loop import Config, PlainLoop  # noqa: E402

GROUPS = ("expkit", "plain", "plain, again")
PLACEMENTS = 8  # sets of contenders, each built anew, that the rounds are split over


def build_contenders(c: Config, instances: int, run_dir: Path,
                     rotate_by: int) -> tuple[dict, Callable[[], None], int]:
    """`instances` copies each of expkit's Trainer and of two groups of plain loops, built in
    an order rotated by `rotate_by` (so no contender always takes the memory freed by the same
    one): {"<group> <i>": its epoch function}, what closes them, and the steps of an epoch."""
    makers = [(f"{name} {i}", name) for i in range(instances) for name in GROUPS]
    trainers, epochs = [], {}
    for key, name in rotate(makers, rotate_by):
        if name == "expkit":
            t = build_trainer(c, [], run_dir / key.replace(" ", "-"))
            trainers.append(t)
            # expkit's events reach the disk inside its timed epoch.
            epochs[key] = lambda r, t=t: (t.train_epoch(r), t.writer.flush())
        else:
            epochs[key] = PlainLoop(c).train_epoch
    steps = len(trainers[0].data.train)
    assert steps == len(epochs["plain 0"].__self__.train_batches), "the two loops must take the same steps"

    def close() -> None:
        for t in trainers:
            t.writer.close()

    return {key: epochs[key] for key, _ in makers}, close, steps


def measure(c: Config, rounds: int, instances: int = 2, placements: int = PLACEMENTS) -> dict:
    """Per-round seconds (wall and process CPU) of one training epoch of each contender (the
    mean over its instances), and expkit / plain steps/s per round. The rounds are split
    into `placements` runs, each on contenders built anew (and warmed up by one round)."""
    steps: list[int] = []

    def build(p: int):
        epochs, close, epoch_steps = build_contenders(c, instances, Path(tmp) / f"placement-{p}", rotate_by=p)
        steps.append(epoch_steps)
        return epochs, lambda rounds_run: close()

    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        seconds, cpu, sizes = interleave_placements(build, rounds, placements)
    per_instance = {name: statistics.median(times) for name, times in seconds.items()}

    def mean_of_instances(times: dict[str, list[float]]) -> dict[str, list[float]]:
        return {name: [statistics.mean(in_round) for in_round in
                       zip(*(times[f"{name} {i}"] for i in range(instances)), strict=True)] for name in GROUPS}

    seconds, cpu = mean_of_instances(seconds), mean_of_instances(cpu)
    return {"config": c, "rounds": rounds, "instances": instances, "placements": len(sizes), "steps": steps[0],
            "seconds": seconds, "cpu": cpu, "per_instance": per_instance,
            "rounds_per_placement": sizes,
            "ratios": speed_ratios(seconds, cpu, of="expkit", to="plain"),
            "floor": speed_ratios(seconds, cpu, of="plain, again", to="plain")}


def added_us(res: dict, of: str = "expkit", to: str = "plain") -> list[float]:
    """Per round, the microseconds `of` took a step more than `to` (wall time)."""
    return [1e6 * (a - b) / res["steps"] for a, b in zip(res["seconds"][of], res["seconds"][to], strict=True)]


def per_placement(res: dict, per_round: list[float]) -> list[float]:
    """The median of each placement's rounds."""
    sizes = res.get("rounds_per_placement", [len(per_round)])
    starts = [sum(sizes[:p]) for p in range(len(sizes))]
    return [statistics.median(per_round[a:a + n]) for a, n in zip(starts, sizes, strict=True)]


def table(res: dict) -> list[str]:
    def row(kind: str, of: str = "expkit") -> str:
        ratios = res["ratios"] if of == "expkit" else res["floor"]
        median, q1, q3, total = ratio_summary({**res, "ratios": ratios}, kind, of=of, to="plain")
        placed = per_placement(res, ratios[kind])
        return f"{median:.3f} (quartiles {q1:.3f}-{q3:.3f}) | {total:.3f} | {min(placed):.3f}-{max(placed):.3f}"

    def us_row(of: str) -> str:
        added = added_us(res, of)
        q = statistics.quantiles(added, n=4)
        placed = per_placement(res, added)
        return (f"{statistics.median(added):+.1f} (quartiles {q[0]:+.1f}-{q[2]:+.1f}) | {statistics.mean(added):+.1f} "
                f"| {min(placed):+.1f}-{max(placed):+.1f}")

    ms = ms_per_step(res)
    c, n = res["config"], res.get("instances", 1)
    spread = ""
    if "per_instance" in res:
        spread = "; each instance's median ms a step: " + ", ".join(
            f"{name} {1000 * t / res['steps']:.2f}" for name, t in res["per_instance"].items())
    return [
        f"Loop, {c.label()} on {'x'.join(map(str, c.shape))} ({res['steps']} steps an epoch, {res['rounds']} "
        f"rounds of one training epoch of each of {n} instances of each contender, interleaved, over "
        f"{res.get('placements', 1)} placements (every instance built anew for each); plain loop: "
        f"{ms['plain']:.2f} ms a step, expkit at defaults: {ms['expkit']:.2f}{spread}):",
        "",
        "| measured on | expkit / plain loop, steps/s: median of rounds (quartiles) | totals "
        "| each placement's median, min-max |",
        "| --- | ---: | ---: | ---: |",
        f"| wall time | {row('wall')} |",
        f"| CPU time of the process (all its threads) | {row('cpu')} |",
        f"| the floor: a second group of plain loops / the first, wall time | {row('wall', of='plain, again')} |",
        "",
        "| microseconds a step more than the plain loop's, wall time | median of rounds (quartiles) | mean "
        "| each placement's median, min-max |",
        "| --- | ---: | ---: | ---: |",
        f"| expkit at defaults | {us_row('expkit')} |",
        f"| the floor: the second group of plain loops | {us_row('plain, again')} |",
    ]


if __name__ == "__main__":
    sys.exit(cli(None, __doc__, measure, table, extra={
        **INSTANCES_OPTION,
        "placements": {"type": int, "default": PLACEMENTS,
                       "help": f"sets of contenders built anew, the rounds split over them (default {PLACEMENTS})"}}))
