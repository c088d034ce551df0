"""Distributed helpers. Under torchrun (or expkit's own launch) RANK, LOCAL_RANK and
WORLD_SIZE are set; without them everything here is a single-process no-op."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: `rank()` and friends are called before
# the config is validated, and a bad value should be refused without paying for torch's import.


_torch_distributed = None


def _torch_dist():
    global _torch_distributed
    if _torch_distributed is None:  # should_stop() asks every training step
        import torch.distributed

        _torch_distributed = torch.distributed
    return _torch_distributed


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, which SLURM (`--cpus-per-task`),
    taskset and containers restrict, rather than every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(processes: int) -> int:
    """torch CPU threads per process when `trainer.num_threads` is null: OMP_NUM_THREADS when
    it is set (the convention torch itself follows; torchrun sets it to 1 for several processes
    per node), else the usable cores shared among this node's `processes`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return max(1, usable_cores() // max(1, processes))


def initialized() -> bool:
    return _torch_dist().is_available() and _torch_dist().is_initialized()


_store = None  # the TCPStore rank 0 made to agree on the run folder, reused for the group
_claims = 0  # folders agreed on so far in this process: the n-th claim of each rank pairs up


def launched() -> bool:
    """Under torchrun or expkit's own launch (torch elastic sets TORCHELASTIC_RUN_ID), or
    given a group by hand (WORLD_SIZE > 1)."""
    return world_size() > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def setup(device: torch.device) -> None:
    """Join the process group: NCCL on a GPU, gloo on a CPU. Under torchrun this happens
    with one process too (`--nproc_per_node=1`): the user asked for a distributed launch,
    and it is the only way one GPU runs the NCCL path."""
    if launched() and not initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        if _store is not None:
            kwargs.update(store=_store, rank=rank(), world_size=world_size())
        _torch_dist().init_process_group(backend, **kwargs)
        logging.getLogger("expkit").info("process group: backend %s, rank %d of %d", backend, rank(), world_size())


def agree_on_run_dir(path: str, claim) -> str:
    """Under torchrun every rank composes the config and resolves hydra.run.dir; rank 0
    claims the folder and the others read its name from the group's key-value store,
    so a run has exactly one folder whatever the launch path.

    The key must not contain `path`: it holds the time (`${now:...}`) each rank read from
    its own clock, and ranks that compose a second apart (a loaded machine, clock skew
    between nodes) would wait on different keys until the store timed out. Every rank runs
    the same code, so the n-th claim of rank 0 is the n-th claim of the others.

    The last rank to read the name deletes it: torch elastic restarts the workers without
    counting a restart when a node joins, and the new round must not read the old round's
    folder from the store, which outlives the workers."""
    from datetime import timedelta

    global _store, _claims
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    # torchrun's agent hosts a store at MASTER_PORT; a bare launch needs rank 0 to host it.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = _torch_dist().TCPStore(host, port, world_size(), is_master=rank() == 0 and not agent_store,
                                   timeout=timedelta(seconds=300), wait_for_workers=False)
    if not agent_store:
        _store = store
    key = "expkit/run_dir/{}/{}/{}".format(os.environ.get("TORCHELASTIC_RUN_ID", ""),
                                           os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), _claims)
    _claims += 1
    if rank() == 0:
        chosen = claim(path)
        store.set(key, chosen)
        return chosen
    store.wait([key])
    chosen = store.get(key).decode()
    if store.add(f"{key}/read", 1) == world_size() - 1:
        store.delete_key(key)
        store.delete_key(f"{key}/read")
    return chosen


def all_reduce_max_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if any rank says True."""
    if not initialized():
        return flag
    import torch

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    _torch_dist().all_reduce(t, op=_torch_dist().ReduceOp.MAX)
    return bool(t.item())


def all_gather_object(obj) -> list:
    if not initialized():
        return [obj]
    out = [None] * world_size()
    _torch_dist().all_gather_object(out, obj)
    return out


def teardown() -> None:
    """After a completed run: every rank waits for the others, then leaves the group. A
    rank that destroys its group while a peer still talks to it aborts (gloo), so a run
    that failed or stopped leaves the group to the end of the process instead."""
    if initialized():
        _torch_dist().barrier()
        _torch_dist().destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if initialized():
        _torch_dist().all_reduce(tensor)
    return tensor


def barrier() -> None:
    if initialized():
        _torch_dist().barrier()
