"""What expkit's default logging costs, measured finely interleaved in one process.

    .venv/bin/python bench/logging_cost.py [--model mlp|cnn] [--rounds 40] [--out FILE]

bench/run.py compares whole runs, one after another; on a shared two-core machine their
spread (often +-15%) hides a cost of a few percent. Here two Trainers are built once, the
same run with logging at its defaults (TensorBoard on, train/* and gradient norms every
`trainer.log_every=10` steps, `opt/lr` at log steps and changes) and with logging off
(`trainer.tensorboard=false trainer.log_every=10**9`), and their training epochs alternate
A B B A ... for many rounds, so both see the same machine state to within a second. The
cost is 1 - (defaults steps/s) / (off steps/s): the median of the per-round ratios and the
ratio of the totals. Checkpoints are not logging and not written here
(bench/checkpoint_cost.py measures them). The interleaving, the ratios and the command
line serve bench/loop_interleaved.py too.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from plain_loop import Config  # noqa: E402

LOGGING_OFF = ["trainer.tensorboard=false", f"trainer.log_every={10**9}"]
CONFIGS = {  # as bench/run.py's loop section: small steps, so per-step overhead shows
    "mlp": Config(model="mlp", shape=(1, 28, 28), size=8192, epochs=1000),
    "cnn": Config(model="cnn", shape=(1, 8, 8), size=4096, epochs=1000),
    # An MLP 8 wide on 8x8 inputs: steps of well under a millisecond, so the microseconds a
    # loop adds to each step show above the noise that hides them in a ratio of larger steps.
    "tiny-mlp": Config(model="mlp", width=8, depth=1, shape=(1, 8, 8), size=8192, epochs=1000),
}


def build_trainer(c: Config, extra: list[str], run_dir: Path):
    """expkit's own Trainer for the run `c` describes, built as `expkit train` builds it
    (bench/run.py's loop contender too). progress=off: what trainer.progress=auto does off a
    terminal (make bench | tee, CI)."""
    from hydra import compose, initialize_config_module

    from expkit.config.compose import task_config
    from expkit.config.schema import validate
    from expkit.training.build import build

    overrides = [*c.expkit_overrides(), "trainer.progress=off", *extra]
    with initialize_config_module("expkit.conf", version_base="1.3"):
        cfg = task_config(compose("config", overrides=overrides))
    return build(validate(cfg), run_dir, None)


@contextlib.contextmanager
def quiet_expkit():
    """No console lines between the timed epochs."""
    logger = logging.getLogger("expkit")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def rotate(items: list, r: int) -> list:
    """items, starting at its r-th (mod its length): the order of turn r, so none always goes first."""
    return items[r % len(items):] + items[: r % len(items)]


def interleave(epochs: dict[str, Callable[[int], object]], rounds: int) -> tuple[dict, dict]:
    """Run the contenders' epoch r in turn, in an order that rotates every round (A B, B A, ...
    for two), for rounds + 1 rounds, of which round 0 warms them up and is not counted: (wall
    seconds, process CPU seconds of every thread), per contender and round."""
    names = list(epochs)
    seconds: dict[str, list[float]] = {name: [] for name in epochs}
    cpu: dict[str, list[float]] = {name: [] for name in epochs}
    for r in range(rounds + 1):
        for name in rotate(names, r):
            start, start_cpu = time.perf_counter(), time.process_time()
            epochs[name](r)
            if r:
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return seconds, cpu


def interleave_placements(build: Callable[[int], tuple[dict, Callable[[int], None]]], rounds: int,
                          placements: int) -> tuple[dict, dict, list[int]]:
    """interleave's rounds split over `placements` sets of contenders, built anew for each:
    where a loop's tensors landed moves its speed by several percent for as long as it lives.
    build(p) gives set p's {name: epoch function} (built in an order rotated by p, so no
    contender keeps taking the memory another one freed) and close(rounds_run), called once
    its rounds are done. Before the next set is built, this one is dropped and collected, so
    the next is built in its freed memory. (wall seconds, CPU seconds) per contender and
    round, as interleave gives them, and the rounds of each placement."""
    placements = max(1, min(placements, rounds))
    seconds: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    sizes: list[int] = []
    for p in range(placements):
        epochs, close = build(p)
        sizes.append(rounds // placements + (p < rounds % placements))
        these_seconds, these_cpu = interleave(epochs, sizes[-1])
        close(sizes[-1])
        del epochs, close  # close holds the contenders too
        gc.collect()
        for name in these_seconds:
            seconds.setdefault(name, []).extend(these_seconds[name])
            cpu.setdefault(name, []).extend(these_cpu[name])
    return seconds, cpu, sizes


def speed_ratios(seconds: dict, cpu: dict, of: str, to: str) -> dict[str, list[float]]:
    """Per round, steps/s of `of` over steps/s of `to`, on wall and on CPU time."""
    return {kind: [b / a for a, b in zip(t[of], t[to], strict=True)] for kind, t in (("wall", seconds), ("cpu", cpu))}


def ratio_summary(res: dict, kind: str, of: str, to: str) -> tuple[float, float, float, float]:
    """(median, lower quartile, upper quartile) of the per-round ratios, and the ratio of the totals."""
    per_round, times = res["ratios"][kind], res["seconds" if kind == "wall" else "cpu"]
    q = statistics.quantiles(per_round, n=4)
    return statistics.median(per_round), q[0], q[2], sum(times[to]) / sum(times[of])


def ms_per_step(res: dict) -> dict[str, float]:
    return {name: 1000 * statistics.median(s) / res["steps"] for name, s in res["seconds"].items()}


def measure(c: Config, rounds: int) -> dict:
    """Per-round seconds (wall and process CPU) of one training epoch for each setting, and
    the defaults / off steps/s ratio of every round."""
    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        trainers = {"defaults": build_trainer(c, [], Path(tmp) / "defaults"),
                    "off": build_trainer(c, LOGGING_OFF, Path(tmp) / "off")}
        steps = len(trainers["off"].data.train)
        # Epoch r of each trainer's own run; its events reach the disk inside the timed epoch.
        seconds, cpu = interleave({name: lambda r, t=t: (t.train_epoch(r), t.writer.flush())
                                   for name, t in trainers.items()}, rounds)
        for trainer in trainers.values():
            trainer.writer.close()
    return {"config": c, "rounds": rounds, "steps": steps, "seconds": seconds, "cpu": cpu,
            "ratios": speed_ratios(seconds, cpu, of="defaults", to="off")}


def table(res: dict) -> list[str]:
    def cost(kind: str) -> str:
        median, q1, q3, total = ratio_summary(res, kind, of="defaults", to="off")
        return (f"{median:.3f} (quartiles {q1:.3f}-{q3:.3f}); totals {total:.3f} | "
                f"{100 * (1 - median):.1f}% (totals {100 * (1 - total):.1f}%)")

    ms = ms_per_step(res)
    return [
        f"Logging cost, {res['config'].model} ({res['steps']} steps an epoch, {res['rounds']} rounds of one epoch "
        f"each, interleaved; logging off: {ms['off']:.2f} ms a step, defaults: {ms['defaults']:.2f}):",
        "",
        "| measured on | defaults / off, steps/s: median of rounds (quartiles); totals | cost of default logging |",
        "| --- | ---: | ---: |",
        f"| wall time | {cost('wall')} |",
        f"| CPU time of the process (all its threads) | {cost('cpu')} |",
    ]


def cli(argv: list[str] | None, doc: str, measure: Callable[..., dict],
        table: Callable[[dict], list[str]], extra: dict[str, dict] | None = None, rounds: int = 40,
        model: str = "mlp") -> int:
    """The command line of an interleaved benchmark: --model (default `model`), --rounds (default `rounds`),
    --size, --out, --json and `extra` ({name: argparse keywords}), passed to measure by name.
    Under torchrun every rank measures and rank 0 alone prints and writes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default=model)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--size", type=int, help="training examples (default: the model's bench size)")
    parser.add_argument("--out", help="also write the result (markdown) here")
    parser.add_argument("--json", help="also write the measurements (JSON) here, for bench/run.py")
    for name, keywords in (extra or {}).items():
        parser.add_argument(f"--{name}", **keywords)
    args = parser.parse_args(argv)
    c = replace(CONFIGS[args.model], size=args.size) if args.size else CONFIGS[args.model]
    res = measure(c, args.rounds, **{k: getattr(args, k) for k in extra or {}})
    if int(os.environ.get("RANK", "0")) == 0:
        emit(table(res), args.out)
        if args.json:
            Path(args.json).write_text(json.dumps(res, default=asdict))
    return 0


# cli's `extra` for a benchmark whose contenders are built in several copies each.
INSTANCES_OPTION = {"instances": {"type": int, "default": 2, "help": "copies of each contender (default 2)"}}


def load_json(path: Path) -> dict:
    """A result that cli's --json wrote, with its Config back."""
    res = json.loads(path.read_text())
    res["config"] = Config(**{**res["config"], "shape": tuple(res["config"]["shape"])})
    return res


def emit(lines: list[str], out: str | None) -> None:
    """Print a benchmark's markdown table, and write it to `out` when given."""
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if out:
        Path(out).write_text(text)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, __doc__, measure, table)


if __name__ == "__main__":
    sys.exit(main())
