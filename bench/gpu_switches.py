"""The speed switches on a small ResNet with CIFAR-shaped synthetic data: fp32 vs bf16 vs
fp16 vs channels-last vs torch.compile, through expkit's own build and Trainer.

    .venv/bin/python bench/gpu_switches.py [--size 4096] [--epochs 3] [--rounds 3] [--variants fp32,bf16,...]

Each variant is `expkit train model=resnet data=synthetic data.shape=[3,32,32]` plus its
switches (trainer.precision=bf16|16, trainer.channels_last=true, trainer.compile=true),
with TensorBoard and checkpoints off so only the training step is compared. On a GPU
expkit also sets cudnn.benchmark and keeps the tensor data on the GPU (data.on_device);
on a CPU bf16 is CPU autocast and fp16 is skipped (no fp16 autocast speed-up there).
Speed = training steps/s over the epochs after the first (which warms up and, with
compile, compiles). Variants run interleaved, in a rotating order, once per round; the
table gives medians, min-max spreads and per-round ratios to fp32.

Writes bench/results/gpu_switches_{cuda,cpu}.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import rotate  # noqa: E402
from plain_loop import Config  # noqa: E402
from run import load, machine, ratios, run_expkit, spread, steady  # noqa: E402

VARIANTS = {
    "fp32": [],
    "bf16": ["trainer.precision=bf16"],
    "fp16": ["trainer.precision=16"],
    "bf16 + channels_last": ["trainer.precision=bf16", "trainer.channels_last=true"],
    "compile": ["trainer.compile=true"],
    "compile + bf16": ["trainer.compile=true", "trainer.precision=bf16"],
}
CPU_SKIP = {"fp16"}
COMMON = ["trainer.tensorboard=false", "trainer.checkpoint=false", "trainer.graph=false"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="training examples (default: 4096 GPU, 512 CPU)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=None, help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    names = args.variants.split(",") if args.variants else [n for n in VARIANTS if cuda or n not in CPU_SKIP]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    c = Config(model="resnet", shape=(3, 32, 32), size=args.size or (4096 if cuda else 512),
               batch_size=args.batch_size, epochs=args.epochs)
    started, load_start = time.perf_counter(), load()
    sps: dict[str, list[float]] = {n: [] for n in names}
    steps = 0
    for r in range(args.rounds):
        for name in rotate(names, r):
            _, timings = run_expkit(c, COMMON + VARIANTS[name])
            steps = timings["steps_per_epoch"]
            sps[name].append(steady(timings, steps)[0])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {sps[n][-1]:.2f} steps/s" for n in names),
              flush=True)

    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    base = sps[names[0]]
    lines = [
        f"# Speed switches on {device}: model=resnet (width 16, 3 stages of 2 blocks), synthetic 3x32x32, "
        f"{c.size} examples, batch {c.batch_size} ({steps} steps/epoch)",
        "",
        f"Machine: {machine()}. Load average {load_start} at the start, {load()} at the end; "
        f"{time.perf_counter() - started:.0f} s in all. {args.rounds} rounds, {c.epochs} epochs per run, the first "
        f"one excluded (warm-up, compilation). TensorBoard and checkpoints off. `bench/gpu_switches.py` wrote this.",
        "",
        f"| variant | overrides | train steps/s | x {names[0]} (per round) |",
        "| --- | --- | ---: | ---: |",
    ]
    for name in names:
        r = ratios(sps[name], base)
        lines.append(f"| {name} | `{' '.join(VARIANTS[name]) or '-'}` | {statistics.median(sps[name]):.2f} "
                     f"({spread(sps[name], '{:.2f}')}) | {statistics.median(r):.2f} ({spread(r, '{:.2f}')}) |")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    out = Path(args.out or HERE / "results" / f"gpu_switches_{'cuda' if cuda else 'cpu'}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
