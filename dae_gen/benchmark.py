"""Measuring speed: training steps, sampler steps, peak memory, and the projected time of a whole run.

The library half of ``dae-gen-bench`` (``dae_gen/cli/bench.py`` builds the objects from a config). Everything is
timed on the real code path: :meth:`dae_gen.trainer.Trainer.train_step` for training, and the sampler driver
itself for sampling, stopped through its callback after a few steps. Settings are compared *interleaved*
(A, B, A, B, …) and summarised by medians, so a machine whose load drifts affects every setting alike.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from dae_gen.precision import autocast
from dae_gen.score import Step, protocol_device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- peak memory -----------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a stretch of work: CUDA ``max_memory_allocated``, or the process's peak resident set.

    On Linux the resident peak (``VmHWM``) is reset at ``start`` by writing 5 to ``/proc/self/clear_refs``, so
    each stretch gets its own peak; where that is impossible it is the peak since the process started
    (``getrusage``), and ``scope`` says so.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        self.scope = "this stretch"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.scope = "since process start"

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.scope == "this stretch":
            try:
                with open("/proc/self/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            return int(line.split()[1]) / 1024  # kB
            except OSError:
                pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


# -- training --------------------------------------------------------------------------------------------
def time_train_steps(train_step: Callable[[], object], n_steps: int, *, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call of ``train_step`` over ``n_steps`` calls."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n_steps):
        train_step()
    synchronize(device)
    return (time.perf_counter() - wall) / n_steps, (time.process_time() - cpu) / n_steps


# -- sampling --------------------------------------------------------------------------------------------
class _StopSampling(Exception):
    """Raised from a sampler's callback to end the chain after the steps we time."""


@dataclass
class SamplerSteps:
    """A few steps of a real sampler chain.

    step_s:          wall seconds per sampler step (between the first and the last timed step, or the whole call
                     for a one-step sampler).
    cpu_step_s:      process CPU seconds per step over the same stretch (all threads; on a shared machine the
                     less noisy figure for comparing settings that use the same number of threads).
    steps_timed:     sampler steps the figure is based on.
    chain_steps:     steps of the whole chain (the steps' ``n``; the steps reported where ``n`` is None).
    calls_per_step:  network evaluations (``score`` / ``generate`` calls) per step, counted.
    completed:       the chain ran to its end, so ``chain_s`` is measured rather than extrapolated.
    chain_s:         seconds for the whole chain at this batch.
    """

    step_s: float
    cpu_step_s: float
    steps_timed: int
    chain_steps: int
    calls_per_step: float
    completed: bool
    chain_s: float


class _CallCounter:
    """Counts calls of a model's network entry points (``score``, ``generate``) while active."""

    def __init__(self, model, names: Sequence[str] = ("score", "generate")):
        self.model, self.names, self.count = model, [n for n in names if hasattr(model, n)], 0

    def __enter__(self) -> "_CallCounter":
        for name in self.names:
            method = getattr(self.model, name)

            def counted(*args, _method=method, **kwargs):
                self.count += 1
                return _method(*args, **kwargs)

            object.__setattr__(self.model, name, counted)  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        for name in self.names:
            self.model.__dict__.pop(name, None)


def time_sampler_steps(driver: Callable[..., torch.Tensor], model, batch: int, *, steps: int, seed: int = 0
                       ) -> SamplerSteps:
    """Run ``driver(model, batch, generator=, callback=)`` and stop it after ``steps`` steps (or at its end).

    The chain's cost is ``step_s × chain_steps`` when it was stopped (the initial state and a final
    denoising call are left out), and the measured duration of the call when it completed. A chain whose
    length is unknown in advance (``Step.n is None``: an adaptive ODE solver) always runs to its end;
    its ``chain_steps`` is the number of steps it reported.
    """
    device = protocol_device(model)
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    calls: list[int] = []  # network calls made by each stamp
    total = {"n": 0}

    def callback(step: Step) -> None:
        # n is None where the chain's length is not known in advance (an adaptive ODE solver): it runs to its end
        i, known = int(step.i), step.n is not None
        total["n"] = int(step.n) if known else i
        if i == 1 or i >= steps or i == total["n"]:
            synchronize(device)
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        calls.append(counter.count)
        if known and steps <= i < total["n"]:
            raise _StopSampling

    generator = torch.Generator(device=device).manual_seed(seed)
    completed = True
    with _CallCounter(model) as counter:
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            driver(model, batch, generator=generator, callback=callback)
        except _StopSampling:
            completed = False
        synchronize(device)
        end = time.perf_counter()
    if not stamps:
        raise RuntimeError(f"the sampler {getattr(driver, '__name__', driver)!r} never called its callback; a "
                           "sampler driver must call callback once per step with a dae_gen.score.Step")
    n_stamps = len(stamps)
    if n_stamps > 1:  # between the first and the last step: no initial state, no final denoising call
        step_s = (stamps[-1] - stamps[0]) / (n_stamps - 1)
        cpu_step_s = (cpu_stamps[-1] - cpu_stamps[0]) / (n_stamps - 1)
        calls_per_step = (calls[-1] - calls[0]) / (n_stamps - 1)
    else:
        step_s, cpu_step_s, calls_per_step = stamps[0] - start, cpu_stamps[0] - cpu_start, float(calls[0])
    chain_s = end - start if completed else step_s * total["n"]
    return SamplerSteps(step_s=step_s, cpu_step_s=cpu_step_s, steps_timed=n_stamps, chain_steps=total["n"],
                        calls_per_step=calls_per_step, completed=completed, chain_s=chain_s)


