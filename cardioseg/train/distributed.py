"""Process-wide settings of a training command: torch's thread count and, under ``torchrun``,
the default process group. The command calls these; the engine only reads them."""

from __future__ import annotations

import os

__all__ = ["default_device", "init_process_group", "process_group", "set_threads"]


def init_process_group() -> tuple[int, int]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), initialise the default process group (nccl with
    a GPU, gloo without) unless it is; returns (rank, world size), (0, 1) outside torchrun."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def set_threads(threads: int) -> None:
    """torch's intra-op CPU threads; 0 leaves torch's default."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def default_device() -> str:
    """This process's GPU (``LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
