"""DDP with real processes: torch elastic's launcher and torchrun, gloo on CPU."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import EXPKIT, only_run, read_json, run_cli, run_dirs, scalars

from expkit.run.jobs import lr_per_step

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# No dropout and no batchnorm: then two processes with half the batch each compute
# exactly the gradient of one process with the whole batch (up to float summation order).
EXACT = ["model=mlp", "model.width=64", "reg=none", "data.sample=256", "trainer.epochs=2",
         "trainer.accelerator=cpu", "trainer.progress=off", "trainer.graph=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_groups(commands: list[list[str]], cwd: Path, envs: list[dict], timeout: float) -> list[tuple[int, str]]:
    """Run launchers side by side to the end: [(exit code, stderr)]. Each gets its own process
    group, killed whole on a timeout, so a hang leaves no workers to load the rest of the suite."""
    procs = [subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True) for cmd, env in zip(commands, envs, strict=True)]
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errors, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def model_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """Through `torchrun --nproc_per_node=2`; `trainer.devices=2` (expkit's own launch) is
    what the other tests here start."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    run_cli(["train", *EXACT, "data.batch_size=64"], cwd=one, check=True)
    [(code, err)] = run_groups([[TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "expkit", "train", *EXACT,
                                 "data.batch_size=32"]], two, [dict(os.environ)], timeout=300)
    assert code == 0, err[-3000:]
    single, ddp = only_run(one), only_run(two)  # exactly one run folder for the two processes
    meta = read_json(ddp / "meta.json")
    assert meta["status"] == "completed" and meta["world_size"] == 2
    a, b = model_state(single), model_state(ddp)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # Validation is reduced across ranks: it equals the single-process evaluation.
    m1, m2 = read_json(single / "metrics.json"), read_json(ddp / "metrics.json")
    assert m1["val/acc"] == m2["val/acc"] and m1["val/loss"] == pytest.approx(m2["val/loss"], rel=1e-4)
    assert m1["step"] == m2["step"] == 8
    assert [s for s, _ in scalars(ddp)["opt/lr"]] == [1, 4, 8]  # rank 0 alone writes events (log steps)
    # torchrun resumes it too: the group's size is torchrun's, not trainer.devices (1 in the config).
    [(code, err)] = run_groups([[TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "expkit", "resume", str(ddp),
                                 "trainer.epochs=3"]], two, [dict(os.environ)], timeout=300)
    assert code == 0, err[-3000:]
    meta = read_json(ddp / "meta.json")
    assert meta["status"] == "completed" and len(meta["resumes"]) == 1  # recorded once, by rank 0
    assert read_json(ddp / "metrics.json")["step"] == 12 and only_run(two) == ddp
    assert [s for s, _ in scalars(ddp)["opt/lr"]] == [1, 4, 8, 9, 10, 12]  # the resumed run's first step too



def test_torchrun_with_one_process_joins_a_group_of_one(tmp_path):
    """`torchrun --nproc_per_node=1`: expkit joins a process group of one (gloo here, NCCL on
    a GPU: tests/test_gpu.py) and trains through DDP, so one GPU can run the NCCL path."""
    [(code, err)] = run_groups([[TORCHRUN, "--standalone", "--nproc_per_node=1", "-m", "expkit", "train", *EXACT,
                                 "trainer.epochs=1"]], tmp_path, [dict(os.environ)], timeout=300)
    assert code == 0, err[-3000:]
    run = only_run(tmp_path)
    assert read_json(run / "meta.json")["status"] == "completed"
    assert "process group: backend gloo, rank 0 of 1" in (run / "train.log").read_text()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 1 and not any(k.startswith("module.") for k in state["model"])

def threads_used(run: Path) -> int:
    return int(re.search(r"threads (\d+)\b", (run / "train.log").read_text()).group(1))


def slow_node_env(tmp_path: Path, seconds: float) -> dict[str, str]:
    """The environment of a node whose workers start `seconds` late (a slower or busier
    machine): a sitecustomize that sleeps in torchrun's worker processes, not in its agent."""
    site = tmp_path / "slow_node"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import os, time\nif 'LOCAL_RANK' in os.environ:\n    time.sleep({seconds})\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_two_node_torchrun_launch_on_localhost(tmp_path):
    port = free_port()
    common = [TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
              f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=twonode", "-m", "expkit", "train", *EXACT,
              "trainer.epochs=1"]
    # OMP_NUM_THREADS set by the user (torchrun keeps it) wins over cores / processes.
    # The second node's worker composes its config 2 s after the first's, so the two read
    # different times for the run folder's name: they must still agree on one folder.
    envs = [dict(os.environ, OMP_NUM_THREADS="3"), dict(os.environ, OMP_NUM_THREADS="3",
                                                        **slow_node_env(tmp_path, 2.0))]
    results = run_groups([common, common], tmp_path, envs, timeout=150)
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    run = only_run(tmp_path)
    assert read_json(run / "meta.json")["world_size"] == 2
    assert read_json(run / "metrics.json")["step"] == 2  # 256 examples / (2 ranks x 64 per rank), one epoch
    assert read_json(run / "meta.json")["status"] == "completed"
    assert len(list((tmp_path / "runs").rglob(".hydra"))) == 1  # every rank composed; one folder holds it
    assert threads_used(run) == 3  # not cores / processes (2 here)


# One worker's part in agreeing on the run folder, as expkit's hydra.run.dir resolver runs it
# under torchrun: rank 0 claims argv[1]; "ready" says torch is imported and the claim is next.
AGREE = r"""
import sys
from expkit.training import dist
dist._torch_dist()
print("ready", flush=True)
print(dist.agree_on_run_dir("runs/2026-11-28/12-00-00", lambda path: sys.argv[1]), flush=True)
"""


def test_a_new_round_of_workers_does_not_take_the_last_rounds_folder():
    """torch elastic restarts the workers without counting a restart when a node joins:
    the same store keys come back, in a store (the agent's) that outlived the old round."""
    from datetime import timedelta

    port = free_port()
    agent_store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                                             timeout=timedelta(seconds=60))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
               TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RUN_ID="job", TORCHELASTIC_RESTART_COUNT="0")

    def worker(rank: int, folder: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", AGREE, folder], env=dict(env, RANK=str(rank)),
                                stdout=subprocess.PIPE, text=True)

    first_round = [worker(0, "runs/first"), worker(1, "-")]
    assert [p.communicate(timeout=120)[0].split() for p in first_round] == [["ready", "runs/first"]] * 2
    # The next round's rank 1 asks before its rank 0 has claimed: it must wait for that claim.
    late = worker(1, "-")
    assert late.stdout.readline().strip() == "ready"
    rank0 = worker(0, "runs/second")
    assert late.communicate(timeout=120)[0].strip() == "runs/second"
    assert rank0.communicate(timeout=120)[0].split() == ["ready", "runs/second"]
    del agent_store


