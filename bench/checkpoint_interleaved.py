"""What checkpoints cost whole epochs, written in line and in the background, interleaved.

    .venv/bin/python bench/checkpoint_interleaved.py [--model mlp|cnn] [--rounds 20] [--threads N] [--out FILE]

Three Trainers of the same run are built once: without checkpoints (trainer.checkpoint=false),
with a checkpoint every epoch written on the training thread (trainer.checkpoint_async=false),
and with the default, written on a background thread. A round gives each in turn (the order
rotates) EPOCHS_PER_ROUND whole epochs as `expkit train` runs them (training, evaluation,
checkpoint) and then waits for its last checkpoint to reach the disk, so no write is left to
overlap the next contender's epochs, and the last one of each round is paid in full.
Ratio: steps/s with checkpoints / without, the median of the per-round ratios and the ratio
of the totals.

--threads N trains on N torch threads (default: expkit's, one per core). With one thread on
a two-core machine a core is left to the writer thread, as on a GPU machine, where the CPU
mostly waits for the device: that shows what the background write hides when it does not
have to take turns with training for the CPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import build_trainer, cli, interleave, quiet_expkit, ratio_summary, speed_ratios  # noqa: E402
from plain_loop import Config  # noqa: E402

EPOCHS_PER_ROUND = 4
SETTINGS = {
    "no checkpoints": ["trainer.checkpoint=false"],
    "in line": ["trainer.checkpoint_async=false"],
    "background": [],
}


def whole_epochs(trainer):
    """A contender's round: EPOCHS_PER_ROUND epochs as Trainer.train_epochs runs them, then the
    wait for the checkpoint in flight."""
    def run(_round: int) -> None:
        for _ in range(EPOCHS_PER_ROUND):
            trainer.train_epoch(trainer.epoch)
            trainer.epoch, trainer.batch = trainer.epoch + 1, 0
            trainer.evaluate_and_record(trainer.epoch)
            if trainer.t.checkpoint:
                trainer.save_checkpoint(best=trainer.epoch % 2 == 0)
        trainer.finish_saving()
    return run


def measure(c: Config, rounds: int, threads: int | None = None) -> dict:
    import torch

    threads_before = torch.get_num_threads()  # the setting is the process's; leave it as found
    extra_for_all = [f"trainer.num_threads={threads}"] if threads else []
    try:
        with quiet_expkit(), tempfile.TemporaryDirectory() as tmp:
            trainers = {name: build_trainer(c, extra + extra_for_all, Path(tmp) / str(i))
                        for i, (name, extra) in enumerate(SETTINGS.items())}
            used_threads = torch.get_num_threads()
            seconds, cpu = interleave({name: whole_epochs(t) for name, t in trainers.items()}, rounds)
            size = (Path(tmp) / "2" / "checkpoints" / "last.pt").stat().st_size
            steps = EPOCHS_PER_ROUND * len(trainers["background"].data.train)
            for t in trainers.values():
                t.writer.close()
    finally:
        torch.set_num_threads(threads_before)
    ratios = {name: speed_ratios(seconds, cpu, of=name, to="no checkpoints") for name in ("in line", "background")}
    return {"config": c, "rounds": rounds, "steps": steps, "seconds": seconds, "cpu": cpu, "ratios": ratios,
            "checkpoint_mb": size / 1e6, "threads": used_threads, "cores": os.cpu_count()}


def table(res: dict) -> list[str]:
    lines = [
        f"Checkpoint cost, {res['config'].model} ({res['rounds']} rounds of {EPOCHS_PER_ROUND} whole epochs, "
        f"{res['steps']} steps, a {res['checkpoint_mb']:.1f} MB checkpoint after every epoch; interleaved; "
        f"{res['threads']} torch thread{'s' if res['threads'] > 1 else ''} on {res['cores']} cores):",
        "",
        "| checkpoints written | steps/s with / without: median of rounds (quartiles) | totals |",
        "| --- | ---: | ---: |",
    ]
    for name in ("in line", "background"):
        median, q1, q3, total = ratio_summary({**res, "ratios": res["ratios"][name]}, "wall", of=name,
                                              to="no checkpoints")
        lines.append(f"| {name} | {median:.3f} (quartiles {q1:.3f}-{q3:.3f}) | {total:.3f} |")
    return lines


if __name__ == "__main__":
    sys.exit(cli(None, __doc__, measure, table,
                 extra={"threads": {"type": int, "help": "torch threads (default: one per core)"}}))
