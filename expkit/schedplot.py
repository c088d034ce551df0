"""`expkit sched [OVERRIDES] [--out FILE]`: the learning rate of the composed config over
the whole run, drawn into a PNG and printed at a few points, without training."""

from __future__ import annotations

import sys


def main(args: list[str]) -> None:
    out = "lr_schedule.png"
    if "--out" in args:
        i = args.index("--out")
        out = args[i + 1]
        args = args[:i] + args[i + 2:]
    from hydra import compose, initialize_config_module

    from expkit.app import CONFIG_MODULE, task_config
    from expkit.schema import validate

    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=args)
    typed = validate(task_config(cfg))
    steps_per_epoch = steps_per_epoch_of(typed)
    epochs = typed["trainer"].epochs

    from expkit.sched import simulate

    lrs = simulate(typed["sched"], typed["optim"], epochs, steps_per_epoch)
    print(f"sched={typed['sched'].name} warmup_epochs={typed['sched'].warmup_epochs} optim.lr={typed['optim'].lr} "
          f"epochs={epochs} steps/epoch={steps_per_epoch}")
    points = sorted({0, steps_per_epoch - 1, *(round(f * (len(lrs) - 1)) for f in (0.1, 0.25, 0.5, 0.75, 0.9)),
                     len(lrs) - 1, *(e * steps_per_epoch for e in range(1, epochs))})
    for p in points:
        print(f"  step {p:>6}  epoch {p / steps_per_epoch:6.2f}  lr {lrs[p]:.6g}")
    plot(lrs, steps_per_epoch, f"sched={typed['sched'].name}", out)
    print(f"wrote {out}")


def steps_per_epoch_of(typed) -> int:
    """From the data set's size, without building loaders."""
    import math

    from expkit.data import build_data

    data = build_data(typed["data"], typed["seed"])
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


if __name__ == "__main__":
    main(sys.argv[1:])