def test_a_crashing_rank_brings_the_group_down(tmp_path):
    proc = run_cli(["train", *EXACT, "trainer.devices=2", "trainer.epochs=50"], cwd=tmp_path,
                   env={"EXPKIT_TEST_CRASH": "1:3"}, timeout=120)  # a hang would hit the timeout
    assert proc.returncode == 1
    assert "worker rank 1 failed" in proc.stderr and "injected crash on rank 1 at step 3" in proc.stderr
    run = only_run(tmp_path)
    meta = read_json(run / "meta.json")
    assert meta["status"] == "failed" and "rank 1" in meta["error"]
    log = (run / "train.log").read_text()
    assert "Traceback" in log and "[rank 1] ERROR" in log  # its traceback is in the log
    assert read_json(run / "metrics.json")["step"] < 10  # it did not run on


def test_the_failure_named_is_the_cause_not_a_peer_that_lost_it():
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from expkit.training.launch import describe_failure

    peer, cause = (ProcessFailure(local_rank=r, pid=r + 1, exitcode=1, error_file="/nonexistent") for r in (0, 1))
    peer.message = {"message": "RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer [::1]:1"}
    cause.message = {"message": "RunFailed: training failed: RuntimeError: injected crash"}
    peer.timestamp, cause.timestamp = 100, 101  # on a busy machine the peer's error can be written first
    assert describe_failure(ChildFailedError("x", {0: peer, 1: cause})) == (
        "worker rank 1 failed (exit code 1): training failed: RuntimeError: injected crash")


