"""expkit's DDP training epochs against a hand-written DDP loop's, interleaved in the same processes.

    .venv/bin/torchrun --standalone --nproc_per_node=2 bench/ddp_interleaved.py [--model mlp|cnn] [--rounds 20]

bench/run.py's DDP section times whole `expkit train trainer.devices=2` and `torchrun
bench/plain_ddp.py` runs one after another; on two shared cores their step times move by
10-20% between runs. Here each rank builds both, on the one process group torchrun made:
expkit's Trainer (as `expkit train` builds it under torchrun, at its defaults) and
bench/plain_ddp.py's loop (DistributedDataParallel of the same model, the same shards of
the same data, AdamW), and the ranks run their training epochs alternately, A B, B A, ...
Ratio: expkit steps/s / plain steps/s per round (rank 0's wall time), median and totals.
Threads per process: expkit's rule for both (OMP_NUM_THREADS, which torchrun sets to 1).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import (  # noqa: E402
    build_trainer,
    cli,
    interleave,
    quiet_expkit,
    ratio_summary,
    speed_ratios,
)
from plain_ddp import leave_group, shard  # noqa: E402
from plain_loop import Config, make_data, make_model, make_optimizer  # noqa: E402


class PlainDDP:
    """bench/plain_ddp.py's training epoch, on the process group that exists."""

    def __init__(self, c: Config):
        import torch
        import torch.distributed as dist
        from torch import nn

        self.c, self.rank, self.world = c, dist.get_rank(), dist.get_world_size()
        self.train_x, self.train_y, _, _ = make_data(c)
        torch.manual_seed(c.seed + self.rank)
        self.model = nn.parallel.DistributedDataParallel(make_model(c))
        self.optimizer = make_optimizer(self.model.module, c)
        self.steps = len(range(0, len(shard(len(self.train_y), c.batch_size, c.seed, 0, self.rank, self.world,
                                            shuffle=True)), c.batch_size))

    def train_epoch(self, epoch: int) -> None:
        from torch import nn

        self.model.train()
        order = shard(len(self.train_y), self.c.batch_size, self.c.seed, epoch, self.rank, self.world, shuffle=True)
        for i in range(0, len(order), self.c.batch_size):
            idx = order[i : i + self.c.batch_size]
            x, y = self.train_x.index_select(0, idx), self.train_y.index_select(0, idx)
            self.optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()


def measure(c: Config, rounds: int) -> dict:
    import torch.distributed as dist

    with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
        expkit = build_trainer(c, [], Path(tmp) / "expkit")  # joins the group torchrun set up
        plain = PlainDDP(c)
        assert plain.steps == len(expkit.data.train), "the two loops must take the same steps"

        def expkit_epoch(r: int) -> None:
            expkit.train_epoch(r)
            expkit.writer.flush()
            dist.barrier()  # the round's next contender starts on every rank together

        def plain_epoch(r: int) -> None:
            plain.train_epoch(r)
            dist.barrier()

        seconds, cpu = interleave({"expkit": expkit_epoch, "plain": plain_epoch}, rounds)
        expkit.writer.close()
        world = dist.get_world_size()
        expkit.release_model()
        plain.model = None
        leave_group()
    return {"model": c.model, "rounds": rounds, "steps": plain.steps, "seconds": seconds, "cpu": cpu,
            "ratios": speed_ratios(seconds, cpu, of="expkit", to="plain"), "world": world}


def table(res: dict) -> list[str]:
    median, q1, q3, total = ratio_summary(res, "wall", of="expkit", to="plain")
    ms = {k: 1000 * sorted(v)[len(v) // 2] / res["steps"] for k, v in res["seconds"].items()}
    return [
        f"DDP, {res['world']} gloo processes, {res['model']} ({res['steps']} steps an epoch per process, "
        f"{res['rounds']} rounds of one training epoch each, interleaved in the same processes; plain DDP loop: "
        f"{ms['plain']:.2f} ms a step, expkit at defaults: {ms['expkit']:.2f}):",
        "",
        "| measured on | expkit / plain DDP loop, steps/s: median of rounds (quartiles) | totals |",
        "| --- | ---: | ---: |",
        f"| wall time, rank 0 | {median:.3f} (quartiles {q1:.3f}-{q3:.3f}) | {total:.3f} |",
    ]


if __name__ == "__main__":
    sys.exit(cli(None, __doc__, measure, table, rounds=20))