# -- workloads for the threads probe (dae_gen.threads.configure_threads) ------------------------------------
def training_workload(objective, *, batch_size: int, device: torch.device | str = "cpu", amp: str = "none",
                      seed: int = 0) -> Callable[[], None]:
    """One forward + backward of every phase of ``objective`` on a fixed random batch of the data's shape, at the
    trainer's precision ``amp`` (``dae_gen.precision.resolve_amp``'s result: bf16 kernels scale differently).

    It leaves no trace: the global RNG is forked (the losses draw noise), gradients are cleared, no optimiser
    steps, and the dataset is not touched (its epoch order stays as the trainer will find it). The network's
    cost does not depend on pixel values, so a random batch costs what a data batch does.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((int(batch_size), *objective.data_shape), generator=generator).to(device)
    phases = [name for name, _ in objective.phases]

    def run() -> None:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for phase in phases:
                with autocast(amp, device):
                    losses = objective.losses(phase, x)
                losses.float().mean().backward()
        objective.zero_grad(set_to_none=True)

    return run


def sampler_workload(driver: Callable[..., torch.Tensor], model, *, batch: int, steps: int = 2
                     ) -> Callable[[], None]:
    """The first ``steps`` steps of the real sampler chain on ``batch`` images (stopped through its callback)."""
    def run() -> None:
        time_sampler_steps(driver, model, batch, steps=steps)

    return run


# -- interleaving ----------------------------------------------------------------------------------------
def steps_for(seconds_per_step: float, *, min_steps: int, target_s: float, max_steps: int = 10_000) -> int:
    """How many steps make a timed round of about ``target_s`` seconds (at least ``min_steps``)."""
    if seconds_per_step <= 0:
        return max_steps
    return int(min(max_steps, max(min_steps, math.ceil(target_s / seconds_per_step))))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- projection ------------------------------------------------------------------------------------------
@dataclass
class Projection:
    """Projected wall time of a preset's whole training run on this device, from measured step costs.

    train_s: steps × train-step seconds; grids_s: the sample grids the trainer writes (every ``sample_every``
    steps and at the end); evals_s: the sampling part of the periodic evaluations (FID feature extraction not
    included); total_s: their sum (checkpoints and logging not included: they cost little per step).
    """

    steps: int
    train_s: float
    n_grids: int
    grids_s: float
    n_evals: int
    evals_s: float
    total_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def count_grids(steps: int, sample_every: int) -> int:
    """Sample grids :meth:`Trainer.fit` writes: one every ``sample_every`` steps, plus a final one unless the last
    step already wrote it."""
    periodic = steps // sample_every if sample_every else 0
    final = 1 if sample_every == 0 or steps % sample_every else 0
    return periodic + final


def project_run(*, steps: int, train_step_s: float, sample_every: int, grid_s: float | None,
                eval_every: int = 0, eval_s: float | None = None) -> Projection:
    """Projected wall time of a run of ``steps`` steps (see :class:`Projection`)."""
    n_grids = count_grids(steps, sample_every) if grid_s is not None else 0
    n_evals = steps // eval_every if eval_every and eval_s is not None else 0
    train_s = steps * train_step_s
    grids_s = n_grids * (grid_s or 0.0)
    evals_s = n_evals * (eval_s or 0.0)
    return Projection(steps=steps, train_s=train_s, n_grids=n_grids, grids_s=grids_s, n_evals=n_evals,
                      evals_s=evals_s, total_s=train_s + grids_s + evals_s)


# -- the machine ---------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """Where the numbers were measured: CPU, cores, device name, torch and Python versions."""
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "device": str(device), "torch": torch.__version__,
            "python": sys.version.split()[0]}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def human_seconds(seconds: float) -> str:
    """``0.8 ms``, ``12.3 s``, ``4.2 min``, ``3.1 h``, ``2.4 d``."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


__all__ = ["PeakMemory", "Projection", "SamplerSteps", "count_grids", "cpu_model", "human_seconds", "machine_info",
           "median", "project_run", "sampler_workload", "steps_for", "synchronize", "time_sampler_steps",
           "time_train_steps", "training_workload"]
