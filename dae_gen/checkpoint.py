"""Checkpoints as named state dicts (EDM2 style), written atomically and read without unpickling objects.

A checkpoint is a dict ``{"format", "step", "model", "ema", "optimizers", "schedulers", "rng", "data",
"best", "config"}`` of tensors, numbers, strings and containers of them. It is loaded with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects (a hostile file cannot run code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from dae_gen.errors import CheckpointError

FORMAT = "dae_gen.checkpoint/1"
REQUIRED_KEYS = ("format", "step", "model", "ema", "config")
_STEP_FILE = re.compile(r"^ckpt_(\d+)\.pt$")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a killed run never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path}: expected {path}/checkpoints/ckpt_<step>.pt "
                                  "(train a model first, or point at a checkpoint file)")
        path = found
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle errors, zip errors, truncated files, forbidden globals
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
            "(the file is corrupt, truncated, or holds objects other than tensors and plain containers)"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dae_gen checkpoint (expected format {FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {missing}")
    return state


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
