"""`make gpu-check`: one command that checks expkit on a real NVIDIA GPU.

    .venv/bin/python bench/gpu_check.py [--results-dir bench/results] [--quick]

1. tests: the tests marked gpu (tests/test_gpu.py), four pytest workers on a GPU;
2. bench: bench/gpu_bench.py, side by side in one process: expkit / plain loop steps/s
   (target >= 0.98), bf16 / fp32, channels_last on / off, compile / eager, and the airbench
   anchor (expkit's fast path per epoch on CIFAR-10's shapes); then bench/loop_switches.py:
   trainer.ema (target >= 0.97), trainer.accumulate=4 at a quarter of the batch, the loop
   after trainer.profile's trace (>= 0.99), each against expkit's defaults, and the host
   syncs per step counted (1 on a log step, 0 between: checked on a CPU too);
3. report: bench/results/gpu.md with the device, torch, CUDA and cuDNN versions, the date,
   the commit, and each check PASS / FAIL / SKIPPED with its figure. A bench row without a
   target passes when it ran and was measured.

Exit status 1 if any check fails, else 0. Budget on one GPU: under 8 minutes (the tests
stop at 330 s; the bench takes one to two minutes, most of it compiling).

Without a GPU (torch.cuda.is_available() is false, e.g. CUDA_VISIBLE_DEVICES="") it says
so and runs what a CPU can: the gpu tests collected and skipped, the bench on the CPU at
small sizes without compile. Those figures say nothing about a GPU, so the report goes to
bench/results/gpu_cpu_dryrun.md and gpu.md is left as it is. Exit 0 unless one of those
parts fails.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

TESTS_TIMEOUT_S = 330
GPU_WORKERS = 4


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, SKIPPED
    figure: str


# ---------------------------------------------------------------------- tests
def pytest_command(xml: Path, workers: int) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    if workers > 1:
        import importlib.util

        if importlib.util.find_spec("xdist") is not None:
            cmd += ["-n", str(workers)]
    return cmd


def run_tests(workers: int, timeout: float) -> list[Check]:
    """The gpu tests in a pytest process; one Check per test, from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        cmd = pytest_command(xml, workers)
        print("$", " ".join(cmd[1:]), flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            print(output[-4000:])
            return [Check("tests/test_gpu.py", "FAIL", f"timed out after {timeout:.0f} s")]
        print(output[-6000:], flush=True)
        checks = parse_junit(xml) if xml.exists() else []
        elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 5) and not any(c.status == "FAIL" for c in checks):
        last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
        checks.append(Check("pytest -m gpu", "FAIL", f"exit {proc.returncode}: {last[0][:200]}"))
    if not checks:
        checks.append(Check("pytest -m gpu", "FAIL", "no gpu tests were collected"))
    print(f"tests: {elapsed:.0f} s", flush=True)
    return checks


def parse_junit(xml: Path) -> list[Check]:
    checks = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
        seconds = float(case.get("time") or 0)
        failed = case.find("failure")
        if failed is None:
            failed = case.find("error")
        skipped = case.find("skipped")
        if failed is not None:
            message = (failed.get("message") or failed.text or "").strip().splitlines()
            checks.append(Check(name, "FAIL", f"{seconds:.1f} s: {(message or ['failed'])[0][:300]}"))
        elif skipped is not None:
            checks.append(Check(name, "SKIPPED", (skipped.get("message") or "skipped").strip()[:300]))
        else:
            checks.append(Check(name, "PASS", f"{seconds:.1f} s"))
    return checks


# ---------------------------------------------------------------------- bench
def run_bench(cuda: bool, quick: bool) -> tuple[list[Check], list[str]]:
    """The bench's checks and the lines of its section in the report."""
    import gpu_bench
    import torch

    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        size, batch, rounds, compile, model = 16384, 512, 12, True, ()
        anchor_args = (gpu_bench.AIRBENCH["examples"], gpu_bench.AIRBENCH["batch_size"], 3)
    else:  # the dry run: a small resnet on a few examples, no compile (minutes on a CPU)
        model = ("model.width=4", "model.stages=2", "model.blocks=1")
        size, batch, rounds, compile = (128, 64, 1, False) if quick else (512, 128, 2, False)
        anchor_args = (256, 128, 1)
    checks: list[Check] = []
    lines: list[str] = []
    started = time.perf_counter()
    try:
        res = gpu_bench.measure(size, batch, rounds, compile, device, model)
        lines += gpu_bench.table(res)
        for row in gpu_bench.ratio_rows(res):
            if row["median"] is None:
                checks.append(Check(row["name"], "SKIPPED", row["skipped"] + ("" if cuda else "; GPU only")))
                continue
            figure = f"{row['median']:.3f} (rounds {row['low']:.3f}-{row['high']:.3f})"
            if row["target"] is None:
                status = "PASS"
            elif not cuda:
                status, figure = "SKIPPED", f"{figure}; target >= {row['target']} is judged on a GPU only"
            else:
                status = "PASS" if row["median"] >= row["target"] else "FAIL"
                figure += f"; target >= {row['target']}"
            checks.append(Check(row["name"], status, figure))
    except Exception as e:  # a crash is a failed check with its reason, and the report is still written
        traceback.print_exc()
        checks.append(Check("bench: side-by-side ratios", "FAIL", f"{type(e).__name__}: {str(e)[:300]}"))
    try:
        a = gpu_bench.anchor(*anchor_args, compile, device, model)
        text = gpu_bench.describe_anchor(a)
        lines += ["", "Anchor: " + text]
        checks.append(Check("anchor: expkit fast path s/epoch, CIFAR-10 shapes", "PASS",
                            f"{a['epoch_s']:.3f} s/epoch, {gpu_bench.AIRBENCH['epochs']} epochs ~ "
                            f"{a['ten_epochs_s']:.2f} s (airbench: {gpu_bench.AIRBENCH['seconds']} s on an A100)"
                            + ("" if cuda else "; CPU dry run at 256 examples")))
    except Exception as e:
        traceback.print_exc()
        checks.append(Check("anchor: expkit fast path s/epoch, CIFAR-10 shapes", "FAIL",
                            f"{type(e).__name__}: {str(e)[:300]}"))
    switch_checks, switch_lines = run_loop_switches(cuda, quick)
    print(f"bench: {time.perf_counter() - started:.0f} s", flush=True)
    return checks + switch_checks, lines + ["", *switch_lines]


