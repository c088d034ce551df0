"""expkit against a hand-written PyTorch loop and against PyTorch Lightning, side by side.

    make bench                      (installs the bench extra, then runs this)
    .venv/bin/python bench/run.py [--rounds 5] [--only loop,command,data,ddp] [--quick]

Every contender trains the same run: synthetic data, the same model, AdamW, seed and
batch order (bench/plain_loop.py; expkit: `data=synthetic model=mlp data.size=N ...`).
Contenders run interleaved, in a rotating order, once per round; tables give the median
and the spread (min-max) over rounds, and ratios are taken within a round (the same
machine state) before the median is taken. Sections:

1. loop      steps/s after a warm-up epoch, in one process: expkit at its defaults and with
             logging and checkpoints off, the plain loop, Lightning off and at defaults;
             the training phase of an epoch, and the whole epoch (+ evaluation, checkpoint,
             logging); expkit's and the plain loop's final weights compared bit for bit;
             then bench/loop_interleaved.py: two instances each of expkit and of the plain
             loop (and two more plain loops, the floor), their training epochs taking turns
             in a rotating order for 40 rounds, the finer measure the target is judged on,
             the same on a narrow MLP (--model tiny-mlp) in microseconds a step, and
             bench/step_profile.py: expkit's own work per step, piece by piece
   switches  bench/loop_switches.py: trainer.accumulate=4 (batch / 4) against the one
             batch, trainer.ema on, after trainer.profile's trace, each against expkit at
             its defaults, interleaved epochs over Trainers built anew; and host syncs
             per step, counted
2. command   the whole command from the shell, start-up and imports included: wall time
             and peak RSS of `expkit train ...`, `python bench/plain_loop.py`,
             `python bench/lightning_loop.py`, and `python -c "import torch"` as the floor;
             a `-m` sweep of 20 tiny jobs against the plain loop training 20 runs in one process
3. data      bench/data_path.py: an epoch of 60,000 28x28 examples, fast path vs DataLoader
4. logging   bench/logging_cost.py: expkit's training epochs with logging at defaults and
             off (trainer.tensorboard=false trainer.log_every=10**9), alternating A B B A in
             one process for many rounds, since whole runs spread too much to see a few
             percent; section 1's rows with logging and checkpoints off are the coarse view
5. ddp       2 gloo processes: `expkit train trainer.accelerator=cpu trainer.devices=2` vs
             `torchrun --nproc_per_node=2 bench/plain_ddp.py`, step time (and wall time); then
             bench/ddp_interleaved.py: both loops in the same two processes, epochs alternating
6. checkpoint bench/checkpoint_interleaved.py: whole epochs without checkpoints, with them
             written in line and in the background, interleaved; again on one torch thread,
             which leaves a core to the writer as a GPU run does
7. scaling   bench/scaling.py: 1k, 10k, 100k examples on 1 and 2 processes: time and peak
             memory per example

Writes the tables to bench/results/latest.md with the machine described.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))

import checkpoint_interleaved  # noqa: E402
import ddp_interleaved  # noqa: E402
import lightning_loop  # noqa: E402
import logging_cost  # noqa: E402
import loop_interleaved  # noqa: E402
import loop_switches  # noqa: E402
import plain_loop  # noqa: E402
import scaling  # noqa: E402
import step_profile  # noqa: E402
from logging_cost import rotate  # noqa: E402
from plain_loop import Config  # noqa: E402
from scaling import timed_command  # noqa: E402

ALL_SECTIONS = "loop,switches,command,data,logging,ddp,checkpoint,scaling"
SWEEP_JOBS = 20
QUIET = ["trainer.tensorboard=false", "trainer.checkpoint=false", f"trainer.log_every={10**9}"]


# ------------------------------------------------------------------ statistics
def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def ratios(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios a/b: each round's contenders ran back to back on the same machine state."""
    return [x / y for x, y in zip(a, b, strict=True)]


def machine() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lightning = "not installed"
    if lightning_loop.available():
        import lightning

        lightning = lightning.__version__
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, lightning {lightning}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------- 1. loop, in process
def steady(timings: dict, steps: int) -> tuple[float, float]:
    """(training steps/s, whole-epoch steps/s) over the epochs after the first (warm-up).
    Training: epoch start to its last step. Whole epoch: one epoch start to the next, so
    evaluation, checkpoint and logging count."""
    starts, ends = timings["epoch_start"], timings["train_end"]
    train_s = sum(e - s for s, e in zip(starts[1:], ends[1:], strict=True))
    whole_s = starts[-1] - starts[1]
    return steps * (len(starts) - 1) / train_s, steps * (len(starts) - 2) / whole_s


