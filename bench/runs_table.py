"""How long `expkit runs` takes over many run folders: generates N run folders (default
2,000: half single runs under runs/<date>/<time>, half sweep jobs under
runs/multirun/<date>/<time>/<n>_<overrides>), each with the files a real run leaves
(meta.json, metrics.json, config.yaml, .hydra/, train.log, an event file, checkpoints/),
then times, over several rounds (median, min-max):

- `expkit runs ROOT` as a whole command (a new process: Python start-up included)
- `expkit runs ROOT --where optim=adamw` (reads config.yaml too; parses only the files
  that contain the text `adamw`)
- the same two in-process (expkit.runs(...)), without start-up, and `--where
  optim.lr=0.001` in-process (a number: every config.yaml is parsed)

Target: the plain table under 1 s as a whole command.

    python bench/runs_table.py [--runs 2000] [--rounds 5]

Writes the table to bench/results/runs_table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import expkit

OPTIMS = ("adamw", "adam", "sgd", "rmsprop")
STATUSES = ("completed", "completed", "completed", "failed", "interrupted")


def config_yaml(optim: str, lr: float, seed: int) -> str:
    """A resolved config of the size expkit writes (about 80 lines)."""
    return f"""data:
  name: digits
  root: null
  batch_size: 64
  val_fraction: 0.2
  test_fraction: 0.0
  split_seed: 0
  sample: null
  num_workers: 0
  loader: auto
  on_device: true
  augment: false
model:
  arch: cnn
  activation: relu
  channels: [32, 64]
  hidden: 128
optim:
  name: {optim}
  lr: {lr}
  weight_decay: 0.01
  betas: [0.9, 0.999]
  eps: 1.0e-08
sched:
  name: none
  warmup_epochs: 0
init:
  name: default
reg:
  dropout: 0.0
  dropout_conv: 0.0
  batchnorm: false
  grad_clip: null
  grad_clip_mode: norm
  label_smoothing: 0.0
trainer:
  epochs: 10
  eval_every: 1
  log_every: 10
  devices: 1
  accelerator: auto
  precision: '32'
  deterministic: false
  checkpoint: true
  keep_last: 2
  progress: auto
  histogram_every: 0
  tensorboard: true
  graph: true
  compile: false
  channels_last: false
  num_threads: null
  max_steps: null
  untracked_max_kb: 256
sweep:
  resume: false
  metric: val/acc
seed: {seed}
name: null
"""


def make_run(folder: Path, i: int, overrides: list[str], optim: str, lr: float) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    status = STATUSES[i % len(STATUSES)]
    started = f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00+00:00"
    meta = {"git": {"repo": "/home/u/project", "commit": f"{i:040x}", "branch": "main", "dirty": i % 3 == 0,
                    "remote": None},
            "command": ["expkit", "train", *overrides], "overrides": overrides, "status": status,
            "started": started, "ended": started.replace("+00:00", "+00:00"), "host": "bench",
            "versions": {"python": platform.python_version(), "torch": "2.14.1"},
            "environment": {"host": "bench", "cpu_count": 2}, "world_size": 1, "cwd": "/home/u/project",
            "data": {"name": "digits", "sizes": {"train": 1438, "val": 359}, "sha256": "0" * 64}}
    metrics = {"train/loss": 0.1, "train/acc": 0.97, "val/loss": 0.05 + i % 7 / 100,
               "val/acc": 0.9 + (i % 97) / 1000, "best/val/acc": 0.95, "epoch": 10, "step": 230}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (folder / "config.yaml").write_text(config_yaml(optim, lr, i))
    (folder / ".hydra" / "config.yaml").write_text(config_yaml(optim, lr, i))
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
    (folder / "train.log").write_text("log line\n" * 50)
    (folder / "events.out.tfevents.0.bench").write_bytes(b"\0" * 4096)
    for name in ("step-230.pt", "last.pt", "best.pt"):
        (folder / "checkpoints" / name).write_bytes(b"\0" * 1024)


def generate(root: Path, n: int) -> None:
    for i in range(n):
        optim, lr = OPTIMS[i % len(OPTIMS)], (1e-3, 3e-4, 1e-2)[i % 3]
        overrides = [f"optim={optim}", f"optim.lr={lr}"]
        if i % 2:
            sweep = root / "multirun" / "2026-11-29" / f"{i // 40:02d}-00-00"
            make_run(sweep / f"{i % 40}_optim={optim},optim.lr={lr}", i, overrides, optim, lr)
        else:
            make_run(root / f"2026-11-{1 + i % 28:02d}" / f"{i // 28:02d}-{i % 60:02d}-00", i, overrides, optim, lr)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def command(root: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "expkit", "runs", str(root), *extra], check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "runs_table.md"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="expkit-bench-runs-"))
    try:
        root = tmp / "runs"
        generate(root, args.runs)
        found = len(expkit.runs(str(root)))
        assert found == args.runs, f"expkit runs found {found} of {args.runs} folders"
        adamw = len(expkit.runs(str(root), where=["optim=adamw"]))
        cases = {
            "`expkit runs ROOT` (whole command)": lambda: command(root),
            "`expkit runs ROOT --where optim=adamw` (whole command)": lambda: command(root, "--where", "optim=adamw"),
            "`expkit.runs(ROOT)` (in-process)": lambda: expkit.runs(str(root)),
            "`expkit.runs(ROOT, where=[\"optim=adamw\"])` (in-process)": lambda: expkit.runs(str(root),
                                                                                            where=["optim=adamw"]),
            "`expkit.runs(ROOT, where=[\"optim.lr=0.001\"])` (in-process; a number: every config.yaml parsed)":
                lambda: expkit.runs(str(root), where=["optim.lr=0.001"]),
            "`python -c pass` (start-up alone, for reference)": lambda: subprocess.run([sys.executable, "-c", "pass"],
                                                                                       check=True),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # interleaved, so drift in the machine's speed hits every case alike
            for name, fn in cases.items():
                times[name].append(timed(fn))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    lines = [
        f"# expkit runs over {args.runs:,} run folders",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; `python bench/runs_table.py --runs {args.runs} --rounds {args.rounds}`; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"load average {load:.2f} at the end. {args.runs // 2} single runs and {args.runs - args.runs // 2} sweep "
        f"jobs; every listing found all {found} ({adamw} with optim=adamw). Target: the whole command under 1 s.",
        "",
        "| case | median s | min-max s |",
        "| --- | ---: | ---: |",
    ]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
