"""expkit's training loop against the hand-written one, finely interleaved in one process.

    .venv/bin/python bench/loop_interleaved.py [--model mlp|cnn] [--rounds 40] [--instances 2] [--out FILE]

bench/run.py's loop section trains each contender for a few epochs in turn; on a shared
two-core machine the plain loop's own speed moves by a third between rounds, so ratios of
whole contenders spread too much to tell 0.97 from 1.00. Here expkit's Trainer (at its
defaults: TensorBoard, train/* and gradient norms every `trainer.log_every` steps, `opt/lr`
at log steps and changes) and the plain loop are built once, on the same data, model and
optimizer, and their training epochs take turns in an order that rotates every round, for
many rounds, so both see the same machine state to within a second. Evaluation and
checkpoints are not in the timed epochs (section 1's whole-epoch rows count them). Ratio:
expkit steps/s / plain loop steps/s, the median of the per-round ratios and the ratio of the
totals, on wall and on process CPU time.

Two instances of one loop differ by where their tensors landed in memory, by as much as
the gap this measures (a single pair of plain loops by up to 1.7% here). So each contender
is --instances copies (default 2), each timed in the rotation, and a round's ratio is of
the copies' mean epoch times. A second group of plain loops, built the same way, takes its
turns too: plain / plain is the floor of the measurement; a gap to expkit smaller than the
floor's distance from 1 cannot be told from it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import (  # noqa: E402
    INSTANCES_OPTION,
    build_trainer,
    cli,
    interleave,
    ms_per_step,
    quiet_expkit,
    ratio_summary,
    speed_ratios,
)
from plain_loop import Config, PlainLoop  # noqa: E402


def measure(c: Config, rounds: int, instances: int = 2) -> dict:
    """Per-round seconds (wall and process CPU) of one training epoch of each contender (the
    mean over its instances), and expkit / plain steps/s per round."""
    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        trainers = [build_trainer(c, [], Path(tmp) / f"expkit-{i}") for i in range(instances)]
        groups = {"expkit": [(lambda r, t=t: (t.train_epoch(r), t.writer.flush())) for t in trainers]}
        plains = {name: [PlainLoop(c) for _ in range(instances)] for name in ("plain", "plain, again")}
        groups.update({name: [p.train_epoch for p in loops] for name, loops in plains.items()})
        steps = len(trainers[0].data.train)
        assert steps == len(plains["plain"][0].train_batches), "the two loops must take the same steps"
        # expkit's events reach the disk inside its timed epoch.
        seconds, cpu = interleave({f"{name} {i}": epoch for name, epochs in groups.items()
                                   for i, epoch in enumerate(epochs)}, rounds)
        for t in trainers:
            t.writer.close()
    per_instance = {name: statistics.median(times) for name, times in seconds.items()}

    def mean_of_instances(times: dict[str, list[float]]) -> dict[str, list[float]]:
        return {name: [statistics.mean(in_round) for in_round in
                       zip(*(times[f"{name} {i}"] for i in range(instances)), strict=True)] for name in groups}

    seconds, cpu = mean_of_instances(seconds), mean_of_instances(cpu)
    return {"config": c, "rounds": rounds, "instances": instances, "steps": steps,
            "seconds": seconds, "cpu": cpu, "per_instance": per_instance,
            "ratios": speed_ratios(seconds, cpu, of="expkit", to="plain"),
            "floor": speed_ratios(seconds, cpu, of="plain, again", to="plain")}


def table(res: dict) -> list[str]:
    def row(kind: str, of: str = "expkit") -> str:
        ratios = res["ratios"] if of == "expkit" else res["floor"]
        median, q1, q3, total = ratio_summary({**res, "ratios": ratios}, kind, of=of, to="plain")
        return f"{median:.3f} (quartiles {q1:.3f}-{q3:.3f}) | {total:.3f}"

    ms = ms_per_step(res)
    n = res.get("instances", 1)
    spread = ""
    if "per_instance" in res:
        spread = "; each instance's median ms a step: " + ", ".join(
            f"{name} {1000 * t / res['steps']:.2f}" for name, t in res["per_instance"].items())
    return [
        f"Loop, {res['config'].model} ({res['steps']} steps an epoch, {res['rounds']} rounds of one training "
        f"epoch of each of {n} instances of each contender, interleaved; plain loop: {ms['plain']:.2f} ms a step, "
        f"expkit at defaults: {ms['expkit']:.2f}{spread}):",
        "",
        "| measured on | expkit / plain loop, steps/s: median of rounds (quartiles) | totals |",
        "| --- | ---: | ---: |",
        f"| wall time | {row('wall')} |",
        f"| CPU time of the process (all its threads) | {row('cpu')} |",
        f"| the floor: a second group of plain loops / the first, wall time | {row('wall', of='plain, again')} |",
    ]


if __name__ == "__main__":
    sys.exit(cli(None, __doc__, measure, table, extra=INSTANCES_OPTION))
