"""Time per epoch of 60,000 synthetic 28x28 examples through an MLP (784-256-256-10, SGD),
on CPU, on each batching path of expkit.data:

- tensor:         the in-memory fast path (one indexing op per batch)
- dataloader w=0: torch's DataLoader, collating samples one by one in the main process
- dataloader w=2: the same with 2 worker processes
- compute only:   the same number of steps, with the same batch sizes, on one pre-made batch
                  (it stays in the CPU caches: a lower bound no loader can reach)
- pre-made:       the fast path's batches of one epoch, gathered beforehand into separate
                  tensors: the same memory traffic as a real epoch, with no loader work

The paths run interleaved, one epoch each per round, so drift in the machine's speed hits
them all alike; the table gives the median and the spread (min-max) over the rounds, and
each path's cost over pure compute.

    python bench/data_path.py [--rounds 7] [--size 60000] [--batch-size 128]

Writes the table to bench/results/data_path.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from logging_cost import rotate  # bench/, the folder of this script
from torch import nn

from expkit.config.schema import SyntheticDataConfig
from expkit.data import build_data


def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def epoch_through(loader, model, optimizer, epoch: int) -> float:
    loader.sampler.set_epoch(epoch)
    started = time.perf_counter()
    for x, y in loader.iterate():
        step(model, optimizer, x, y)
    return time.perf_counter() - started


def epoch_loader_only(loader, epoch: int) -> float:
    loader.sampler.set_epoch(epoch)
    started = time.perf_counter()
    for x, _ in loader.iterate():
        x.sum()  # read the batch, as a model would
    return time.perf_counter() - started


def epoch_premade(batches, model, optimizer) -> float:
    started = time.perf_counter()
    for x, y in batches:
        step(model, optimizer, x, y)
    return time.perf_counter() - started


def epoch_compute_only(batch_sizes, x, y, model, optimizer) -> float:
    started = time.perf_counter()
    for b in batch_sizes:
        step(model, optimizer, x[:b], y[:b])
    return time.perf_counter() - started


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}, {platform.system()}")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Runs the benchmark, writes the table; returns per path the median, min and max
    s/epoch (bench/run.py reuses it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_path.md"))
    args = parser.parse_args(argv)

    def cfg(**kw) -> SyntheticDataConfig:
        return SyntheticDataConfig(name="synthetic", shape=[1, 28, 28], num_classes=10, size=args.size,
                                   batch_size=args.batch_size, **kw)

    started = time.perf_counter()
    loaders = {
        "tensor (fast path)": build_data(cfg(loader="tensor"), seed=0).train,
        "DataLoader, num_workers=0": build_data(cfg(loader="dataloader", num_workers=0), seed=0).train,
        "DataLoader, num_workers=2": build_data(cfg(loader="dataloader", num_workers=2), seed=0).train,
    }
    train = next(iter(loaders.values()))
    assert len(train.sampler) == args.size, len(train.sampler)
    sizes = [min(args.batch_size, args.size - i) for i in range(0, args.size, args.batch_size)]
    x0, y0 = next(train.iterate())
    x0, y0 = x0.clone(), y0.clone()
    premade = [(x.clone(), y.clone()) for x, y in train.iterate()]
    print(f"built {len(loaders)} loaders in {time.perf_counter() - started:.1f} s; "
          f"{args.size} examples, {len(sizes)} steps of batch {args.batch_size} per epoch")

    model, optimizer = make_model()
    names = ["compute only (one pre-made batch)", "compute only (pre-made batches)", *loaders]
    times: dict[str, list[float]] = {n: [] for n in names}
    alone: dict[str, list[float]] = {n: [] for n in loaders}
    for r in range(args.rounds + 1):  # round 0 warms up (and starts the persistent workers)
        for name in rotate(names, r):  # no path always goes first
            if name in loaders:
                t = epoch_through(loaders[name], model, optimizer, r)
                a = epoch_loader_only(loaders[name], r)
            elif name == names[1]:
                t = epoch_premade(premade, model, optimizer)
            else:
                t = epoch_compute_only(sizes, x0, y0, model, optimizer)
            if r:
                times[name].append(t)
                if name in loaders:
                    alone[name].append(a)
        if r:
            print(f"round {r}/{args.rounds}: " + ", ".join(f"{times[n][-1]:.2f}" for n in names))

    compute, premade_med = statistics.median(times[names[0]]), statistics.median(times[names[1]])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"# Data path: time per epoch, {args.size} synthetic 1x28x28 examples, MLP 784-256-256-10, SGD, "
        f"batch {args.batch_size}, CPU",
        "",
        f"Machine: {machine()}; load average at the end {load} (1, 5, 15 min; other processes share the cores).",
        "",
        f"Median of {args.rounds} interleaved epochs per path (after one warm-up epoch each); "
        "spread = min-max (a wide one means another process took the cores for a while); "
        "over one batch = (median - median of the one-pre-made-batch epochs) / that median, and the same "
        "for the fastest epochs (min), which contention from other processes disturbs least; "
        "over pre-made = the same against the epochs of pre-made batches (same memory traffic, no loader); "
        "loader alone = one epoch of batches with no model (median).",
        "",
        "| path | s/epoch (median) | spread (min-max) | examples/s | over one batch (median; min) "
        "| over pre-made (median; min) | loader alone s/epoch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    best, best_premade = min(times[names[0]]), min(times[names[1]])
    for name in names:
        med, low = statistics.median(times[name]), min(times[name])
        over = "-" if name == names[0] else (f"{100 * (med - compute) / compute:+.1f}%; "
                                             f"{100 * (low - best) / best:+.1f}%")
        over_premade = "-" if name in names[:2] else (f"{100 * (med - premade_med) / premade_med:+.1f}%; "
                                                      f"{100 * (low - best_premade) / best_premade:+.1f}%")
        own = f"{statistics.median(alone[name]):.3f}" if name in alone else "-"
        lines.append(f"| {name} | {med:.3f} | {low:.3f}-{max(times[name]):.3f} | "
                     f"{args.size / med:,.0f} | {over} | {over_premade} | {own} |")
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written to {out} ({time.perf_counter() - started:.0f} s in all)")
    return {name: {"median": statistics.median(times[name]), "min": min(times[name]), "max": max(times[name]),
                   "loader_alone": statistics.median(alone[name]) if name in alone else None}
            for name in names}


if __name__ == "__main__":
    main()