def test_resume_with_the_same_world_size_and_refuse_what_does_not_fit(tmp_path):
    proc = run_cli(["train", *EXACT, "data.batch_size=32", "trainer.devices=2", "trainer.epochs=1"],
                   cwd=tmp_path, check=True, unset=("OMP_NUM_THREADS",))
    assert "launching 2 worker processes" in proc.stdout
    run = only_run(tmp_path)  # exactly one run folder for the two processes
    # Without OMP_NUM_THREADS the cores are shared between the processes, not oversubscribed.
    assert threads_used(run) == max(1, len(os.sched_getaffinity(0)) // 2)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    before = {p: (run / p).read_text() for p in ("meta.json", "config.yaml")}
    proc = run_cli(["resume", str(run), "trainer.epochs=2", "trainer.devices=1"], cwd=tmp_path)
    assert proc.returncode == 2 and "trainer.devices" in proc.stderr and "2 process" in proc.stderr
    # Refused inside the worker group (the checkpoint does not fit): the record is left as it was.
    proc = run_cli(["resume", str(run), "trainer.epochs=2", "model.width=16", "--force"], cwd=tmp_path)
    assert proc.returncode == 2 and "model.width" in proc.stderr, proc.stderr[-2000:]
    assert {p: (run / p).read_text() for p in before} == before
    run_cli(["resume", str(run), "trainer.epochs=2"], cwd=tmp_path, check=True)
    assert read_json(run / "metrics.json")["step"] == 8 and read_json(run / "meta.json")["status"] == "completed"
    points = scalars(run)["opt/lr"]
    steps = [s for s, _ in points]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # one writer: no step twice
    assert None not in lr_per_step(points, 8)


def start_a_long_two_worker_run(cwd: Path) -> subprocess.Popen:
    """A 2-worker run of 200 epochs, started and trained up to its first checkpoint."""
    args = ["train", *EXACT, "data.batch_size=8", "trainer.devices=2", "trainer.epochs=200", "trainer.log_every=1"]
    proc = subprocess.Popen([EXPKIT, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((cwd / "runs").rglob("step-*.pt")):
        time.sleep(0.5)
    return proc


def test_sigterm_stops_all_workers_with_a_checkpoint(tmp_path):
    proc = start_a_long_two_worker_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    run = only_run(tmp_path)
    meta = read_json(run / "meta.json")
    assert meta["status"] == "interrupted"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < state["step"] < 200 * 16 and len(state["rng_ranks"]) == 2


def workers_of(run: Path) -> list[int]:
    """The pids of the processes training in `run` as DDP workers."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"_worker" in cmdline and str(run).encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_launcher_killed_outright_leaves_no_worker_training(tmp_path):
    proc = start_a_long_two_worker_run(tmp_path)
    run = only_run(tmp_path)
    assert len(workers_of(run)) == 2
    proc.kill()  # SIGKILL: the launcher passes nothing on
    deadline = time.time() + 120  # they stop at the next step, after agreeing on it: slow on a busy machine
    while time.time() < deadline and workers_of(run):
        time.sleep(0.5)
    left = workers_of(run)
    for pid in left:  # a regression must not leave them loading the machine
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert not left, "workers went on training after their launcher was killed:\n" + err[-3000:]
    meta = read_json(run / "meta.json")
    assert meta["status"] == "interrupted" and meta["signal"] == "SIGTERM", (meta, err[-3000:])
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < state["step"] < 200 * 16


def test_multirun_with_two_devices_per_job(tmp_path):
    proc = run_cli(["train", "-m", *EXACT, "trainer.epochs=1", "trainer.devices=2", "optim.lr=0.001,0.002"],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert len(runs) == 2 and all("multirun" in str(r) for r in runs)
    assert {read_json(r / "meta.json")["status"] for r in runs} == {"completed"}
    overrides = [read_json(r / "meta.json")["overrides"] for r in runs]
    lrs = sorted(float(o.split("=")[1]) for job in overrides for o in job if o.startswith("optim.lr"))
    assert lrs == [0.001, 0.002]


def test_default_threads_follow_omp_num_threads_then_the_cpu_affinity(monkeypatch):
    from expkit.training import dist

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert dist.default_threads(2) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert dist.default_threads(2) == max(1, len(os.sched_getaffinity(0)) // 2)
    # A process pinned to one core (as SLURM's --cpus-per-task=1 or taskset would) gets one thread.
    script = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
              "from expkit.training import dist; print(dist.default_threads(1))")
    unset_omp = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    pinned = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=unset_omp)
    assert pinned.stdout.strip() == "1"
