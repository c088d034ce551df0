"""Distributed helpers. Under torchrun (or expkit's own launch) RANK, LOCAL_RANK and
WORLD_SIZE are set; without them everything here is a single-process no-op."""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def setup(device: torch.device) -> None:
    if world_size() > 1 and not initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        torch.distributed.init_process_group(backend, **kwargs)


def teardown() -> None:
    if initialized():
        torch.distributed.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def broadcast_object(obj):
    if not initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if initialized():
        torch.distributed.barrier()
