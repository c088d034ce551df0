"""The GPU bench of `make gpu-check`: speed ratios measured side by side in one process.

    .venv/bin/python bench/gpu_bench.py [--size 16384] [--batch-size 512] [--rounds 12] [--no-compile]

On CIFAR-shaped synthetic data (3x32x32, 10 classes) and expkit's resnet (its defaults),
five contenders are built once and their training epochs run in a rotating order, one
epoch each per round, for `rounds` rounds after a warm-up round (cudnn autotuning,
torch.compile's compilation):

    plain fp32                      a hand-written loop: the split on the GPU, a shuffled
                                    order per epoch, index_select, forward, backward, AdamW
    fp32                            expkit's Trainer at its defaults (TensorBoard on)
    bf16                            + trainer.precision=bf16
    bf16 + channels_last            + trainer.channels_last=true
    bf16 + channels_last + compile  + trainer.compile=true (expkit's fast path)

The plain loop trains a deep copy of expkit's model (the same module, the same initial
weights) with the optimizer bench/plain_loop.py builds (AdamW as expkit's defaults), so
what differs is the loop. Each ratio (expkit / plain, bf16 / fp32, channels_last on / off,
compile / eager) is taken within a round, then the median over rounds. Every timed epoch
ends with torch.cuda.synchronize(), so queued GPU work counts where it was queued.

The anchor: airbench94_compiled reaches 94.01% on CIFAR-10 in 3.09 s on an A100 (its
README; torch 2.4.1; about 10 epochs of 50,000 images at batch 1024, data on the GPU,
channels_last, compile). `anchor()` times expkit's fast path on the same shapes (50,000
synthetic 3x32x32 examples, batch 1024) per training epoch. The networks differ (airbench's
is its own small net; this is expkit's resnet) and synthetic data says nothing about
accuracy, so the figures stand side by side, not as a race.

On a machine without a GPU the same code runs on the CPU at small sizes (no compile), for
`bench/gpu_check.py`'s dry run; those figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import plain_loop  # noqa: E402
from logging_cost import build_trainer, quiet_expkit, rotate  # noqa: E402
from plain_loop import Config  # noqa: E402

FAST = ["trainer.precision=bf16", "trainer.channels_last=true"]
VARIANTS = {  # expkit contenders: their overrides
    "fp32": [],
    "bf16": ["trainer.precision=bf16"],
    "bf16 + channels_last": FAST,
    "bf16 + channels_last + compile": [*FAST, "trainer.compile=true"],
}
PLAIN = "plain fp32"
# (row, numerator, denominator, target): each a per-round ratio of steps/s.
RATIOS = [
    ("expkit / plain loop steps/s (fp32)", "fp32", PLAIN, 0.98),
    ("bf16 / fp32 speed-up", "bf16", "fp32", None),
    ("channels_last on / off (bf16)", "bf16 + channels_last", "bf16", None),
    ("compile / eager (bf16 + channels_last)", "bf16 + channels_last + compile", "bf16 + channels_last", None),
]
COMMON = ["trainer.checkpoint=false", "trainer.graph=false"]
AIRBENCH = {"script": "airbench94_compiled.py", "accuracy": 0.9401, "seconds": 3.09, "gpu": "NVIDIA A100",
            "epochs": 10, "examples": 50_000, "batch_size": 1024}


def cifar(size: int, batch_size: int) -> Config:
    # epochs only sets the schedule's length (constant LR by default); the bench runs epochs by hand.
    return Config(model="resnet", shape=(3, 32, 32), size=size, batch_size=batch_size, epochs=1000)


class PlainDeviceLoop:
    """The hand-written loop on the device: what a person writes for GPU-resident data."""

    def __init__(self, c: Config, model: torch.nn.Module, device: torch.device):
        x, y, _, _ = plain_loop.make_data(c)
        self.x, self.y, self.c, self.device = x.to(device), y.to(device), c, device
        self.model = model.train()
        self.optimizer = plain_loop.make_optimizer(model, c)

    def __len__(self) -> int:
        return -(-len(self.y) // self.c.batch_size)

    def train_epoch(self, epoch: int) -> None:
        g = torch.Generator().manual_seed(self.c.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.y), generator=g).to(self.device)
        for i in range(0, len(order), self.c.batch_size):
            idx = order[i : i + self.c.batch_size]
            x, y = self.x.index_select(0, idx), self.y.index_select(0, idx)
            self.optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()


def device_overrides(device: torch.device) -> list[str]:
    return [f"trainer.accelerator={'cuda' if device.type == 'cuda' else 'cpu'}", *COMMON]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(size: int, batch_size: int, rounds: int, compile: bool, device: torch.device,
            model: tuple[str, ...] = ()) -> dict:
    """Seconds of each contender's training epoch per round (the warm-up round not counted).
    `model`: overrides that shrink the resnet (the CPU dry run)."""
    c = cifar(size, batch_size)
    names = [n for n in VARIANTS if compile or "compile" not in n]
    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        trainers = {n: build_trainer(c, device_overrides(device) + [*model, *VARIANTS[n]], Path(tmp) / f"run{i}")
                    for i, n in enumerate(names)}
        plain = PlainDeviceLoop(c, copy.deepcopy(trainers["fp32"].raw_model), device)
        steps = len(plain)
        assert all(len(t.data.train) == steps for t in trainers.values()), "every contender takes the same steps"
        epochs = {PLAIN: plain.train_epoch, **{n: (lambda r, t=t: (t.train_epoch(r), t.writer.flush()))
                                             for n, t in trainers.items()}}
        seconds: dict[str, list[float]] = {n: [] for n in epochs}
        order = list(epochs)
        started = time.perf_counter()
        for r in range(rounds + 1):
            for name in rotate(order, r):
                synchronize(device)
                t0 = time.perf_counter()
                epochs[name](r)
                synchronize(device)
                if r:
                    seconds[name].append(time.perf_counter() - t0)
            if r == 0:
                warmup = time.perf_counter() - started
        for t in trainers.values():
            t.writer.close()
    return {"size": size, "batch_size": batch_size, "steps": steps, "rounds": rounds, "seconds": seconds,
            "warmup_s": warmup, "total_s": time.perf_counter() - started}


def ratio_rows(res: dict) -> list[dict]:
    """Per ratio: median and min-max of the per-round ratios of steps/s, and its target."""
    rows = []
    for label, num, den, target in RATIOS:
        if num not in res["seconds"] or den not in res["seconds"]:
            rows.append({"name": label, "median": None, "low": None, "high": None, "target": target,
                         "skipped": "torch.compile left out (--no-compile)"})
            continue
        per_round = [d / n for n, d in zip(res["seconds"][num], res["seconds"][den], strict=True)]
        rows.append({"name": label, "median": statistics.median(per_round), "low": min(per_round),
                     "high": max(per_round), "target": target})
    return rows


def speeds(res: dict) -> dict[str, float]:
    """Median training steps/s per contender."""
    return {n: res["steps"] / statistics.median(s) for n, s in res["seconds"].items()}


def anchor(size: int, batch_size: int, epochs: int, compile: bool, device: torch.device,
           model: tuple[str, ...] = ()) -> dict:
    """expkit's fast path (bf16, channels_last, compile, data on the device) on CIFAR-10's
    shapes: seconds per training epoch after a warm-up epoch."""
    c = cifar(size, batch_size)
    extra = device_overrides(device) + [*model, *(VARIANTS["bf16 + channels_last + compile"] if compile else FAST)]
    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(c, extra, Path(tmp) / "anchor")
        started = time.perf_counter()
        trainer.train_epoch(0)
        synchronize(device)
        warmup = time.perf_counter() - started
        seconds = []
        for e in range(1, epochs + 1):
            t0 = time.perf_counter()
            trainer.train_epoch(e)
            synchronize(device)
            seconds.append(time.perf_counter() - t0)
        trainer.evaluate(trainer.data.val)  # warm-up: eval mode compiles a graph of its own
        t0 = time.perf_counter()
        metrics, _ = trainer.evaluate(trainer.data.val)
        eval_s = time.perf_counter() - t0
        trainer.writer.close()
    per_epoch = statistics.median(seconds)
    return {"size": size, "batch_size": batch_size, "steps": len(trainer.data.train), "compile": compile,
            "epoch_s": per_epoch, "epochs_s": seconds, "warmup_s": warmup, "eval_s": eval_s,
            "ten_epochs_s": AIRBENCH["epochs"] * per_epoch, "val_acc": metrics["acc"]}


def describe_anchor(a: dict) -> str:
    ab = AIRBENCH
    return (f"expkit's fast path (resnet, bf16 + channels_last{' + compile' if a['compile'] else ''}, data on the "
            f"device): {a['epoch_s']:.3f} s per training epoch of {a['size']:,} examples at batch {a['batch_size']} "
            f"({a['steps']} steps), so {ab['epochs']} epochs ~ {a['ten_epochs_s']:.2f} s (warm-up epoch "
            f"{a['warmup_s']:.1f} s; one evaluation of the validation split {a['eval_s']:.3f} s). airbench "
            f"({ab['script']}): {ab['accuracy']:.2%} on CIFAR-10 in {ab['seconds']} s on an {ab['gpu']}, about "
            f"{ab['epochs']} epochs of {ab['examples']:,} at batch {ab['batch_size']}, "
            f"~{ab['seconds'] / ab['epochs']:.2f} s an epoch with its own small network. Different networks and "
            "synthetic data: speed per epoch side by side, no accuracy claim.")


def table(res: dict) -> list[str]:
    lines = [f"{res['steps']} steps an epoch ({res['size']:,} examples, batch {res['batch_size']}), "
             f"{res['rounds']} round(s) after a warm-up round of {res['warmup_s']:.1f} s; "
             f"{res['total_s']:.0f} s in all.",
             "", "| contender | train steps/s (median) |", "| --- | ---: |"]
    lines += [f"| {n} | {v:.1f} |" for n, v in speeds(res).items()]
    lines += ["", "| ratio of steps/s | median of rounds (min-max) | target |", "| --- | ---: | ---: |"]
    for row in ratio_rows(res):
        figure = "skipped" if row["median"] is None else f"{row['median']:.3f} ({row['low']:.3f}-{row['high']:.3f})"
        lines.append(f"| {row['name']} | {figure} | {'>= ' + str(row['target']) if row['target'] else '-'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--anchor", action="store_true", help="also time the airbench-shaped fast path")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = measure(args.size, args.batch_size, args.rounds, not args.no_compile, device)
    print("\n".join(table(res)))
    if args.anchor:
        print()
        print(describe_anchor(anchor(AIRBENCH["examples"], AIRBENCH["batch_size"], 3, not args.no_compile, device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
