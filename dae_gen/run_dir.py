"""Run-directory concerns kept out of the training loop: exclusive use of a run folder by one process.

A run directory is the user's record of a run (DESIGN.md, STYLE.md): config, checkpoints, metrics, grids. Two
trainers writing into one folder would interleave their metrics and checkpoints, so a process takes
``<run>/.lock`` (holding its host, PID and start time) before it writes anything, and a second process is
refused with a message naming the holder. A lock left by a process that died (same host, PID gone) is stale
and taken over with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from dae_gen.errors import DaeGenError

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class RunLocked(DaeGenError):
    """Another live process is using the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive, re-entrant (within one process) use of a run directory: ``with RunLock(run_dir): ...``.

    run_dir:  the folder to lock; created if missing (the lock is the first file written into it).
    """

    _held: dict[Path, int] = {}  # lock path → nesting depth in this process

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir).resolve() / LOCK_NAME

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
        if self.path in self._held:
            self._held[self.path] += 1
            return self
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
                who = (f"PID {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
                       f"({holder.get('command')})") if holder else "another process"
                raise RunLocked(f"{self.path.parent} is in use by {who}. Wait for it to finish, or use another "
                                f"directory; if that process is gone (another machine), delete {self.path}")
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self._held[self.path] = 1
            return self
        raise RunLocked(f"could not take the lock {self.path}: it keeps reappearing; is another trainer starting?")

    def release(self) -> None:
        depth = self._held.get(self.path, 0)
        if depth > 1:
            self._held[self.path] = depth - 1
            return
        if depth == 1:
            del self._held[self.path]
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