# Targets of the loop switches' rows (steps/s against expkit's defaults), judged on a GPU.
SWITCH_TARGETS = {"ema": 0.97, "accumulate 4": None, "profile done": 0.99}


def run_loop_switches(cuda: bool, quick: bool) -> tuple[list[Check], list[str]]:
    """bench/loop_switches.py on this device: the switches' speed and the host syncs."""
    from dataclasses import replace

    import loop_switches
    from logging_cost import CONFIGS

    size, rounds = (32768, 12) if cuda else ((1024, 1) if quick else (2048, 3))
    try:
        res = loop_switches.measure(replace(CONFIGS["mlp"], size=size), rounds)
    except Exception as e:
        traceback.print_exc()
        return [Check("loop switches: EMA, accumulation, profile, syncs", "FAIL",
                      f"{type(e).__name__}: {str(e)[:300]}")], []
    checks = []
    for name, target in SWITCH_TARGETS.items():
        wall = res["ratios"][name]["wall"]
        median = sorted(wall)[len(wall) // 2]
        figure = f"{median:.3f} x defaults, steps/s (rounds {min(wall):.3f}-{max(wall):.3f})"
        if target is None:
            status = "PASS"
        elif not cuda:
            status, figure = "SKIPPED", f"{figure}; target >= {target} is judged on a GPU only"
        else:
            status, figure = ("PASS" if median >= target else "FAIL"), f"{figure}; target >= {target}"
        checks.append(Check(f"loop switches: {name}", status, figure))
    sy = res["syncs"]
    ok = sy["per_log_step"] == 1 and sy["between_log_steps"] == 0
    checks.append(Check("loop: host syncs per step (1 on a log step, 0 between)", "PASS" if ok else "FAIL",
                        f"{sy['per_log_step']:g} per log step; {sy['between_log_steps']} on the "
                        f"{sy['other_steps']} steps between"))
    return checks, loop_switches.table(res)


# --------------------------------------------------------------------- report
def describe_machine(cuda: bool) -> list[str]:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)
    rev = (commit.stdout.strip() or "unknown") + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True) if _which("nvidia-smi") else None
        driver = smi.stdout.strip().splitlines()[0] if smi and smi.returncode == 0 and smi.stdout.strip() else "?"
    else:
        gpu, driver = "none (torch.cuda.is_available() is false)", "-"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {rev}",
        f"- GPU: {gpu}; driver {driver}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda or '-'}, cuDNN {cudnn or '-'}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, {os.cpu_count()} cores",
    ]


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def report(cuda: bool, machine: list[str], checks: list[Check], bench_lines: list[str], seconds: float) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIPPED")}
    title = "# expkit on a GPU: `make gpu-check`" if cuda else "# `make gpu-check` dry run on a CPU (no GPU)"
    intro = ("`bench/gpu_check.py` wrote this: the tests marked gpu, then the GPU bench."
             if cuda else
             "No GPU here: the gpu tests were collected and skipped, and the bench ran on the CPU at small sizes "
             "without compile, to show the script works. **These figures say nothing about a GPU.**")
    lines = [title, "", intro, "", *machine,
             f"- {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIPPED']} skipped; {seconds:.0f} s in all",
             "", "| check | status | figure |", "| --- | --- | --- |"]
    lines += [f"| {c.name} | {c.status} | {c.figure.replace('|', '/')} |" for c in checks]
    if bench_lines:
        lines += ["", "## Bench (bench/gpu_bench.py)", "", *bench_lines]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="the smallest CPU dry run (its test uses this)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    out = args.results_dir / ("gpu.md" if cuda else "gpu_cpu_dryrun.md")
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    else:
        print("no GPU: torch.cuda.is_available() is false here. Running the CPU-runnable parts (the gpu tests "
              "collected and skipped; the bench on the CPU at small sizes, no compile); the report goes to "
              f"{out}, and gpu.md is left as it is.", flush=True)
    checks: list[Check] = []
    if not args.skip_tests:
        checks += run_tests(GPU_WORKERS if cuda else 1, TESTS_TIMEOUT_S)
    bench_lines: list[str] = []
    if not args.skip_bench:
        bench_checks, bench_lines = run_bench(cuda, args.quick)
        checks += bench_checks
    text = report(cuda, describe_machine(cuda), checks, bench_lines, time.perf_counter() - started)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(text)
    print(f"written to {out}")
    failed = [c.name for c in checks if c.status == "FAIL"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
