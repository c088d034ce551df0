"""`trainer.devices=N` from one command: torch's own elastic launcher starts N worker
processes (`python -m expkit _worker RUN_DIR`) on this machine with a fresh rendezvous
port, so every job of a multirun gets its own group. The run folder already exists
(this process made it); the workers train in it and rank 0 records the outcome.

If one worker dies, the agent stops the others at once and we exit non-zero with the
failing rank's error; a SIGTERM/SIGINT to this process is passed on to the workers,
which checkpoint and stop together.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

log = logging.getLogger("expkit")


def inside_worker_group() -> bool:
    """True under torchrun (or our own launch): the process group is given to us."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_workers(run_dir: Path, nproc: int, checkpoint: Path | None = None) -> None:
    """Run the workers to completion; they resume from `checkpoint` when given (the one
    `expkit resume` chose and reported). Raises ChildFailedError or SignalException."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"expkit-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
        monitor_interval=0.1,  # notice a dead worker within a fraction of a second
        logs_specs=DefaultLogsSpecs(redirects=Std.NONE, tee=Std.NONE),
    )
    # SLURM's warning signal too: the agent passes it on to the workers, which checkpoint and stop.
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    args = ["-m", "expkit", "_worker", str(run_dir)] + (["--resume", str(checkpoint.absolute())] if checkpoint else [])
    log.info("launching %d worker processes (torch elastic, %s)", nproc, config.run_id)
    elastic_launch(config, sys.executable)(*args)


def stop_with_the_launcher() -> None:
    """Linux: have the kernel send this worker SIGTERM when the launcher that started it ends
    (the thread that started it, strictly; torch elastic's agent waits in that thread).
    A launcher killed outright (SIGKILL, the OOM killer) cannot pass a signal on, and its
    workers would go on training a run whose folder nobody holds any more; with this they
    stop as on any SIGTERM: at an agreed step, with a checkpoint."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


# What a worker's error says when another rank ended first: the gloo connection to it went.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def describe_failure(error: Exception) -> str:
    """One paragraph from torch elastic's ChildFailedError: which rank, how, and why."""
    failures = getattr(error, "failures", None)
    if not failures:
        return f"{type(error).__name__}: {error}"
    # The cause is the earliest failure that is not a peer losing its connection to it or a
    # worker the agent stopped (on a busy machine those can be recorded first).
    causes = sorted((f.timestamp, rank, f) for rank, f in failures.items()
                    if f.exitcode > 0 and not any(p in str(f.message) for p in PEER_LOST))
    rank, failure = (causes[0][1], causes[0][2]) if causes else error.get_first_failure()
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", message)
    text = str(message).strip().splitlines()
    reason = text[-1] if text else f"exit code {failure.exitcode}"
    reason = reason.removeprefix("RunFailed: ")
    return f"worker rank {rank} failed (exit code {failure.exitcode}): {reason}"
