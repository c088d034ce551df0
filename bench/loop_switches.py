"""The training loop's switches against expkit at its defaults, interleaved in one process.

    .venv/bin/python bench/loop_switches.py [--model mlp|cnn] [--rounds 30] [--placements 6] [--out FILE]

Contenders, each expkit's Trainer (bench/logging_cost.py's build_trainer, the model and
data of bench/run.py's loop section), their training epochs taking turns in an order that
rotates every round; the rounds are split over --placements sets of Trainers, each set
built anew (as bench/loop_interleaved.py does, since where a Trainer's tensors land moves
its speed by several percent for as long as it lives):

- defaults           trainer.accumulate=1 trainer.ema=null trainer.profile=0
- ema                trainer.ema=0.999: one foreach lerp over the weights after every step
- accumulate 4       data.batch_size / 4 with trainer.accumulate=4: the same examples and
                     optimizer steps an epoch as the defaults' large batch, in four passes
- profile done       trainer.profile=2: its 6 steps (2 skipped, 2 warm-up, 2 traced) end in
                     the warm-up round, the profiler is dropped, and what is timed is the loop
                     after it. With trainer.profile=0 no profiler exists at all (the loop tests
                     one reference for None), so "off" and "no profiler" are the same code.

Ratios are steps/s of a contender over the defaults' in the same round (optimizer steps:
both accumulate 4 and the defaults take len(train) / 4 and len(train) micro-batches of
sizes B / 4 and B for the same number of steps). Then host syncs: ops that make the host
wait for the device (aten._local_scalar_dense; .tolist(), .numpy(), .cpu()), counted with
a dispatch mode over one epoch at defaults, split into log steps and the steps between.
"""

from __future__ import annotations

import collections
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import build_trainer, cli, interleave_placements, quiet_expkit, rotate, speed_ratios  # noqa: E402
from plain_loop import Config  # noqa: E402

CONTENDERS = {
    "defaults": [],
    "ema": ["trainer.ema=0.999"],
    "accumulate 4": ["trainer.accumulate=4"],  # with data.batch_size / 4, set in measure
    "profile done": ["trainer.profile=2"],
}
PLACEMENTS = 6  # sets of Trainers, each built anew, that the rounds are split over


def host_syncs(trainer, epoch: int) -> dict[str, float]:
    """Host syncs in one training epoch, by step: on log steps and on the others."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    by_step: collections.Counter = collections.Counter()
    # The optimizers' step counters live on the host on every device: reading them waits for nothing.
    counters = [s["step"] for s in trainer.optimizer.state.values() if "step" in s]

    class Scalars(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten._local_scalar_dense and not any(
                    a is c for c in counters for a in args):
                by_step[trainer.step] += 1
            return func(*args, **(kwargs or {}))

    class Copies(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("tolist", "numpy", "cpu"):
                by_step[trainer.step] += 1
            return func(*args, **(kwargs or {}))

    first = trainer.step
    with Scalars(), Copies():
        trainer.train_epoch(epoch)
    steps = range(first + 1, trainer.step + 1)
    logged = {s for s in steps if s % trainer.t.log_every == 0} | {trainer.step}
    others = [s for s in steps if s not in logged]
    return {"log_steps": len(logged), "other_steps": len(others),
            "per_log_step": sum(by_step[s] for s in logged) / len(logged),
            "between_log_steps": sum(by_step[s] for s in others)}


def build(c: Config, run_dir: Path, rotate_by: int) -> dict:
    """Every contender's Trainer, built in an order rotated by `rotate_by` (so no contender
    always takes the memory freed by the same one), with trainer.profile's profiler started
    as fit() starts it."""
    from expkit.training.profile import StepProfiler

    trainers = {}
    for name in rotate(list(CONTENDERS), rotate_by):
        config = replace(c, batch_size=c.batch_size // 4) if name == "accumulate 4" else c
        trainers[name] = build_trainer(config, CONTENDERS[name], run_dir / name.replace(" ", "-"))
    t = trainers["profile done"]
    t.profiler = StepProfiler(2, t.rundir.profile_trace, t.device)
    assert len(trainers["accumulate 4"].data.train) == 4 * len(trainers["defaults"].data.train), \
        "accumulate 4 must take the same steps"
    return {name: trainers[name] for name in CONTENDERS}


def measure(c: Config, rounds: int, placements: int = PLACEMENTS) -> dict:
    """Per-round seconds of one training epoch of each contender, the rounds split over
    `placements` sets of Trainers built anew (each warmed up by one round, in which the
    profile contender's trace ends), as bench/loop_interleaved.py does: where a Trainer's
    tensors landed moves its speed by several percent for as long as it lives."""
    found: dict = {}  # the steps of an epoch, and the host syncs counted on the first placement

    def build_placement(p: int):
        trainers = build(c, Path(tmp) / f"placement-{p}", rotate_by=p)

        def close(rounds_run: int) -> None:
            profiled = trainers["profile done"]
            assert profiled.profiler is None and profiled.rundir.profile_trace.exists()
            if p == 0:
                found["steps"] = len(trainers["defaults"].data.train)
                found["syncs"] = host_syncs(trainers["defaults"], rounds_run + 1)
            for t in trainers.values():
                t.writer.close()

        return {name: (lambda r, t=t: (t.train_epoch(r), t.writer.flush())) for name, t in trainers.items()}, close

    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        seconds, cpu, sizes = interleave_placements(build_placement, rounds, placements)
    return {"config": c, "rounds": rounds, "placements": len(sizes), "steps": found["steps"], "seconds": seconds,
            "cpu": cpu, "syncs": found["syncs"],
            "ratios": {name: speed_ratios(seconds, cpu, of=name, to="defaults") for name in CONTENDERS
                       if name != "defaults"}}


def table(res: dict) -> list[str]:
    ms = {name: 1000 * statistics.median(s) / res["steps"] for name, s in res["seconds"].items()}
    lines = [
        f"Loop switches, {res['config'].model} ({res['steps']} optimizer steps an epoch, batch "
        f"{res['config'].batch_size}; {res['rounds']} rounds of one training epoch of each contender, interleaved, "
        f"over {res.get('placements', 1)} placements (every Trainer built anew for each)):",
        "",
        "| contender | ms per optimizer step (median) | steps/s / defaults: median of rounds (quartiles) |",
        "| --- | ---: | ---: |",
        f"| defaults | {ms['defaults']:.2f} | 1 |",
    ]
    for name, r in res["ratios"].items():
        q = statistics.quantiles(r["wall"], n=4) if len(r["wall"]) > 1 else r["wall"] * 3
        lines.append(f"| {name} | {ms[name]:.2f} | {statistics.median(r['wall']):.3f} ({q[0]:.3f}-{q[2]:.3f}) |")
    s = res["syncs"]
    lines += ["", f"Host syncs in one epoch at defaults: {s['per_log_step']:g} per log step ({s['log_steps']} log "
              f"steps), {s['between_log_steps']} in all on the {s['other_steps']} steps between them."]
    return lines


if __name__ == "__main__":
    sys.exit(cli(None, __doc__, measure, table, rounds=30, extra={
        "placements": {"type": int, "default": PLACEMENTS,
                       "help": f"sets of Trainers built anew, the rounds split over them (default {PLACEMENTS})"}}))
