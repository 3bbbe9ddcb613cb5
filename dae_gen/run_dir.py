"""Run-directory concerns kept out of the training loop: exclusive use of the folder, stop signals, checkpoint
rotation and fallback, and the metrics log.

A run directory is the user's record of a run: config, checkpoints, metrics, grids; a failing command changes
nothing in it.

- :class:`RunLock` / :func:`hold_run_dir`: a process takes ``<run>/.lock`` (its host, PID and start time)
  before it writes anything; a second process is refused with a message naming the holder. A lock left by a
  process that died (same host, PID gone) is stale and taken over with a warning. Under several processes
  only rank 0 holds it, and every rank learns the outcome (a refusal ends all ranks, none is left waiting).
- :class:`StopSignals`: SIGTERM, Ctrl-C and SLURM's pre-timeout signal become a request to stop at the next
  step boundary, so the trainer can write a checkpoint at the step it has just finished.
- :class:`RunCheckpoints`: step checkpoints in rotation (never with non-finite values), and resumption from
  the newest *readable* one; unreadable newer ones are set aside (renamed, never deleted).
- :class:`MetricsLog`: ``metrics.jsonl`` (and TensorBoard), continued from the resumed step without the rows
  of the steps that are about to be replayed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from dae_gen import distributed as D
from dae_gen.checkpoint import (
    TMP_INFIX,
    checkpoint_dir,
    describe_os_error,
    load_checkpoint,
    newest_readable_checkpoint,
    none_readable,
    prune_checkpoints,
    save_checkpoint,
)
from dae_gen.errors import ConfigError, DaeGenError, TrainingDiverged

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class RunLocked(DaeGenError):
    """Another live process is using the run directory."""


class RunDirError(DaeGenError):
    """A file of the run directory (metrics, sample grid) could not be written."""


# -- the lock -----------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive use of a run directory: ``with RunLock(run_dir): ...``. Not re-entrant: a second acquisition,
    even by the process that holds it, is refused (one launch takes the lock once).

    run_dir:  the folder to lock; created if missing (the lock is the first file written into it).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir).resolve() / LOCK_NAME
        self.held = False

    def holder(self) -> dict | None:
        """What the lock file says of its holder (``host``, ``pid``, ``started``, ``command``), or None."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or unreadable: treat as held by an unknown process

    def _is_stale(self, holder: dict) -> bool:
        return bool(holder) and holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"]))

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile: try again
                if self._is_stale(holder):
                    log.warning("taking over the stale lock of %s (PID %s on %s has ended)", self.path.parent,
                                holder.get("pid"), holder.get("host"))
                    self.path.unlink(missing_ok=True)
                    continue
                mine = bool(holder) and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
                who = ("this process: the lock is taken once per launch" if mine else
                       f"PID {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
                       f"({holder.get('command')})") if holder else "another process"
                raise RunLocked(f"{self.path.parent} is in use by {who}. Wait for it to finish, or use another "
                                f"directory; if that process is gone (another machine), delete {self.path}")
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise RunLocked(f"could not take the lock {self.path}: it keeps reappearing; is another trainer starting?")

    def release(self) -> None:
        if self.held:
            self.held = False
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s :class:`RunLock` on rank 0 for the duration; collective under several processes.

    Rank 0 tries the lock and every rank learns the outcome, so a refusal raises :class:`RunLocked` on all ranks
    together (a rank waiting for a peer that has already given up would hang until the collective timeout).
    """
    lock = D.on_main(RunLock(run_dir).acquire)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# -- stop signals -------------------------------------------------------------------------------------
def parse_signals(names: Sequence[str]) -> list[signal.Signals]:
    """``["SIGTERM", "INT", "usr1"]`` → signal numbers; an unknown name is a :class:`ConfigError`."""
    found = []
    for name in names:
        key = str(name).upper()
        key = key if key.startswith("SIG") else "SIG" + key
        number = getattr(signal, key, None)
        if not isinstance(number, signal.Signals) or number in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"trainer.stop_signals: {name!r} is not a signal that can be caught here; expected "
                              "names such as SIGTERM, SIGINT, SIGUSR1, SIGUSR2")
        found.append(number)
    return found


class StopSignals:
    """Within ``with StopSignals(names) as stop:``, the signals set ``stop.received`` instead of killing the
    process; the training loop checks it after each step, checkpoints and exits.

    A second Ctrl-C more than two seconds after the first stops at once (``KeyboardInterrupt``): launchers such
    as torchrun forward the terminal's SIGINT, so one key press can arrive twice within a moment. Handlers are
    installed only in the main thread (Python's rule) and the previous ones are restored on exit;
    :meth:`forward` passes the signal on to the previous handler (submitit's requeue on its USR2). A signal the
    process was started with ignored stays ignored, as Python itself does for SIGINT: a shell starts a background
    job (``cmd &``) with SIGINT ignored, so a Ctrl-C meant for the foreground does not stop it; ``nohup`` does
    the same for SIGHUP.
    """

    def __init__(self, names: Sequence[str]):
        self.signals = parse_signals(names)
        self.received: signal.Signals | None = None
        self._received_at = 0.0
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received, self._received_at = signal.Signals(signum), time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._received_at > 2.0:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                if signal.getsignal(number) is not signal.SIG_IGN:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def forward(self) -> None:
        """Call the handler that was installed before ours for the received signal, if it was a Python one
        (not the default action, not Python's own KeyboardInterrupt)."""
        previous = self._previous.get(self.received) if self.received is not None else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(int(self.received), None)


# -- checkpoints --------------------------------------------------------------------------------------
def nonfinite_entries(state: dict[str, Any], keys: Sequence[str] = ("model", "ema", "optimizers")) -> list[str]:
    """Names (``model/net.0.weight``) of the floating tensors under ``keys`` that hold NaN or ±inf."""
    bad = []

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(prefix)
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(f"{prefix}/{i}", item)

    for key in keys:
        visit(key, state.get(key))
    return bad


def max_abs_weight(weights: dict[str, torch.Tensor]) -> float:
    """The largest ``|w|`` over a state dict's floating tensors (how far weights have run away, if they have)."""
    values = [t.detach().abs().max() for t in weights.values() if t.is_floating_point() and t.numel()]
    return float(torch.stack(values).max()) if values else 0.0


class RunCheckpoints:
    """The step checkpoints of one run directory (``checkpoints/ckpt_<step>.pt``), written by rank 0.

    run_dir:  the run directory.
    keep:     how many step checkpoints to keep (older ones are deleted after each write; ``best.pt`` is extra).
    """

    def __init__(self, run_dir: str | Path, *, keep: int):
        self.run_dir, self.folder, self.keep = Path(run_dir), checkpoint_dir(run_dir), int(keep)
        self.newest: Path | None = None  # the newest step checkpoint this run wrote or resumed from (all ranks)
        self.newest_step: int | None = None
        self.newest_max_abs_weight: float | None = None  # known on rank 0

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state`` as ``ckpt_<step>.pt`` (rank 0), then delete all but the ``keep`` newest; collective.

        A write error, or a state with non-finite weights, EMA weights or optimiser moments (never written: the
        newest checkpoint must be one that can be resumed), raises on every rank; older files stay untouched.
        """
        path = self.folder / f"ckpt_{int(state['step']):08d}.pt"

        def write() -> float:
            largest = self.save_as(state, path.name)
            prune_checkpoints(self.run_dir, keep=self.keep)
            return largest

        self.newest_max_abs_weight = D.on_main(write)
        self.newest, self.newest_step = path, int(state["step"])
        return path

    def save_as(self, state: dict[str, Any], name: str) -> float:
        """Write ``state`` as ``checkpoints/<name>`` from this process (e.g. ``best.pt``); returns its largest
        ``|weight|``. Raises :class:`TrainingDiverged` for non-finite values, :class:`CheckpointError` for I/O."""
        path = self.folder / name
        bad = nonfinite_entries(state)
        if bad:
            raise TrainingDiverged(
                f"refusing to write {path}: non-finite values in {', '.join(bad[:3])}"
                f"{f' and {len(bad) - 3} more tensors' if len(bad) > 3 else ''}. {self.describe_newest()}")
        largest = max_abs_weight(state["model"])
        save_checkpoint({**state, "max_abs_weight": largest}, path)
        return largest

    def describe_newest(self) -> str:
        """One sentence on the newest checkpoint (for messages); never claims one exists when none does."""
        if self.newest is None:
            return "No checkpoint has been written yet."
        size = "" if self.newest_max_abs_weight is None else f", largest |weight| {self.newest_max_abs_weight:.3g}"
        return f"The newest checkpoint is {self.newest} (step {self.newest_step}{size})."

    def resume(self, *, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The state of the newest readable step checkpoint (the same one on every rank), or None for a new run.

        On rank 0 newer unreadable ones are renamed ``<name>.unreadable`` (one warning each) so they leave the
        rotation but stay for inspection, and temporary files of dead writers are removed. When checkpoints exist
        but none can be read, :class:`CheckpointError` and nothing is changed.
        """
        found = D.on_main(lambda: self._newest_readable(map_location))  # rank 0 sets unreadable ones aside
        path = D.broadcast_object(None if found is None or found[1] is None else str(found[1]))
        if path is None:
            return None
        state = found[0] if found is not None else load_checkpoint(path, map_location=map_location)
        self.adopt(Path(path), state)
        return state

    def _newest_readable(self, map_location) -> tuple[dict[str, Any] | None, Path | None]:
        state, path, unreadable = newest_readable_checkpoint(self.run_dir, map_location=map_location)
        if state is None and unreadable:
            raise none_readable(self.run_dir, unreadable)
        self.set_aside(unreadable, resuming_from=path)
        return state, path

    def set_aside(self, unreadable: Sequence[tuple[Path, str]], *, resuming_from: Path | None) -> None:
        """Rename each unreadable checkpoint ``<name>.unreadable`` (one warning each: it leaves the rotation but
        stays for inspection) and remove the temporary files of dead writers; rank 0 only."""
        self._remove_stale_temporaries()
        for bad, reason in unreadable:
            aside = bad.with_name(bad.name + ".unreadable")
            n = 1
            while aside.exists():
                aside, n = bad.with_name(f"{bad.name}.unreadable{n}"), n + 1
            os.replace(bad, aside)
            log.warning("%s; kept as %s, resuming from %s", reason, aside.name, resuming_from)

    def adopt(self, path: Path, state: dict[str, Any]) -> None:
        """Record that the run resumes from ``path`` (read by the caller as ``state``): the newest checkpoint."""
        self.newest, self.newest_step = Path(path), int(state["step"])
        self.newest_max_abs_weight = state.get("max_abs_weight")

    def _remove_stale_temporaries(self) -> None:
        """Partial writes of killed processes (``*.pt.tmp<pid>`` whose PID is gone): never a live writer's."""
        if not self.folder.is_dir():
            return
        for tmp in self.folder.glob(f"*.pt{TMP_INFIX}*"):
            pid = tmp.name.rsplit(TMP_INFIX, 1)[1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)


# -- metrics ------------------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.jsonl`` (one JSON object per logged step), mirrored to TensorBoard when it is installed.

    run_dir:      the run directory.
    resume_step:  the step training continues from: rows after it (steps about to be replayed, or a line cut
                  by a kill) are dropped, and TensorBoard purges its events after it, so no step appears twice.
    tensorboard:  also write ``tensorboard/`` (a warning, once, when TensorBoard is not installed).
    """

    def __init__(self, run_dir: str | Path, *, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        try:
            self._truncate_after(int(resume_step))
        except OSError as err:
            raise RunDirError(f"cannot rewrite {self.path}: {describe_os_error(err)}") from None
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("trainer.tensorboard is true but TensorBoard is not installed (pip install tensorboard); "
                            "metrics go to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=int(resume_step) + 1)

    def _truncate_after(self, step: int) -> None:
        try:
            lines = self.path.read_text().splitlines(keepends=True)
        except FileNotFoundError:
            return
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if line.endswith("\n") and int(row.get("step", 0)) <= step:
                kept.append(line)
        if len(kept) != len(lines):
            tmp = self.path.with_name(f"{self.path.name}{TMP_INFIX}{os.getpid()}")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)

    def write(self, step: int, values: dict[str, float]) -> None:
        try:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        except OSError as err:
            raise RunDirError(f"cannot write {self.path}: {describe_os_error(err)}") from None
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = ["LOCK_NAME", "MetricsLog", "RunCheckpoints", "RunDirError", "RunLock", "RunLocked", "StopSignals",
           "hold_run_dir", "max_abs_weight", "nonfinite_entries", "parse_signals"]
