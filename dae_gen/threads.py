"""How many CPU threads torch uses: one rule for every entry point (train, sample, eval, bench).

Why a rule at all. torch's default is one OpenMP thread per core. On an idle machine that is fastest for large
networks, but every operator then waits at a barrier for its slowest thread: when another process holds a core,
that thread runs only part of the time and each of the thousands of small operators of a step waits for it, while
one thread runs at full speed on the free core (measurements: ``experiments/bench/README.md``).

The rule (``threads=auto``, the default of every CLI):

1. one core available (affinity mask) → 1 thread;
2. count the cores other processes keep busy (``/proc/stat`` over 0.2 s, minus our own use; else the 1-minute
   load average) and take at most the idle ones: a fully busy machine gets 1 thread;
3. if more than one thread remains possible, *measure*: run the job's real workload (a training step, a sampler
   step) alternately with 1 and with N threads (1, N, 1, N, ... after one untimed call each; see
   :func:`probe_threads`) and keep N only if its median is at least ``margin`` (default 1.1) times faster.
   Tiny networks, whose operators are too small to split, get 1 thread; large ones keep all idle cores.

An integer ``threads=K`` skips the rule. A CUDA device keeps torch's default (the GPU does the work).
Results can depend on the thread count in the last bits for large networks (reduction order), so pass an
explicit ``threads=K`` when bitwise reproducibility across machines matters.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

#: A candidate thread count must be at least this much faster than one thread to be kept.
DEFAULT_MARGIN = 1.1


@dataclass
class ThreadChoice:
    """The thread count in use and why: ``reason`` is one of ``explicit``, ``cuda``, ``one core``, ``busy``,
    ``no probe``, ``probe``; ``seconds`` holds the probe's medians per thread count."""

    threads: int
    reason: str
    available: int
    busy_cores: float | None = None
    seconds: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds": {str(k): v for k, v in self.seconds.items()}}

    def __str__(self) -> str:
        text = f"{self.threads} thread{'s' if self.threads > 1 else ''} ({self.reason}"
        if self.seconds:
            text += ": " + ", ".join(f"{k} → {v * 1e3:.1f} ms" for k, v in sorted(self.seconds.items()))
        if self.busy_cores is not None:
            text += f"; {self.busy_cores:.1f} of {self.available} cores busy elsewhere"
        return text + ")"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; None where it cannot be read (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cores(interval: float = 0.2) -> float:
    """Cores kept busy by *other* processes, measured over ``interval`` seconds (0 … number of CPUs).

    Linux: the busy share of ``/proc/stat`` over the interval times the CPU count, minus this process's own
    CPU time (``os.times``). Elsewhere: the 1-minute load average (which lags by about a minute).
    """
    before, own_before = _cpu_jiffies(), os.times()
    if before is None:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    start = time.perf_counter()
    time.sleep(interval)
    after, own_after = _cpu_jiffies(), os.times()
    elapsed = time.perf_counter() - start
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0 or elapsed <= 0:
        return 0.0
    n_cpus = os.cpu_count() or 1
    own = (own_after.user - own_before.user + own_after.system - own_before.system) / elapsed
    return max(0.0, busy / total * n_cpus - own)


def probe_threads(workload: Callable[[], object], candidates: tuple[int, ...], *, block_s: float = 0.1,
                  clock: Callable[[], float] = time.perf_counter) -> dict[int, float]:
    """Median seconds of ``workload()`` per thread count, measured interleaved (A, B, A, B, …).

    One untimed call per count first (allocations, oneDNN kernel choice); then 3 rounds for a workload under a
    second, 2 under ten seconds, else 1; a tiny workload is repeated within a round until it lasts ``block_s``.
    Leaves torch at the first candidate's count.
    """
    warmup = []
    for n in candidates:
        torch.set_num_threads(n)
        start = clock()
        workload()
        warmup.append(clock() - start)
    fastest = max(min(warmup), 1e-6)
    rounds = 3 if fastest < 1 else 2 if fastest < 10 else 1
    repeats = max(1, math.ceil(block_s / fastest))
    times: dict[int, list[float]] = {n: [] for n in candidates}
    for _ in range(rounds):
        for n in candidates:
            torch.set_num_threads(n)
            start = clock()
            for _ in range(repeats):
                workload()
            times[n].append((clock() - start) / repeats)
    torch.set_num_threads(candidates[0])
    return {n: statistics.median(t) for n, t in times.items()}


def configure_threads(threads: int | str | None = "auto", *, workload: Callable[[], object] | None = None,
                      device: str | torch.device = "cpu", margin: float = DEFAULT_MARGIN,
                      busy: float | None = None, probe: Callable[..., dict[int, float]] = probe_threads
                      ) -> ThreadChoice:
    """Set torch's intra-op thread count by the rule in this module's docstring and return the choice.

    threads:   an integer K ≥ 1 (use K), or ``"auto"`` / None (the rule).
    workload:  a callable running one unit of the job's real work (a training step without the optimiser
               update, a sampler step); without it more than one thread is never chosen.
    device:    the job's device; on CUDA ``auto`` keeps torch's default.
    margin:    how much faster N threads must be than 1 to be kept.
    busy:      cores busy elsewhere (measured with :func:`busy_cores` when None).
    probe:     the measuring function (tests substitute a simulated machine).
    """
    available = available_cores()
    if threads not in (None, "auto"):
        count = int(threads)
        if count < 1:
            raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
        torch.set_num_threads(count)
        return ThreadChoice(count, "explicit", available)
    if torch.device(device).type == "cuda":
        return ThreadChoice(torch.get_num_threads(), "cuda", available)
    if available == 1:
        torch.set_num_threads(1)
        return ThreadChoice(1, "one core", available)
    busy = busy_cores() if busy is None else float(busy)
    candidate = max(1, min(available, math.floor(available - busy + 0.5)))
    if candidate == 1:
        torch.set_num_threads(1)
        return ThreadChoice(1, "busy", available, busy)
    if workload is None:
        torch.set_num_threads(1)
        return ThreadChoice(1, "no probe", available, busy)
    seconds = probe(workload, (1, candidate))
    chosen = candidate if seconds[1] >= margin * seconds[candidate] else 1
    torch.set_num_threads(chosen)
    return ThreadChoice(chosen, "probe", available, busy, seconds)


__all__ = ["DEFAULT_MARGIN", "ThreadChoice", "available_cores", "busy_cores", "configure_threads", "probe_threads"]