def run_expkit(c: Config, extra: list[str]) -> tuple[dict, dict]:
    """expkit's own build and Trainer.fit in this process (a temporary run folder)."""
    from expkit.training.logs import close_logging, setup_logging

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        log = setup_logging(run_dir)
        for handler in log.handlers:  # train.log as usual; the console stays quiet for the tables
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
        trainer = logging_cost.build_trainer(c, extra, run_dir)
        timings: dict = {"epoch_start": [], "train_end": []}
        train_epoch = trainer.train_epoch

        def timed_epoch(epoch: int, start_batch: int = 0) -> None:
            timings["epoch_start"].append(time.perf_counter())
            train_epoch(epoch, start_batch)
            timings["train_end"].append(time.perf_counter())

        trainer.train_epoch = timed_epoch
        try:
            trainer.fit()
        finally:
            trainer.writer.close()
            close_logging()
        timings["steps_per_epoch"] = len(trainer.data.train)
        return trainer.raw_model.state_dict(), timings


def run_plain(c: Config) -> tuple[dict, dict]:
    model, timings = plain_loop.train(c)
    return model.state_dict(), timings


@contextlib.contextmanager
def output_to_devnull():
    """stdout and stderr to /dev/null at the file-descriptor level: Lightning's loggers and
    progress bar hold on to the original streams."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def run_lightning(c: Config, setting: str) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp, output_to_devnull():
        model, timings = lightning_loop.train(c, setting, tmp)  # progress bar and summary drawn, to nowhere
    return model.state_dict(), timings


def loop_contenders(c: Config) -> dict[str, Callable[[], tuple[dict, dict]]]:
    contenders = {
        "plain loop": lambda: run_plain(c),
        "expkit (defaults)": lambda: run_expkit(c, []),
        "expkit (logging, checkpoints off)": lambda: run_expkit(c, QUIET),
    }
    if lightning_loop.available():
        contenders["Lightning (off)"] = lambda: run_lightning(c, "off")
        contenders["Lightning (defaults)"] = lambda: run_lightning(c, "defaults")
    return contenders


def bench_loop(c: Config, rounds: int) -> dict:
    contenders = loop_contenders(c)
    train_sps: dict[str, list[float]] = {n: [] for n in contenders}
    epoch_sps: dict[str, list[float]] = {n: [] for n in contenders}
    equal: list[bool] = []
    max_diff = 0.0
    steps = 0
    for r in range(rounds):
        states = {}
        for name in rotate(list(contenders), r):
            gc.collect()
            state, timings = contenders[name]()
            steps = timings["steps_per_epoch"]
            t, e = steady(timings, steps)
            train_sps[name].append(t)
            epoch_sps[name].append(e)
            if name in ("plain loop", "expkit (defaults)"):
                states[name] = state
        a, b = states["plain loop"], states["expkit (defaults)"]
        equal.append(list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a))
        max_diff = max([max_diff] + [(a[k].double() - b[k].double()).abs().max().item() for k in a if k in b])
        print(f"  round {r + 1}/{rounds}: train steps/s " + ", ".join(
            f"{n} {train_sps[n][-1]:.0f}" for n in contenders) + f"; weights equal: {equal[-1]}", flush=True)
    return {"config": c, "steps_per_epoch": steps, "train": train_sps, "epoch": epoch_sps,
            "bitwise_equal": all(equal), "max_abs_diff": max_diff, "rounds": rounds}


def loop_table(res: dict) -> list[str]:
    c: Config = res["config"]
    plain = "plain loop"
    lines = [
        f"Model {c.model}, synthetic {'x'.join(map(str, c.shape))}, {c.size} training examples, batch "
        f"{c.batch_size} ({res['steps_per_epoch']} steps/epoch), AdamW, {c.epochs} epochs per run of which the "
        f"first warms up; {res['rounds']} rounds. Training steps/s: from the start of an epoch to its last step; "
        "whole-epoch steps/s: from one epoch's start to the next, so evaluation, checkpoint and logging count "
        "(the plain loop evaluates but writes nothing). x plain: median (min-max) of the per-round ratios; "
        "best: the fastest round of each, divided (the least disturbed by other processes). Final weights, expkit "
        "vs plain loop: "
        + ("**bitwise equal** in every round (torch.equal on every tensor of the state_dict)"
           if res["bitwise_equal"] else f"NOT bitwise equal (largest difference {res['max_abs_diff']:.3g})") + ".",
        "",
        "| contender | train steps/s | x plain | x plain, best | whole-epoch steps/s | x plain | x plain, best |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in res["train"]:
        cells = []
        for phase in ("train", "epoch"):
            v, base = res[phase][name], res[phase][plain]
            r = ratios(v, base)
            cells += [f"{median(v):,.0f} ({spread(v, '{:,.0f}')})", f"{median(r):.3f} ({spread(r, '{:.3f}')})",
                      f"{max(v) / max(base):.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------- 2. whole command
def bench_command(c: Config, rounds: int, tmp: Path) -> dict:
    py = sys.executable
    args = ["--model", c.model, "--size", str(c.size), "--epochs", str(c.epochs)]
    counter = iter(range(10**6))
    commands: dict[str, Callable[[], list[str]]] = {
        'python -c "import torch"': lambda: [py, "-c", "import torch"],
        "expkit --help": lambda: [str(BIN / "expkit"), "--help"],
        "python bench/plain_loop.py": lambda: [py, str(HERE / "plain_loop.py"), *args],
        # expkit pauses the garbage collector for its start and skips the final collection
        # (expkit/collector.py, expkit.cli.run); the same for the plain loop shows how much of
        # the difference is expkit's own work.
        "python bench/plain_loop.py --expkit-collector": lambda: [py, str(HERE / "plain_loop.py"), *args,
                                                                   "--expkit-collector"],
        "expkit train": lambda: [str(BIN / "expkit"), "train", *c.expkit_overrides(),
                                 f"hydra.run.dir={tmp}/cmd-{next(counter)}"],
        # A sweep of SWEEP_JOBS tiny jobs: Hydra runs them one after another in one process, so
        # the plain contender trains as many runs in one process too.
        f"expkit train -m ({SWEEP_JOBS} jobs)": lambda: [
            str(BIN / "expkit"), "train", "-m", *replace(c, size=256, epochs=1).expkit_overrides(),
            f"seed=range(0,{SWEEP_JOBS})", f"hydra.sweep.dir={tmp}/sweep-{next(counter)}"],
        f"python bench/plain_loop.py --jobs {SWEEP_JOBS}": lambda: [
            py, str(HERE / "plain_loop.py"), "--model", c.model, "--size", "256", "--epochs", "1",
            "--jobs", str(SWEEP_JOBS)],
    }
    if lightning_loop.available():
        for setting in lightning_loop.SETTINGS:
            commands[f"python bench/lightning_loop.py ({setting})"] = (
                lambda s=setting: [py, str(HERE / "lightning_loop.py"), "--setting", s, *args,
                                   "--root", f"{tmp}/lit-{next(counter)}"])
    wall: dict[str, list[float]] = {n: [] for n in commands}
    rss: dict[str, list[float]] = {n: [] for n in commands}
    for r in range(rounds):
        for name in rotate(list(commands), r):
            w, m = timed_command(commands[name](), ROOT)
            wall[name].append(w)
            rss[name].append(m)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {wall[n][-1]:.2f} s" for n in commands), flush=True)
    return {"config": c, "wall": wall, "rss": rss, "rounds": rounds}


def command_table(res: dict) -> list[str]:
    c: Config = res["config"]
    plain = "python bench/plain_loop.py"
    lines = [
        f"The whole command from the shell (output to a pipe, so expkit's progress=auto prints plain lines and "
        f"Lightning draws its progress bar into the pipe): model {c.model}, {c.size} synthetic examples, "
        f"{c.epochs} epochs; `expkit train {' '.join(c.expkit_overrides())}` writes its whole run folder "
        f"(provenance, git state, TensorBoard events, checkpoints). {res['rounds']} rounds; "
        "peak RSS from GNU time (%M).",
        "",
        "| command | wall s | - plain (s) | x plain | peak RSS MiB | x plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in res["wall"]:
        w, m = res["wall"][name], res["rss"][name]
        diff = [a - b for a, b in zip(w, res["wall"][plain], strict=True)]
        rw, rm = ratios(w, res["wall"][plain]), ratios(m, res["rss"][plain])
        lines.append(f"| `{name}` | {median(w):.2f} ({spread(w, '{:.2f}')}) | {median(diff):+.2f} | "
                     f"{median(rw):.2f} | {median(m):,.0f} | {median(rm):.2f} |")
    return lines


# ------------------------------------------------------------------- 3. data
def bench_data(rounds: int, out: Path) -> dict:
    import data_path

    return data_path.main(["--rounds", str(rounds), "--out", str(out)])


def data_table(res: dict) -> list[str]:
    one, premade = "compute only (one pre-made batch)", "compute only (pre-made batches)"
    lines = ["An epoch of 60,000 synthetic 1x28x28 examples through an MLP 784-256-256-10 (SGD, batch 128): "
             "bench/data_path.py, whose full table is in bench/results/data_path.md. Two baselines with no loader "
             "work: one pre-made batch used for every step (stays in the CPU caches) and the epoch's batches "
             "gathered beforehand (the same memory traffic as a real epoch). Ratios: median epochs; fastest epochs.",
             "", f"| path | s/epoch | x {one} | x {premade} |", "| --- | ---: | ---: | ---: |"]
    for name, v in res.items():
        lines.append(f"| {name} | {v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f}) | "
                     f"{v['median'] / res[one]['median']:.3f}; {v['min'] / res[one]['min']:.3f} | "
                     f"{v['median'] / res[premade]['median']:.3f}; {v['min'] / res[premade]['min']:.3f} |")
    return lines


# -------------------------------------------------------------------- 5. DDP
def expkit_epoch_seconds(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars("time/epoch_s")]


def bench_ddp(c: Config, rounds: int, tmp: Path) -> dict:
    steps = None
    counter = iter(range(10**6))
    # torchrun sets OMP_NUM_THREADS=1 for several processes a node and expkit's own launch
    # does not: both get the same threads per process, expkit's default (cores / processes).
    from expkit.training.dist import usable_cores

    threads_env = dict(os.environ, OMP_NUM_THREADS=str(max(1, usable_cores() // 2)))

    def expkit_run() -> tuple[float, list[float]]:
        run_dir = tmp / f"ddp-{next(counter)}"
        started = time.perf_counter()
        subprocess.run([str(BIN / "expkit"), "train", *c.expkit_overrides(), "trainer.accelerator=cpu",
                        "trainer.devices=2", f"hydra.run.dir={run_dir}"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=threads_env)
        return time.perf_counter() - started, expkit_epoch_seconds(run_dir)

    def plain_run() -> tuple[float, list[float]]:
        nonlocal steps
        started = time.perf_counter()
        # --standalone: a free port each time (the fixed default 29500 can still be held by the last run).
        proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(HERE / "plain_ddp.py"),
                               "--json", "--model", c.model, "--size", str(c.size), "--epochs", str(c.epochs)],
                              cwd=ROOT, capture_output=True, text=True, env=threads_env)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun bench/plain_ddp.py exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        out = proc.stdout
        wall = time.perf_counter() - started
        t = json.loads(out.strip().splitlines()[-1])
        steps = t["steps_per_epoch"]
        return wall, [e - s for s, e in zip(t["epoch_start"], t["train_end"], strict=True)]

    contenders = {"torchrun bench/plain_ddp.py": plain_run, "expkit train trainer.devices=2": expkit_run}
    step_ms: dict[str, list[float]] = {n: [] for n in contenders}
    wall: dict[str, list[float]] = {n: [] for n in contenders}
    for r in range(rounds):
        for name in rotate(list(contenders), r):
            w, epochs = contenders[name]()
            wall[name].append(w)
            step_ms[name].append(1000 * median(epochs[1:]) / steps)  # after the warm-up epoch
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {step_ms[n][-1]:.2f} ms/step, {wall[n][-1]:.1f} s" for n in contenders), flush=True)
    return {"config": c, "steps_per_epoch": steps, "step_ms": step_ms, "wall": wall, "rounds": rounds}


def run_writing_json(what: str, cmd: list[str], out: Path, env: dict[str, str] | None = None) -> Path:
    """Run a bench script in a process of its own with `--json out`; `out`, or an error
    naming `what` with the end of its stderr."""
    proc = subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return out


def bench_ddp_interleaved(rounds: int, tmp: Path) -> dict:
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(HERE / "ddp_interleaved.py"),
           "--rounds", str(rounds)]
    return json.loads(run_writing_json("torchrun bench/ddp_interleaved.py", cmd, tmp / "ddp_interleaved.json")
                      .read_text())


def bench_checkpoint_spare_core(c: Config, rounds: int, tmp: Path) -> dict:
    """bench/checkpoint_interleaved.py on one torch thread, in a process of its own started
    that way (OMP_NUM_THREADS=1), as a run that leaves a core idle would be."""
    cmd = [str(BIN / "python"), str(HERE / "checkpoint_interleaved.py"), "--model", c.model, "--size", str(c.size),
           "--rounds", str(rounds), "--threads", "1"]
    return logging_cost.load_json(run_writing_json("bench/checkpoint_interleaved.py", cmd,
                                                   tmp / "checkpoint_spare_core.json",
                                                   env={**os.environ, "OMP_NUM_THREADS": "1"}))


def ddp_table(res: dict) -> list[str]:
    c: Config = res["config"]
    plain = "torchrun bench/plain_ddp.py"
    lines = [f"2 processes (gloo, 1 thread each), model {c.model}, {c.size} synthetic examples, {c.batch_size} per "
             f"process per step ({res['steps_per_epoch']} steps/epoch), {c.epochs} epochs; step time = median "
             f"training-phase epoch time after the first epoch / steps (expkit's from its time/epoch_s events). "
             f"{res['rounds']} rounds.", "",
             "| command | ms/step | x plain | whole command s | x plain |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in res["step_ms"]:
        s, w = res["step_ms"][name], res["wall"][name]
        rs, rw = ratios(s, res["step_ms"][plain]), ratios(w, res["wall"][plain])
        lines.append(f"| `{name}` | {median(s):.2f} ({spread(s, '{:.2f}')}) | {median(rs):.3f} "
                     f"({spread(rs, '{:.3f}')}) | {median(w):.1f} ({spread(w, '{:.1f}')}) | {median(rw):.2f} |")
    return lines


# ------------------------------------------------------------------ summary
def summary(results: dict) -> list[str]:
    rows: list[tuple[str, str, str, str, str]] = []  # benchmark, median, best, target, met

    def add(what: str, values: list[float], target: str, ok: bool | None, fmt: str = "{:.3f}",
            best: float | None = None) -> None:
        text = f"{fmt.format(median(values))} ({spread(values, fmt)})"
        rows.append((what, text, "-" if best is None else fmt.format(best), target,
                     "-" if ok is None else ("yes" if ok else "**no**")))

    def loop_ratio(res: dict, phase: str, a: str, b: str) -> tuple[list[float], float]:
        return ratios(res[phase][a], res[phase][b]), max(res[phase][a]) / max(res[phase][b])

    lit, ex, plain = "Lightning (defaults)", "expkit (defaults)", "plain loop"
    quiet = "expkit (logging, checkpoints off)"
    for key in ("loop_mlp", "loop_cnn"):
        if key not in results:
            continue
        res = results[key]
        m = res["config"].model
        r, best = loop_ratio(res, "train", ex, plain)
        # The target is judged on the interleaved epochs below: whole contenders in turn spread too much.
        add(f"loop ({m}): expkit / plain loop, training steps/s, whole runs", r, "-", None, best=best)
        key = f"loop_interleaved_{m}"
        if key in results:
            r = results[key]["ratios"]["wall"]
            add(f"loop ({m}): expkit / plain loop, training steps/s, interleaved epochs", r, ">= 0.99",
                median(r) >= 0.99)
            if "floor" in results[key]:
                add(f"loop ({m}): the floor, a second group of plain loops / the first, interleaved epochs",
                    results[key]["floor"]["wall"], "-", None)
        r, best = loop_ratio(res, "epoch", ex, plain)
        add(f"loop ({m}): expkit / plain loop, whole-epoch steps/s (expkit also checkpoints)", r, "-", None,
            best=best)
        if lit in res["train"]:
            for phase, label in (("train", "training"), ("epoch", "whole-epoch")):
                r, best = loop_ratio(res, phase, ex, lit)
                add(f"loop ({m}): expkit / Lightning at defaults, {label} steps/s", r, "> 1", median(r) > 1,
                    best=best)
        rows.append((f"loop ({m}): final weights, expkit vs plain loop",
                     "bitwise equal" if res["bitwise_equal"] else f"differ by up to {res['max_abs_diff']:.3g}", "-",
                     "equal", "yes" if res["bitwise_equal"] else "**no**"))
        r, best = loop_ratio(res, "train", ex, quiet)
        add(f"logging ({m}): expkit defaults / logging+checkpoints off, training steps/s, whole runs", r, "-",
            None, best=best)
        r, best = loop_ratio(res, "epoch", ex, quiet)
        add(f"logging + checkpoint ({m}): expkit defaults / off, whole-epoch steps/s, whole runs", r, "-",
            None, best=best)
    if "loop_interleaved_tiny-mlp" in results:
        res = results["loop_interleaved_tiny-mlp"]
        step_ms = logging_cost.ms_per_step(res)["plain"]
        what = f"loop ({res['config'].label()}, {step_ms:.2f} ms steps): expkit - plain loop"
        add(f"{what}, microseconds a step, interleaved epochs", loop_interleaved.added_us(res), "-", None,
            fmt="{:+.1f}")
        add(f"{what}: the floor, a second group of plain loops - the first", loop_interleaved.added_us(
            res, of="plain, again"), "-", None, fmt="{:+.1f}")
    for key in ("logging_mlp", "logging_cnn"):
        if key in results:
            r = results[key]["ratios"]["wall"]
            add(f"logging ({results[key]['config'].model}): defaults / off, training steps/s, interleaved epochs", r,
                ">= 0.97", median(r) >= 0.97)
    if "switches" in results:
        res = results["switches"]
        r = res["ratios"]
        add("accumulation (mlp): trainer.accumulate=4 at batch / 4 / one batch, optimizer steps/s, interleaved",
            r["accumulate 4"]["wall"], "-", None)
        add("EMA (mlp): trainer.ema=0.999 / off, steps/s, interleaved", r["ema"]["wall"], ">= 0.97",
            median(r["ema"]["wall"]) >= 0.97)
        add("profile (mlp): after trainer.profile=2's trace / off (off: no profiler exists), steps/s, interleaved",
            r["profile done"]["wall"], ">= 0.99", median(r["profile done"]["wall"]) >= 0.99)
        sy = res["syncs"]
        rows.append(("host syncs (mlp, defaults): per log step; on the steps between", f"{sy['per_log_step']:g}; "
                     f"{sy['between_log_steps']} on {sy['other_steps']} steps", "-", "1; 0",
                     "yes" if sy["per_log_step"] == 1 and sy["between_log_steps"] == 0 else "**no**"))
    if "command" in results:
        res = results["command"]
        w, plain = res["wall"], res["wall"]["python bench/plain_loop.py"]
        ex = w["expkit train"]
        d = [a - b for a, b in zip(ex, plain, strict=True)]
        add("whole command: expkit train - plain script, wall s", d, "< 0.5 s", median(d) < 0.5, "{:+.2f}",
            best=min(ex) - min(plain))
        sweep = w[f"expkit train -m ({SWEEP_JOBS} jobs)"]
        plain_jobs = w[f"python bench/plain_loop.py --jobs {SWEEP_JOBS}"]
        add(f"sweep of {SWEEP_JOBS} tiny jobs (-m): expkit / plain loop, wall per job", ratios(sweep, plain_jobs), "-",
            None, "{:.2f}", best=min(sweep) / min(plain_jobs))
        d = [(a - b) / SWEEP_JOBS for a, b in zip(sweep, plain_jobs, strict=True)]
        add(f"sweep of {SWEEP_JOBS} tiny jobs (-m): expkit - plain loop, wall s per job", d, "-", None, "{:+.2f}",
            best=(min(sweep) - min(plain_jobs)) / SWEEP_JOBS)
        add("whole command: expkit train / plain script, wall", ratios(ex, plain), "-", None, "{:.2f}",
            best=min(ex) / min(plain))
        frozen = w["python bench/plain_loop.py --expkit-collector"]
        d = [a - b for a, b in zip(ex, frozen, strict=True)]
        add("whole command: expkit train - plain script with expkit's garbage collector handling, wall s", d, "-", None,
            "{:+.2f}", best=min(ex) - min(frozen))
        name = "python bench/lightning_loop.py (defaults)"
        if name in w:
            r = ratios(ex, w[name])
            add("whole command: expkit train / Lightning at defaults, wall", r, "< 1", median(r) < 1, "{:.2f}",
                best=min(ex) / min(w[name]))
            r = ratios(res["rss"]["expkit train"], res["rss"][name])
            add("whole command: expkit train / Lightning at defaults, peak RSS", r, "< 1", median(r) < 1, "{:.2f}")
        add("`expkit --help`, wall s", w["expkit --help"], "instant (torch-free)", None, "{:.2f}",
            best=min(w["expkit --help"]))
    if "data" in results:
        res = results["data"]
        fast = res["tensor (fast path)"]
        for base in ("compute only (one pre-made batch)", "compute only (pre-made batches)"):
            r = fast["median"] / res[base]["median"]
            rows.append((f"data: fast path / {base}, s/epoch", f"{r:.3f}", f"{fast['min'] / res[base]['min']:.3f}",
                         "<= 1.10", "yes" if r <= 1.10 else "**no**"))
        dl = res["DataLoader, num_workers=0"]
        rows.append(("data: DataLoader (0 workers) / fast path, s/epoch", f"{dl['median'] / fast['median']:.2f}",
                     f"{dl['min'] / fast['min']:.2f}", "-", "-"))
    if "ddp" in results:
        res = results["ddp"]
        names = list(res["step_ms"])
        step, wall = res["step_ms"], res["wall"]
        r = ratios(step[names[1]], step[names[0]])
        # Judged on the interleaved row below: whole runs one after another spread by +-10% here.
        add("DDP, 2 gloo processes: expkit / plain torchrun, time per step, whole runs", r, "-", None,
            best=min(step[names[1]]) / min(step[names[0]]))
        r = ratios(wall[names[1]], wall[names[0]])
        add("DDP, 2 gloo processes: expkit / plain torchrun, whole command", r, "-", None, "{:.2f}",
            best=min(wall[names[1]]) / min(wall[names[0]]))
    if "ddp_interleaved" in results:
        r = [1 / v for v in results["ddp_interleaved"]["ratios"]["wall"]]
        add("DDP, 2 gloo processes: expkit / plain DDP loop, time per step, interleaved epochs", r, "<= 1.02",
            median(r) <= 1.02)
    if "checkpoint" in results:
        res = results["checkpoint"]
        for name, target in (("in line", None), ("background", 0.99)):
            r = res["ratios"][name]["wall"]
            add(f"checkpoints ({res['config'].model}): written {name} / none, whole-epoch steps/s, interleaved", r,
                f">= {target}" if target else "-", median(r) >= target if target else None)
    if "checkpoint_spare_core" in results:
        res = results["checkpoint_spare_core"]
        for name in ("in line", "background"):
            add(f"checkpoints ({res['config'].model}), 1 torch thread (a core to spare): written {name} / none, "
                "whole-epoch steps/s", res["ratios"][name]["wall"], "-", None)
    if "scaling" in results:
        cells = results["scaling"]["cells"]
        for d in sorted({c["devices"] for c in cells}):
            mine = sorted((c for c in cells if c["devices"] == d), key=lambda c: c["size"])
            if len(mine) > 1:
                r = mine[-1]["us_per_example"] / mine[0]["us_per_example"]
                rows.append((f"scaling ({d} process{'es' if d > 1 else ''}): time per example, {mine[-1]['size']:,} / "
                             f"{mine[0]['size']:,} examples", f"{r:.2f}", "-", "flat (about 1)", "-"))
    lines = ["| benchmark | median (min-max) over rounds | best rounds | target | met (median) |",
             "| --- | ---: | ---: | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the loop and command sections")
    parser.add_argument("--only", default=ALL_SECTIONS, help="comma-separated sections")
    parser.add_argument("--quick", action="store_true", help="one small round of everything (a smoke test)")
    parser.add_argument("--out", help="default: bench/results/latest.md (--quick: a temporary file)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(Path(tempfile.gettempdir()) / "expkit-bench-quick.md" if args.quick
                       else HERE / "results" / "latest.md")
    only = set(args.only.split(","))
    rounds = 1 if args.quick else args.rounds
    small = 1024 if args.quick else None
    started, load_start = time.perf_counter(), load()
    if not lightning_loop.available():
        print(f"{lightning_loop.MISSING}; the Lightning columns are skipped", flush=True)
    # Small steps, so per-step overhead shows: an MLP on 28x28 (about 6 ms a step on 2 cores),
    # and expkit's default model, the CNN, on digits-sized 8x8 inputs.
    mlp = Config(model="mlp", shape=(1, 28, 28), size=small or 8192, epochs=6)
    cnn = Config(model="cnn", shape=(1, 8, 8), size=small or 4096, epochs=6)
    results: dict = {}
    sections: list[tuple[str, list[str]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "loop" in only:
            for key, c in (("loop_mlp", mlp), ("loop_cnn", cnn)):
                print(f"1. loop overhead, {c.model} ({rounds} rounds)", flush=True)
                results[key] = bench_loop(c, rounds)
                sections.append((f"1. Loop overhead, in one process: {c.model}", loop_table(results[key])))
            loop_rounds = 2 if args.quick else 40
            for name in ("mlp", "cnn", "tiny-mlp"):
                c = replace(logging_cost.CONFIGS[name], size=small or logging_cost.CONFIGS[name].size)
                print(f"1. loop overhead, {c.label()}, interleaved epochs ({loop_rounds} rounds)", flush=True)
                key = f"loop_interleaved_{name}"
                results[key] = loop_interleaved.measure(c, loop_rounds)
                sections.append((f"1. Loop overhead, interleaved epochs: {c.label()}",
                                 loop_interleaved.table(results[key])))
            for c in (mlp, cnn):
                print(f"1. step profile, {c.model}", flush=True)
                key = f"profile_{c.model}"
                results[key] = step_profile.measure(replace(logging_cost.CONFIGS[c.model], size=c.size))
                sections.append((f"1. Step profile: {c.model}", step_profile.table(results[key])))
        if "switches" in only:
            switch_rounds = 2 if args.quick else 30
            print(f"1. loop switches, mlp ({switch_rounds} interleaved rounds)", flush=True)
            results["switches"] = loop_switches.measure(replace(logging_cost.CONFIGS["mlp"], size=mlp.size),
                                                        switch_rounds)
            sections.append(("1. Loop switches: accumulation, EMA, profiler, host syncs",
                             loop_switches.table(results["switches"])))
        if "command" in only:
            print(f"2. whole command ({rounds} rounds)", flush=True)
            results["command"] = bench_command(replace(mlp, size=2048, epochs=2), rounds, Path(tmp))
            sections.append(("2. Whole command from the shell", command_table(results["command"])))
        if "data" in only:
            print("3. data path", flush=True)
            data_out = Path(tmp) / "data_path.md" if args.quick else HERE / "results" / "data_path.md"
            results["data"] = bench_data(1 if args.quick else 5, data_out)
            sections.append(("3. Data path", data_table(results["data"])))
        if "logging" in only:
            log_rounds = 2 if args.quick else 40
            for key, c in (("logging_mlp", mlp), ("logging_cnn", cnn)):
                print(f"4. logging cost, {c.model} ({log_rounds} interleaved rounds)", flush=True)
                results[key] = logging_cost.measure(c, log_rounds)
                sections.append((f"4. Logging cost: {c.model}", logging_cost.table(results[key])))
        if "ddp" in only:
            ddp_rounds = 1 if args.quick else 3
            print(f"5. DDP, 2 gloo processes ({ddp_rounds} rounds)", flush=True)
            results["ddp"] = bench_ddp(replace(mlp, epochs=4), ddp_rounds, Path(tmp))
            sections.append(("5. DDP on CPU", ddp_table(results["ddp"])))
            ddp_rounds = 2 if args.quick else 40
            print(f"5. DDP, interleaved epochs ({ddp_rounds} rounds)", flush=True)
            results["ddp_interleaved"] = bench_ddp_interleaved(ddp_rounds, Path(tmp))
            sections.append(("5. DDP on CPU, interleaved epochs", ddp_interleaved.table(results["ddp_interleaved"])))
        if "checkpoint" in only:
            ckpt_rounds = 2 if args.quick else 16
            print(f"6. checkpoints, whole epochs ({ckpt_rounds} interleaved rounds)", flush=True)
            ckpt_config = replace(logging_cost.CONFIGS["mlp"], size=mlp.size)
            results["checkpoint"] = checkpoint_interleaved.measure(ckpt_config, ckpt_rounds)
            # Again on one thread: a core to spare for the writer, as when a GPU does the math.
            results["checkpoint_spare_core"] = bench_checkpoint_spare_core(ckpt_config, ckpt_rounds, Path(tmp))
            sections.append(("6. Checkpoints", checkpoint_interleaved.table(results["checkpoint"]) + [""]
                             + checkpoint_interleaved.table(results["checkpoint_spare_core"])))
        if "scaling" in only:
            sizes = [256, 1024] if args.quick else [1000, 10000, 100000]
            print(f"7. scaling: {sizes} examples on 1 and 2 processes", flush=True)
            results["scaling"] = scaling.measure(sizes, [1, 2])
            sections.append(("7. How cost grows with the work", scaling.table(results["scaling"])))

    lines = [
        "# expkit benchmarks: against a hand-written PyTorch loop and PyTorch Lightning",
        "",
        f"Machine: {machine()}. Load average (1, 5, 15 min) {load_start} at the start, {load()} at the end; "
        f"{time.perf_counter() - started:.0f} s in all. `make bench` (bench/run.py) wrote this; ratios are "
        "comparable across machines, absolute numbers are not.",
        "",
        "## Summary",
        "",
        *summary(results),
        "",
        "The loop target is judged on interleaved epochs (bench/loop_interleaved.py), and logging on section 4's "
        "(bench/logging_cost.py); the `expkit (logging, "
        f"checkpoints off)` rows of section 1 (`{' '.join(QUIET)}`) compare whole runs, whose spread hides a few "
        "percent.",
    ]
    for title, body in sections:
        lines += ["", f"## {title}", "", *body]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    if out == HERE / "results" / "latest.md" and only == set(ALL_SECTIONS.split(",")):
        readme = HERE / "README.md"
        intro = (f"`make bench` of {time.strftime('%Y-%m-%d %H:%M')}, {time.perf_counter() - started:.0f} s; "
                 f"machine: {machine()}; load average {load_start} at the start, {load()} at the end.")
        readme.write_text(with_latest(readme.read_text(), [intro, "", *summary(results)]))
        print(f"and its summary into {readme}")


LATEST_BEGIN, LATEST_END = "<!-- latest summary: written by make bench -->", "<!-- end of the latest summary -->"


def with_latest(readme: str, lines: list[str]) -> str:
    """bench/README.md with the block between the two markers replaced by `lines`."""
    head, found, rest = readme.partition(LATEST_BEGIN)
    _, found_end, tail = rest.partition(LATEST_END)
    if not (found and found_end):
        raise SystemExit(f"bench/README.md lacks the markers {LATEST_BEGIN!r} ... {LATEST_END!r}")
    return "\n".join([head + LATEST_BEGIN, *lines, LATEST_END]) + tail


if __name__ == "__main__":
    main()
