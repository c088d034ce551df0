"""expkit's training loop against the hand-written one, finely interleaved in one process.

    .venv/bin/python bench/loop_interleaved.py [--model mlp|cnn] [--rounds 40] [--out FILE]

bench/run.py's loop section trains each contender for a few epochs in turn; on a shared
two-core machine the plain loop's own speed moves by a third between rounds, so ratios of
whole contenders spread too much to tell 0.97 from 1.00. Here expkit's Trainer (at its
defaults: TensorBoard, train/* and gradient norms every `trainer.log_every` steps, `opt/lr`
every step) and the plain loop are built once, on the same data, model and optimizer, and
their training epochs alternate A B B A ... for many rounds, so both see the same machine
state to within a second. Evaluation and checkpoints are not in the timed epochs (section
1's whole-epoch rows count them). Ratio: expkit steps/s / plain loop steps/s, the median
of the per-round ratios and the ratio of the totals, on wall and on process CPU time.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import CONFIGS, build_trainer  # noqa: E402
from plain_loop import Config, PlainLoop  # noqa: E402


def measure(c: Config, rounds: int) -> dict:
    """Per-round seconds (wall and process CPU) of one training epoch of each contender,
    and expkit / plain steps/s per round."""
    logger = logging.getLogger("expkit")
    level = logger.level
    logger.setLevel(logging.WARNING)  # no console lines between epochs
    try:
        with tempfile.TemporaryDirectory() as tmp:
            expkit = build_trainer(c, [], Path(tmp) / "expkit")
            plain = PlainLoop(c)
            steps = len(plain.train_batches)
            assert steps == len(expkit.data.train), "the two loops must take the same steps"
            contenders = {"expkit": lambda r: expkit.train_epoch(r), "plain": plain.train_epoch}
            seconds: dict[str, list[float]] = {name: [] for name in contenders}
            cpu: dict[str, list[float]] = {name: [] for name in contenders}  # every thread of this process
            for r in range(rounds + 1):  # round 0 warms both up and is not counted
                order = ["expkit", "plain"] if r % 2 == 0 else ["plain", "expkit"]
                for name in order:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    contenders[name](r)
                    if name == "expkit":
                        expkit.writer.flush()  # its events reach the disk inside the timed epoch
                    if r:
                        seconds[name].append(time.perf_counter() - start)
                        cpu[name].append(time.process_time() - start_cpu)
            expkit.writer.close()
    finally:
        logger.setLevel(level)
    return {"config": c, "rounds": rounds, "steps": steps, "seconds": seconds, "cpu": cpu,
            "ratios": {kind: [p / e for e, p in zip(t["expkit"], t["plain"], strict=True)]
                       for kind, t in (("wall", seconds), ("cpu", cpu))}}


def table(res: dict) -> list[str]:
    def row(kind: str) -> str:
        per_round, times = res["ratios"][kind], res["seconds" if kind == "wall" else "cpu"]
        total = sum(times["plain"]) / sum(times["expkit"])
        q = statistics.quantiles(per_round, n=4)
        return f"{statistics.median(per_round):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}) | {total:.3f}"

    ms = {name: 1000 * statistics.median(s) / res["steps"] for name, s in res["seconds"].items()}
    return [
        f"Loop, {res['config'].model} ({res['steps']} steps an epoch, {res['rounds']} rounds of one training epoch "
        f"each, interleaved; plain loop: {ms['plain']:.2f} ms a step, expkit at defaults: {ms['expkit']:.2f}):",
        "",
        "| measured on | expkit / plain loop, steps/s: median of rounds (quartiles) | totals |",
        "| --- | ---: | ---: |",
        f"| wall time | {row('wall')} |",
        f"| CPU time of the process (all its threads) | {row('cpu')} |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="mlp")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", help="also write the result (markdown) here")
    args = parser.parse_args(argv)
    text = "\n".join(table(measure(CONFIGS[args.model], args.rounds))) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
