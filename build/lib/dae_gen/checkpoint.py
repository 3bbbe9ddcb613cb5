"""Checkpoints as named state dicts (EDM2 style), written atomically and read without unpickling objects.

A checkpoint is a dict ``{"format", "step", "model", "ema", "optimizers", "schedulers", "rng", "data",
"best", "config"}`` of tensors, numbers, strings and containers of them. It is loaded with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects (a hostile file cannot run code).

Writing is crash-safe: the state goes to a temporary file private to this process (``ckpt_N.pt.tmp<pid>``),
which is flushed and fsync'ed, renamed over the final name (atomic on POSIX), and the folder is fsync'ed so
the rename itself survives a power cut. A kill at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from dae_gen.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "dae_gen.checkpoint/1"
REQUIRED_KEYS = ("format", "step", "model", "ema", "config")
_STEP_FILE = re.compile(r"^ckpt_(\d+)\.pt$")
TMP_INFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_os_error(err: BaseException) -> str:
    """``"No space left on device (ENOSPC)"`` for an OSError; the first line of anything else."""
    if isinstance(err, OSError) and err.errno is not None:
        return f"{os.strerror(err.errno)} ({errno.errorcode.get(err.errno, err.errno)})"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically and durably (see the module docstring).

    A failure (disk full, no permission, read-only folder) raises :class:`CheckpointError` naming the path and
    the cause; the temporary file is removed and a previous file at ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_INFIX}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:  # a Python file object: write errors arrive as OSError with an errno
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as err:  # RuntimeError: torch's writer reporting a failed write
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise CheckpointError(f"cannot write checkpoint {path}: {describe_os_error(err)}") from err
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu", mmap: bool = False
                    ) -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    ``path`` is a checkpoint file, or a run directory: then its newest *readable* step checkpoint, with a
    warning for each newer one that could not be read (nothing on disk is changed). ``mmap``: map the tensors'
    storage from the file instead of reading it (the archive and its index are still read and checked).
    """
    path = Path(path)
    if path.is_dir():
        state, _, unreadable = newest_readable_checkpoint(path, map_location=map_location, mmap=mmap)
        for _, reason in unreadable:
            log.warning("%s; reading the previous checkpoint instead", reason)
        if state is None and unreadable:
            raise none_readable(path, unreadable)
        if state is None:
            raise CheckpointError(f"no checkpoint in {path}: expected {path}/checkpoints/ckpt_<step>.pt "
                                  "(train a model first, or point at a checkpoint file)")
        return state
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # pickle errors, zip errors, truncated files, forbidden globals
        raise CheckpointError(f"cannot read checkpoint {path}: {_read_error(err)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dae_gen checkpoint (expected format {FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {missing}")
    return state


def _read_error(err: Exception) -> str:
    """Why ``torch.load`` failed, in one line. torch's own message for a forbidden object advises retrying with
    ``weights_only=False``, which would run whatever the file holds: that advice is never passed on (nor
    chained: the CheckpointError is raised ``from None``)."""
    text = str(err)
    if "Weights only load failed" in text:
        detail = [line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line]
        return ("it holds objects other than tensors and plain containers, which are never unpickled"
                + (f" ({detail[0]})" if detail else ""))
    first = next((line for line in text.splitlines() if line.strip()), "").split(". ")[0]
    return f"the file is corrupt or truncated ({type(err).__name__}{': ' + first if first else ''})"


def newest_readable_checkpoint(run_dir: str | Path, *, map_location: str | torch.device = "cpu", mmap: bool = False
                               ) -> tuple[dict[str, Any] | None, Path | None, list[tuple[Path, str]]]:
    """``(state, path, unreadable)``: the newest step checkpoint of ``run_dir`` that loads, and the newer ones
    that did not, with the reason (``(None, None, unreadable)`` when none loads or there are none)."""
    unreadable: list[tuple[Path, str]] = []
    for _, path in reversed(step_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location=map_location, mmap=mmap)
        except CheckpointError as err:
            unreadable.append((path, str(err)))
            continue
        return state, path, unreadable
    return None, None, unreadable


def resumable_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a run resumes from: its newest readable step checkpoint (checked memory-mapped, so no
    weights are read), None when it has none; :class:`CheckpointError` when it has some but none can be read.
    The trainer sets the newer unreadable ones aside when it resumes (``dae_gen.run_dir.RunCheckpoints``)."""
    _, path, unreadable = newest_readable_checkpoint(run_dir, mmap=True)
    if path is None and unreadable:
        raise none_readable(run_dir, unreadable)
    return path


def none_readable(run_dir: str | Path, unreadable: list[tuple[Path, str]]) -> CheckpointError:
    """The one error for a run whose checkpoints all fail to load."""
    return CheckpointError(
        f"none of the {len(unreadable)} checkpoints in {checkpoint_dir(run_dir)} can be read (newest: "
        f"{unreadable[0][1]}). Nothing was changed; move them elsewhere to start this run afresh, or restore one "
        "from a backup")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_<step>.pt`` in ``run_dir/checkpoints``, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``run_dir/checkpoints``, or None."""
    steps = step_checkpoints(run_dir)
    return steps[-1][1] if steps else None


def prune_checkpoints(run_dir: str | Path, *, keep: int) -> None:
    """Delete all but the ``keep`` newest step checkpoints (``best.pt`` is never touched)."""
    for _, path in step_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


__all__ = ["FORMAT", "checkpoint_dir", "describe_os_error", "latest_checkpoint", "load_checkpoint",
           "newest_readable_checkpoint", "none_readable", "prune_checkpoints", "resumable_checkpoint",
           "save_checkpoint", "step_checkpoints"]
