"""Small helpers so single-device and ``torchrun`` data-parallel code read the same."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` if available else ``"cpu"``; a CUDA device without CUDA is a clear error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but CUDA is not available; use device=cpu")
    return device


def init_distributed(device: str = "auto") -> torch.device:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and pick this rank's device.

    device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``; under torchrun each rank takes
    ``cuda:LOCAL_RANK``. NCCL on GPUs, gloo on CPUs.
    """
    device = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return torch.device(device)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce and average the gradients of ``params`` across ranks (one flat float bucket)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank, so data-parallel replicas start identical."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging)."""
    if world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly (a barrier first: gloo can abort at exit when a peer is still talking)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
