"""How expkit's cost grows with the work: 1k, 10k and 100k examples, on 1 and 2 processes.

    .venv/bin/python bench/scaling.py [--sizes 1000,10000,100000] [--devices 1,2] [--out FILE]

Each cell is one whole `expkit train data=synthetic model=mlp data.size=N` on the CPU
(trainer.devices=2: two gloo processes, one thread each; one process gets both cores), run
from the shell. Time per example: the median training-phase epoch (time/epoch_s, after
the first epoch) over the examples one epoch trains; ms per step: the same over its steps,
which stays flat when expkit's own work is a constant per step. Peak memory: the largest
process's peak RSS (GNU time's %M); its growth from the smallest size, per added example,
is compared with what the data set itself takes (float32 inputs and int64 labels of the
train and validation splits, held once per process).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None  # GNU time, for peak memory
SHAPE = (1, 28, 28)
BATCH = 128
VAL_FRACTION = 0.1  # data=synthetic's default: validation on top of data.size


def timed_command(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB). The peak comes from GNU time (/usr/bin/time -f %M):
    rusage read here would count the copy of this big process that fork makes before exec."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        wrapped = [TIME, "-f", "%M", "-o", rss.name, *cmd] if TIME else cmd
        started = time.perf_counter()
        proc = subprocess.run(wrapped, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        peak = float(rss.read().strip().splitlines()[-1]) / 1024 if TIME else float("nan")
    return wall, peak


def epochs_for(size: int, devices: int) -> int:
    """A warm-up epoch, then enough epochs for at least 200 timed steps per process."""
    steps = math.ceil(size / devices / BATCH)
    return 1 + max(1, math.ceil(200 / steps))


def data_bytes(size: int) -> float:
    """The data set in memory: float32 inputs and int64 labels, train and validation."""
    examples = size * (1 + VAL_FRACTION / (1 - VAL_FRACTION))
    return examples * (4 * math.prod(SHAPE) + 8)


def run_cell(size: int, devices: int, tmp: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp / f"scale-{size}-{devices}"
    epochs = epochs_for(size, devices)
    cmd = [str(BIN / "expkit"), "train", "data=synthetic", "model=mlp", f"data.size={size}",
           f"data.shape=[{','.join(map(str, SHAPE))}]", f"data.batch_size={BATCH}", f"trainer.epochs={epochs}",
           "trainer.accelerator=cpu", f"trainer.devices={devices}", "trainer.progress=off", "trainer.graph=false",
           "data.test_fraction=0", f"hydra.run.dir={run_dir}"]
    wall, peak_mib = timed_command(cmd, ROOT)
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    epoch_s = statistics.median(e.value for e in acc.Scalars("time/epoch_s")[1:])
    train = json.loads((run_dir / "meta.json").read_text())["data"]["sizes"]["train"]
    per_process = math.ceil(train / devices)
    return {"size": size, "devices": devices, "epochs": epochs, "train": train, "wall_s": wall,
            "peak_mib": peak_mib, "us_per_example": 1e6 * epoch_s / train,
            "ms_per_step": 1000 * epoch_s / math.ceil(per_process / BATCH)}


def measure(sizes: list[int], devices: list[int]) -> dict:
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in devices:
            for n in sizes:
                cells.append(run_cell(n, d, Path(tmp)))
                c = cells[-1]
                print(f"  {n} examples, {d} process(es): {c['us_per_example']:.1f} us/example, "
                      f"{c['ms_per_step']:.2f} ms/step, peak {c['peak_mib']:.0f} MiB", flush=True)
    return {"cells": cells}


def table(res: dict) -> list[str]:
    lines = [
        f"`expkit train data=synthetic model=mlp data.size=N` (1x28x28, batch {BATCH} per process), CPU; time from "
        "the training-phase epochs after the first; memory: the largest process's peak RSS.",
        "",
        "| examples | processes | epochs | us per example | ms per step | peak RSS MiB | RSS above the smallest run, "
        "per added example | data set, per example |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in res["cells"]:
        base = min((b for b in res["cells"] if b["devices"] == c["devices"]), key=lambda b: b["size"])
        added = c["size"] - base["size"]
        grown = f"{(c['peak_mib'] - base['peak_mib']) * 2**20 / added:,.0f} B" if added else "-"
        per_example = data_bytes(c["size"]) / c["size"]
        lines.append(f"| {c['size']:,} | {c['devices']} | {c['epochs']} | {c['us_per_example']:.1f} | "
                     f"{c['ms_per_step']:.2f} | {c['peak_mib']:.0f} | {grown} | {per_example:,.0f} B |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--devices", default="1,2")
    parser.add_argument("--out", help="also write the result (markdown) here")
    args = parser.parse_args(argv)
    res = measure([int(v) for v in args.sizes.split(",")], [int(v) for v in args.devices.split(",")])
    text = "\n".join(table(res)) + "\n"  # (not logging_cost.emit: this script stays torch-free)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
