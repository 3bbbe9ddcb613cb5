"""Small helpers so single-device and data-parallel code read the same .

Processes are launched by ``torchrun`` (which sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
``MASTER_PORT``), or by SLURM: through submitit (hydra-submitit-launcher, one task per GPU) or a plain ``srun``.
:func:`init_distributed` reads whichever is present and joins one process group; the trainer then wraps each
phase's networks in PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel` (:func:`data_parallel`).
"""

from __future__ import annotations

import gc
import os
import random
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dae_gen.errors import ConfigError, DaeGenError

T = TypeVar("T")


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
        raise ConfigError(f"device: {device!r} was asked for but CUDA is not available here; use device=cpu "
                          "(or device=auto)")
    return device


# -- who launched us ----------------------------------------------------------------------------------
def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[07-09,12],cpu1"`` → ``"gpu07"`` (zero padding kept)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def _port_for(job_id: str) -> int:
    """A rendezvous port every task of one job derives alike (submitit's rule: 20000–60000 seeded by the job id)."""
    return random.Random(job_id).randint(20000, 60000)


def launch_environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` of this process, or None when it
    was not launched as one of several.

    In order: torchrun's own variables; a submitit job (its ``JobEnvironment``: hydra-submitit-launcher, local or
    SLURM); a plain ``srun`` step (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, the first host of the
    node list). ``MASTER_ADDR``/``MASTER_PORT`` already in the environment win.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:  # torchrun, or a user who exported them
        found = {"RANK": env["RANK"], "WORLD_SIZE": env["WORLD_SIZE"], "LOCAL_RANK": env.get("LOCAL_RANK", "0")}
        master = {}
    elif env.get("SUBMITIT_EXECUTOR"):
        import submitit  # present: it launched us

        job = submitit.JobEnvironment()
        found = {"RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks), "LOCAL_RANK": str(job.local_rank)}
        master = {"MASTER_ADDR": job.hostnames[0], "MASTER_PORT": str(_port_for(job.job_id))}
    elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:  # inside srun, not sbatch
        found = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                 "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
        master = {"MASTER_ADDR": first_host(nodes), "MASTER_PORT": str(_port_for(env.get("SLURM_JOB_ID", "0")))}
    else:
        return None
    if int(found["WORLD_SIZE"]) <= 1:
        return None
    found.update({key: env.get(key, value) for key, value in master.items()})
    return found


def init_distributed(device: str = "auto") -> torch.device:
    """Join the process group when launched as several processes, and pick this rank's device.

    device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``; with several processes each takes
    ``cuda:LOCAL_RANK``. NCCL on GPUs, gloo on CPUs. The launcher is found by :func:`launch_environment`.
    """
    device = resolve_device(device)
    launch = launch_environment()
    if launch is not None and not is_distributed():
        os.environ.update(launch)  # the env:// rendezvous reads them
        if device.startswith("cuda"):
            local_rank = int(launch["LOCAL_RANK"])
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return torch.device(device)


# -- data parallelism -----------------------------------------------------------------------------------
class _PhaseLoss(nn.Module):
    """One phase's loss as a module whose parameters are exactly that phase's: what DDP synchronises.

    The objective is held without being registered, so DDP hooks, broadcasts and averages only ``params``
    (the DDE generator's phase must not all-reduce the two DDEs it reads but does not train).
    """

    def __init__(self, objective: nn.Module, params: list[nn.Parameter]):
        super().__init__()
        object.__setattr__(self, "objective", objective)
        self.params = nn.ParameterList(params)

    def forward(self, phase: str, x: torch.Tensor) -> torch.Tensor:
        return self.objective(phase, x)


def data_parallel(objective: nn.Module, params: list[nn.Parameter], device: torch.device) -> nn.Module:
    """The module a training step calls as ``module(phase, x)``: the objective itself on one process, else a
    :class:`~torch.nn.parallel.DistributedDataParallel` over ``params`` (one phase's).

    DDP averages the gradients across ranks during ``backward`` (bucketed, overlapped with the computation).
    ``static_graph=True``: every phase uses the same parameters at every step, and the double-backward
    objectives (energy, DDE) leave some parameters without a gradient by design (an output bias does not move
    ``∇ₓf``); a static graph finds them once instead of traversing the graph at every step, and leaves their
    ``.grad`` as None, exactly as a single process does. (``find_unused_parameters=True`` instead fails for the
    DDE generator with torch 2.13: its generator phase back-propagates through both DDEs, whose parameters belong
    to the other phases' DDPs, and the next DDE update then stops with "Encountered gradient which is undefined,
    but still allreduced by DDP reducer".) Checked against one process for every method in tests/ddp_worker.py.
    """
    if world_size() == 1:
        return objective
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_PhaseLoss(objective, params), device_ids=device_ids,
                                               static_graph=True)


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank, so data-parallel replicas start identical."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a path, a message: small picklable objects between our own processes)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def max_over_ranks(value: float | torch.Tensor, device: torch.device | str = "cpu") -> float:
    """The largest of the ranks' ``value`` on every rank, so all ranks take the same branch (skip, stop)."""
    if world_size() == 1:
        return float(value)
    value = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(1).clone()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


def on_main(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 only: its result there, None elsewhere. When it raises a dae_gen error (a refused lock,
    a failed write) every rank raises that error, so none is left waiting in a collective for a peer that quit."""
    result, error = None, None
    if is_main_process():
        try:
            result = fn()
        except DaeGenError as err:
            error = err
    error = broadcast_object(error)
    if error is not None:
        raise error
    return result


def any_rank(flag: bool | torch.Tensor, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any."""
    return max_over_ranks(flag, device) > 0


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
    """Leave the process group cleanly, once no DistributedDataParallel wrapper is left.

    A DDP wrapper that outlives its process group is torn down at interpreter exit, where gloo aborts the process
    now and then ("terminate called without an active exception", exit -6 after all work is done: 7 of 60 runs
    on a busy 2-core machine, 0 of 60 with the wrapper freed first). So the wrappers dropped with their trainer
    are collected here, before the barrier (a peer still talking is the other cause) and the group's end.
    Callers that keep a :class:`~dae_gen.trainer.Trainer` alive drop it before calling this.
    """
    if is_distributed():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


__all__ = ["all_mean", "any_rank", "barrier", "broadcast_module", "broadcast_object", "data_parallel", "first_host",
           "init_distributed", "is_distributed", "is_main_process", "launch_environment", "max_over_ranks", "on_main",
           "rank", "resolve_device", "shutdown", "world_size"]
