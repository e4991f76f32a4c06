"""torch.distributed glue for `torchrun --nproc_per_node=N train.py ...` (NCCL on GPU, gloo on CPU).

Nothing home-made: DistributedDataParallel does the gradient averaging; this module only starts and stops
the process group and gathers evaluation outputs so that every rank sees the same metrics.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    """This process's rank on its own machine (torchrun's LOCAL_RANK; 0 when not launched so)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if world_size() > 1 else 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> None:
    """Join the process group that torchrun described in the environment (no-op when not launched so)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def gather_objects(obj):
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def local_device(requested: str) -> torch.device:
    """'auto' -> this rank's GPU if there is one, else the CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .errors import UserError
        raise UserError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device
