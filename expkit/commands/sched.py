"""`expkit sched [OVERRIDES] [--out FILE]`: the learning rate of the composed config over
the whole run, drawn into a PNG and printed at a few points, without training."""

from __future__ import annotations

import argparse

HELP = "draw the learning rate of a config over the whole run into a PNG, without training"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sched", help=HELP, description=HELP + ".",
                              epilog="Example: expkit sched sched=onecycle trainer.epochs=20 --out onecycle.png")
    p.add_argument("overrides", metavar="OVERRIDES", nargs="*", help="group=choice and key=value, as for train")
    p.add_argument("--out", metavar="FILE", default="lr_schedule.png", help="the PNG to write (%(default)s)")
    return p


def run(args: argparse.Namespace) -> int:
    from expkit.config.compose import check_overrides, task_config
    from expkit.config.schema import validate

    cfg = check_overrides(args.overrides)
    typed = validate(task_config(cfg))
    steps_per_epoch = steps_per_epoch_of(typed)
    epochs = typed["trainer"].epochs

    from expkit.training.sched import simulate

    lrs = simulate(typed["sched"], typed["optim"], epochs, steps_per_epoch)
    print(f"sched={typed['sched'].name} warmup_epochs={typed['sched'].warmup_epochs} optim.lr={typed['optim'].lr} "
          f"epochs={epochs} steps/epoch={steps_per_epoch}")
    points = sorted({0, steps_per_epoch - 1, *(round(f * (len(lrs) - 1)) for f in (0.1, 0.25, 0.5, 0.75, 0.9)),
                     len(lrs) - 1, *(e * steps_per_epoch for e in range(1, epochs))})
    for p in points:
        print(f"  step {p:>6}  epoch {p / steps_per_epoch:6.2f}  lr {lrs[p]:.6g}")
    plot(lrs, steps_per_epoch, f"sched={typed['sched'].name}", args.out)
    print(f"wrote {args.out}")
    return 0


def steps_per_epoch_of(typed) -> int:
    """From the data set's size, without building loaders."""
    import math

    from expkit.data import build_data

    data = build_data(typed["data"], typed["seed"], task=typed["task"].name)
    return max(1, math.ceil(data.info["sizes"]["train"] / typed["data"].batch_size))


def plot(lrs: list[float], steps_per_epoch: int, title: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([i / steps_per_epoch for i in range(len(lrs))], lrs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
