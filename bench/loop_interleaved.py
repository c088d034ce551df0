"""expkit's training loop against the hand-written one, finely interleaved in one process.

    .venv/bin/python bench/loop_interleaved.py [--model mlp|cnn] [--rounds 40] [--out FILE]

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

A second plain loop, built the same way, takes its turn too: plain / plain is the floor of
the measurement. Two instances of one loop differ by where their tensors landed in memory,
and that alone can move a ratio by a percent; a gap to expkit smaller than the floor's
distance from 1 cannot be told from it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import build_trainer, cli, interleave, ms_per_step, quiet_expkit, ratio_summary, speed_ratios  # noqa: E402
from plain_loop import Config, PlainLoop  # noqa: E402


def measure(c: Config, rounds: int) -> dict:
    """Per-round seconds (wall and process CPU) of one training epoch of each contender,
    and expkit / plain steps/s per round."""
    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        expkit = build_trainer(c, [], Path(tmp) / "expkit")
        plain, again = PlainLoop(c), PlainLoop(c)
        steps = len(plain.train_batches)
        assert steps == len(expkit.data.train), "the two loops must take the same steps"
        # expkit's events reach the disk inside its timed epoch.
        seconds, cpu = interleave({"expkit": lambda r: (expkit.train_epoch(r), expkit.writer.flush()),
                                   "plain": plain.train_epoch, "plain, again": again.train_epoch}, rounds)
        expkit.writer.close()
    return {"config": c, "rounds": rounds, "steps": steps, "seconds": seconds, "cpu": cpu,
            "ratios": speed_ratios(seconds, cpu, of="expkit", to="plain"),
            "floor": speed_ratios(seconds, cpu, of="plain, again", to="plain")}


def table(res: dict) -> list[str]:
    def row(kind: str, of: str = "expkit") -> str:
        ratios = res["ratios"] if of == "expkit" else res["floor"]
        median, q1, q3, total = ratio_summary({**res, "ratios": ratios}, kind, of=of, to="plain")
        return f"{median:.3f} (quartiles {q1:.3f}-{q3:.3f}) | {total:.3f}"

    ms = ms_per_step(res)
    return [
        f"Loop, {res['config'].model} ({res['steps']} steps an epoch, {res['rounds']} rounds of one training epoch "
        f"each, interleaved; plain loop: {ms['plain']:.2f} ms a step, expkit at defaults: {ms['expkit']:.2f}):",
        "",
        "| measured on | expkit / plain loop, steps/s: median of rounds (quartiles) | totals |",
        "| --- | ---: | ---: |",
        f"| wall time | {row('wall')} |",
        f"| CPU time of the process (all its threads) | {row('cpu')} |",
        f"| the floor: a second plain loop / the plain loop, wall time | {row('wall', of='plain, again')} |",
    ]


if __name__ == "__main__":
    sys.exit(cli(None, __doc__, measure, table))
