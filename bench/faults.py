"""Fault injection for the run record: the figures of the reliability section.

    python bench/faults.py [--trials 20] [--out bench/results/faults.md]

1. Bad input: 100 malformed invocations across every command, each run through expkit's
   real CLI entry (expkit.cli.main, in this process) in a folder that holds a finished
   run and a finished sweep. Counted: tracebacks, exit statuses other than 2, files
   changed, files or folders left behind.
2. One writer per folder: `--trials` times, two `expkit resume` processes and one
   `expkit train hydra.run.dir=<the same run>` start at once on one stopped run. Counted:
   trials where more than one writer got in (two resume entries in meta.json, or two
   "resumed from" lines in train.log for one trial), and trials where none did.

The signal figures come from tests/test_signals.py (every phase, real signals).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.sample=128", "trainer.progress=off", "trainer.graph=false", "model=mlp", "model.width=32"]


def expkit(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "expkit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, **kw)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, with a hash of each file's bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def bad_inputs(run: Path, sweep: Path) -> list[list[str]]:
    r, s = str(run), str(sweep)
    cases = [
        ["bogus"], ["train", "sched=bogus"], ["train", "model=cnnn"], ["train", "optim=adam", "optim.momentum=0.9"],
        ["train", "model.depth=3"], ["train", "x=[1,"], ["train", "foo=1"], ["train", "trainer.foo=1"],
        ["train", "optim.lr=abc"], ["train", "optim.lr=-1"], ["train", "trainer.epochs=0"],
        ["train", "trainer.epochs=abc"], ["train", "optim.lr=0.1,0.2"], ["train", "data.val_fraction=1.5"],
        ["train", "data.batch_size=0"], ["train", "data.sample=0"], ["train", "reg.dropout=1"],
        ["train", "reg.dropout=-0.1"], ["train", "reg.grad_clip=0"], ["train", "reg.label_smoothing=2"],
        ["train", "sched=step", "sched.gamma=0"], ["train", "sched=step", "sched.step_size=0"],
        ["train", "sched=multistep", "sched.milestones=[3,3]"], ["train", "sched=plateau", "sched.factor=1"],
        ["train", "sched=onecycle", "sched.pct_start=0"], ["train", "sched=cosine", "sched.warmup_epochs=20"],
        ["train", "sched.warmup_epochs=-1"], ["train", "model.activation=swish"],
        ["train", "model=mlp", "model.depth=0"], ["train", "model=mlp", "model.width=0"],
        ["train", "model.channels=[]"], ["train", "model=resnet", "model.blocks=0"],
        ["train", "optim=sgd", "optim.nesterov=true", "optim.momentum=0"], ["train", "optim=sgd", "optim.momentum=1"],
        ["train", "optim.betas=[0.9]"], ["train", "optim.eps=0"], ["train", "optim.weight_decay=-1"],
        ["train", "init=bogus"], ["train", "init.mode=sideways"], ["train", "trainer.precision=8"],
        ["train", "trainer.accelerator=tpu"], ["train", "trainer.devices=0"], ["train", "trainer.keep_last=0"],
        ["train", "trainer.log_every=0"], ["train", "trainer.eval_every=0"], ["train", "trainer.max_steps=0"],
        ["train", "trainer.num_threads=0"], ["train", "trainer.progress=maybe"], ["train", "seed=abc"],
        ["train", "name=a b/c"], ["train", "name=../../x"], ["train", "name=" + "n" * 250], ["train", "name=.hidden"],
        ["train", "sweep.metric=nosuch"], ["train", "data.loader=fast"], ["train", "data=folder"],
        ["train", "data=folder", "data.root=/nonexistent"], ["train", "data=synthetic", "data.num_classes=1"],
        ["train", "data=synthetic", "data.shape=[1,2]"], ["train", f"hydra.run.dir={r}"],
        ["train", "hydra.run.dir=/proc/expkit"], ["train", "hydra.run.dir=/etc/hostname"],
        ["train", "hydra.run.dir=/etc/hostname/x"], ["train", "+debug=nosuch"], ["train", "experiment=nosuch"],
        ["train", "-m", "model=cnn,nosuch"], ["train", "-m", "optim=sgd,adam", "optim.momentum=0.5"],
        ["train", "'"], ["train", "=1"], ["train", "a..b=1"],
        ["resume"], ["resume", "nowhere"], ["resume", r, "--bogus"], ["resume", r, "trainer.epochs=abc"],
        ["resume", r, "trainer.epochs=1"], ["resume", r, "model=mlp"], ["resume", r, "optim.lr=0.5"],
        ["resume", r, "nosuch.key=1"], ["resume", r, "trainer.devices=3"], ["resume", s], ["resume", "/etc/hostname"],
        ["sched", "--out"], ["sched", "sched=bogus"], ["sched", "sched=step", "sched.gamma=-1"],
        ["sched", "optim.lr=x"], ["summary", "nowhere"], ["summary", "--metric"], ["summary", s, "--metric", "nosuch"],
        ["summary", "a", "b"], ["summary", r], ["report"], ["report", "nowhere"], ["report", s, "--lesson", "nosuch"],
        ["report", ".", "--lesson"], ["list", "extra"], ["eval", "nowhere"], ["eval", r, "--split", "nosuch"],
        ["predict", r], ["predict", r, "/nonexistent.png"], ["export", r, "--format", "onnx"], ["runs", "--sort"],
        ["compare", r], ["reproduce", "nowhere"],
    ]
    return cases


def run_bad_inputs(work: Path) -> dict:
    from expkit.cli import COMMANDS, main

    run = next(p.parent for p in (work / "runs").glob("*/*/meta.json"))
    sweep = next((work / "runs" / "multirun").glob("*/*"))
    cases = [c for c in bad_inputs(run, sweep) if c[0] in COMMANDS or c[0] == "bogus"]
    os.chdir(work)
    tally = {"cases": len(cases), "tracebacks": 0, "exit_not_2": 0, "changed": 0, "left_behind": 0, "details": []}
    for args in cases:
        before = snapshot(work)
        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                code = main(list(args))
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # a traceback the user would see
            code = f"raised {type(e).__name__}: {e}"
        after = snapshot(work)
        text = err.getvalue() + out.getvalue()
        problems = []
        if "Traceback" in text or isinstance(code, str):
            tally["tracebacks"] += 1
            problems.append("traceback")
        if code != 2:
            tally["exit_not_2"] += 1
            problems.append(f"exit {code}")
        if any(before.get(k) != v for k, v in after.items() if k in before):
            tally["changed"] += 1
            problems.append("changed a file")
        if set(after) - set(before):
            tally["left_behind"] += 1
            problems.append(f"left {sorted(set(after) - set(before))[:3]}")
        if problems:
            tally["details"].append(f"`expkit {' '.join(args)[:80]}`: {', '.join(problems)}")
    return tally


def run_writers(work: Path, trials: int) -> dict:
    base = work / "writers"
    base.mkdir()
    stopped = expkit(["train", *SMALL, "trainer.epochs=2", "trainer.max_steps=3", "hydra.run.dir=runs/base"], base)
    assert stopped.returncode == 0, stopped.stderr
    tally = {"trials": trials, "more_than_one": 0, "none": 0, "tracebacks": 0, "seconds": 0.0}
    started = time.perf_counter()
    for trial in range(trials):
        run = base / f"runs/t{trial}"
        subprocess.run(["cp", "-a", str(base / "runs/base"), str(run)], check=True)
        meta = json.loads((run / "meta.json").read_text())
        meta["status"] = "interrupted"  # a stopped run, as after a signal
        (run / "meta.json").write_text(json.dumps(meta))
        cmds = [["resume", str(run), "trainer.epochs=2", "trainer.max_steps=6"]] * 2 + [
            ["train", *SMALL, f"hydra.run.dir={run}"]]
        procs = [subprocess.Popen([sys.executable, "-m", "expkit", *c], cwd=base, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in cmds]
        results = [(p.wait(timeout=600), p.communicate()) for p in procs]
        entries = len(json.loads((run / "meta.json").read_text()).get("resumes", []))
        lines = (run / "train.log").read_text().count("resumed from")
        writers = sum(code == 0 for code, _ in results)
        tally["tracebacks"] += sum("Traceback" in err for _, (_, err) in results)
        if writers > 1 or entries > 1 or lines > 1:
            tally["more_than_one"] += 1
        if writers == 0:
            tally["none"] += 1
    tally["seconds"] = time.perf_counter() - started
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for cmd in (["train", *SMALL, "trainer.epochs=1"], ["train", "-m", *SMALL, "trainer.epochs=1",
                                                             "optim.lr=0.001,0.002"]):
            done = expkit(cmd, work)
            assert done.returncode == 0, done.stderr
        bad = run_bad_inputs(work)
        os.chdir(ROOT)
        writers = run_writers(work, args.trials)
    lines = [
        "# Fault injection: the run record", "",
        f"`python bench/faults.py --trials {args.trials}`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} cores.", "",
        "| fault | trials | result |", "| --- | --- | --- |",
        f"| bad input across every command | {bad['cases']} | {bad['tracebacks']} tracebacks, {bad['exit_not_2']} "
        f"exits other than 2, {bad['changed']} changed records, {bad['left_behind']} leftovers |",
        f"| two resumes and a train into one stopped run, at once | {writers['trials']} | "
        f"{writers['more_than_one']} trials with more than one writer, {writers['none']} with none, "
        f"{writers['tracebacks']} tracebacks ({writers['seconds']:.0f} s) |",
        "", "Signals in every phase: tests/test_signals.py.", "",
    ]
    if bad["details"]:
        lines += ["Cases that did not end as bad input should:", "", *[f"- {d}" for d in bad["details"]], ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if not (bad["tracebacks"] or bad["changed"] or bad["left_behind"] or writers["more_than_one"]) else 1


if __name__ == "__main__":
    sys.exit(main())
