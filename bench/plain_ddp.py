"""A hand-written DDP loop for torchrun, the baseline for `expkit train trainer.devices=N`.

    torchrun --nproc_per_node=2 bench/plain_ddp.py [--model mlp] [--size 8192] [--epochs 3] [--json]

The plain loop's run (bench/plain_loop.py) on gloo (CPU) or NCCL (GPU): each rank takes its
slice of every global batch of world_size x batch_size (as expkit's sampler does), seeds
seed + rank (dropout differs per rank, as in expkit), one thread per process on CPU,
DistributedDataParallel, and an evaluation summed over ranks after every epoch. Rank 0
prints per-epoch timings (--json: one JSON line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import Config, make_data, make_model, make_optimizer  # noqa: E402

from expkit.training.dist import default_threads  # noqa: E402


def shard(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int, shuffle: bool) -> torch.Tensor:
    """This rank's indices for one epoch: padded to a multiple of world, then the rank-th
    slice of each global batch."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    else:
        order = torch.arange(n)
    total = math.ceil(n / world) * world
    order = order.repeat(math.ceil(total / n))[:total]
    chunk = batch_size * world
    full = len(order) // chunk * chunk
    head = order[:full].view(-1, world, batch_size)[:, rank].flatten()
    return torch.cat([head, order[full:].view(world, -1)[rank]])


def main(argv: list[str] | None = None) -> None:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key in ("model", "size", "epochs", "batch_size", "seed"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(getattr(defaults, key)),
                            default=getattr(defaults, key))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    c = Config(**{k: v for k, v in vars(args).items() if k in asdict(defaults)})

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    # The cores shared among the processes on CPU, so they do not fight over them.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(default_threads(local_world))  # expkit's rule (OMP_NUM_THREADS, else cores / processes)

    train_x, train_y, val_x, val_y = (t.to(device) for t in make_data(c))
    torch.manual_seed(c.seed + rank)
    model = nn.parallel.DistributedDataParallel(make_model(c).to(device), device_ids=[device] if cuda else None)
    optimizer = make_optimizer(model.module, c)
    timings: dict[str, list[float]] = {"epoch_start": [], "train_end": [], "epoch_end": []}
    for epoch in range(c.epochs):
        timings["epoch_start"].append(time.perf_counter())
        model.train()
        order = shard(len(train_y), c.batch_size, c.seed, epoch, rank, world, shuffle=True).to(device)
        for i in range(0, len(order), c.batch_size):
            idx = order[i : i + c.batch_size]
            x, y = train_x.index_select(0, idx), train_y.index_select(0, idx)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        timings["train_end"].append(time.perf_counter())
        model.eval()
        totals = torch.zeros(3, device=device, dtype=torch.float64)
        idx_val = torch.arange(rank, len(val_y), world, device=device)
        with torch.no_grad():
            for i in range(0, len(idx_val), c.batch_size):
                idx = idx_val[i : i + c.batch_size]
                x, y = val_x.index_select(0, idx), val_y.index_select(0, idx)
                logits = model(x)
                totals[0] += nn.functional.cross_entropy(logits, y, reduction="sum")
                totals[1] += (logits.argmax(1) == y).sum()
                totals[2] += len(y)
        dist.all_reduce(totals)
        loss_sum, correct, count = totals.tolist()
        timings["epoch_end"].append(time.perf_counter())
        if rank == 0 and not args.json:
            print(f"epoch {epoch + 1}/{c.epochs}  val/loss {loss_sum / count:.4f}  val/acc {correct / count:.4f}",
                  flush=True)
    timings["steps_per_epoch"] = math.ceil(len(order) / c.batch_size)
    if rank == 0 and args.json:
        print(json.dumps(timings), flush=True)
    del model  # the DDP wrapper, before the group goes (leave_group)
    leave_group()


def leave_group() -> None:
    """Leave the process group together, once the caller has dropped its DDP wrappers. A
    wrapper's reducer holds the gloo group; freed only at interpreter exit, after
    destroy_process_group, it can abort the process ("terminate called without an active
    exception"). The wrappers hold reference cycles, so they go at a collection."""
    import gc

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
