"""The one owner of a run directory's layout: where each file lives, the lock, and the resume plan.

A run directory is the user's record of a run. :class:`RunDir` alone knows its layout::

    <run>/config.yaml              the effective resolved config (written atomically at each launch)
    <run>/config_history.jsonl     one line per launch: command, start step, changed keys
    <run>/checkpoints/ckpt_<N>.pt  step checkpoints in rotation (+ best.pt, + *.tmp<pid> while written)
    <run>/metrics.jsonl            one JSON row per logged step (+ tensorboard/)
    <run>/train.log                the launches' log lines
    <run>/samples/samples_<N>.png  periodic grids (samples.png: the newest)
    <run>/posthoc_ema/ema-<N>-<σ>.pt  post-hoc EMA snapshots (trainer.posthoc_ema), for any EMA length after training
    <run>/samples_cli/<stamp>/     dae-gen-sample outputs;  <run>/eval/<stamp>/: dae-gen-eval outputs
    <run>/.lock                    held by the one process using the folder

A launch plans once (:meth:`RunDir.plan`: the config it trains with, what it changes, and the state of the
newest readable checkpoint, read once), holds the lock once (:meth:`RunDir.lock`), and only then writes.
Checkpoints are read with ``weights_only=True`` (``dae_gen.checkpoint``): a hostile file is never unpickled.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dae_gen import distributed as D
from dae_gen.checkpoint import (
    checkpoint_dir,
    load_checkpoint,
    newest_readable_checkpoint,
    none_readable,
    step_checkpoints,
)
from dae_gen.errors import CheckpointError, ConfigError
from dae_gen.resume import Change, refuse_unsafe, resumed_config
from dae_gen.run_dir import LOCK_NAME, MetricsLog, RunCheckpoints, RunDirError, hold_run_dir

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "config_history.jsonl"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
BEST_FILE = "best.pt"
POSTHOC_EMA_DIR = "posthoc_ema"
#: What a run folder may hold before its first launch wrote config.yaml (a lock, Hydra's leftovers).
_PRE_RUN_ENTRIES = {LOCK_NAME, ".hydra", LOG_FILE}


@dataclass
class ResumePlan:
    """What one launch does with a run directory, decided before anything is written.

    config:      the config it trains with (the stored one with the command line's safe changes).
    changes:     what it changes in the stored config (empty for a new run).
    checkpoint:  the newest readable step checkpoint (None: a new run).
    state:       that checkpoint's contents, read once (None: a new run).
    unreadable:  newer checkpoints that failed to load, with the reason (set aside by :meth:`RunDir.start`).
    """

    config: dict[str, Any]
    changes: list[Change] = field(default_factory=list)
    checkpoint: Path | None = None
    state: dict[str, Any] | None = None
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def step(self) -> int:
        """The step the launch starts from (0 for a new run)."""
        return 0 if self.state is None else int(self.state["step"])


class RunDir:
    """A run directory: its layout, its checkpoints, its config and history, its lock and its resume plan.

    path:  the run folder (:meth:`of` also takes a checkpoint file inside one).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, path: str | Path) -> "RunDir":
        """The run directory of a run folder or of a checkpoint file (``<run>/checkpoints/ckpt_N.pt`` → ``<run>``)."""
        path = Path(path)
        return cls(run_directory(path) if path.is_file() or (path.suffix == ".pt" and not path.is_dir()) else path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- the layout -----------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def checkpoint_folder(self) -> Path:
        return checkpoint_dir(self.path)

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_folder / BEST_FILE

    @property
    def posthoc_ema_folder(self) -> Path:
        """The post-hoc EMA snapshots ``ema-<step>-<sigma_rel>.pt`` (:mod:`dae_gen.posthoc_ema`)."""
        return self.path / POSTHOC_EMA_DIR

    def grid_file(self, step: int) -> Path:
        """The periodic sample grid of ``step``: ``samples/samples_<step>.png``."""
        return self.path / "samples" / f"samples_{int(step):08d}.png"

    @property
    def newest_grid_file(self) -> Path:
        """A copy of the newest periodic grid, under a fixed name."""
        return self.path / "samples.png"

    def output_folder(self, kind: str, stamp: str | None = None) -> Path:
        """A new folder for one command's outputs: ``<run>/<kind>/<date_time>`` (``kind``: ``samples_cli``, ``eval``),
        ``..._2``, ``..._3`` when several commands start in one second."""
        return new_output_dir(self.path / kind, stamp)

    # -- checkpoints ----------------------------------------------------------------------------------
    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every step checkpoint, oldest first."""
        return step_checkpoints(self.path)

    def latest_checkpoint(self) -> Path | None:
        """The step checkpoint with the highest step (readable or not), or None."""
        steps = self.step_checkpoints()
        return steps[-1][1] if steps else None

    def all_checkpoints(self) -> list[Path]:
        """The step checkpoints, oldest first, then ``best.pt`` if there is one."""
        best = self.best_checkpoint
        return [p for _, p in self.step_checkpoints()] + ([best] if best.is_file() else [])

    def checkpoints(self, *, keep: int) -> RunCheckpoints:
        """The writer of this run's step checkpoints (rotation keeping ``keep``, ``best.pt``)."""
        return RunCheckpoints(self.path, keep=keep)

    def read_newest(self, *, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Any] | None, Path | None, list[tuple[Path, str]]]:
        """``(state, path, unreadable)`` of the newest readable step checkpoint, read once; nothing is changed.
        :class:`CheckpointError` when checkpoints exist but none can be read."""
        state, path, unreadable = newest_readable_checkpoint(self.path, map_location=map_location)
        if state is None and unreadable:
            raise none_readable(self.path, unreadable)
        return state, path, unreadable

    def load(self, checkpoint: str | Path | None = None, *, map_location: str | torch.device = "cpu"
             ) -> tuple[dict[str, Any], Path]:
        """A checkpoint's state and path: the file ``checkpoint``, else the run's newest step checkpoint."""
        path = Path(checkpoint) if checkpoint is not None else self.latest_checkpoint()
        if path is None:
            raise CheckpointError(f"no checkpoint in {self.path}: expected {self.checkpoint_folder}/ckpt_<step>.pt "
                                  "(train a model there first, or give a checkpoint file)")
        return load_checkpoint(path, map_location=map_location), path

    # -- config and history ---------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any] | None:
        """``config.yaml`` as a plain dict, or None when there is none (a ConfigError when it cannot be read)."""
        from omegaconf import OmegaConf

        if not self.config_file.is_file():
            return None
        try:
            return OmegaConf.to_container(OmegaConf.load(self.config_file), resolve=True)
        except Exception as err:
            raise ConfigError(f"{self.config_file} is not a readable YAML config ({err}); restore it, or train in "
                              "another folder") from err

    def write_config(self, config: Mapping) -> Path:
        """``config.yaml``, written atomically (a killed launch leaves the old one or the new one, never half)."""
        from omegaconf import OmegaConf

        path = self.config_file
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        OmegaConf.save(OmegaConf.create(dict(config)), tmp)
        os.replace(tmp, path)
        return path

    def record_launch(self, *, command: str, step: int, changes: list[Change]) -> Path:
        """Append one line to ``config_history.jsonl``: when, where, the command line, the step it starts from
        and each changed key as ``[old, new]``."""
        from dae_gen import __version__

        entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "host": socket.gethostname(), "command": command,
                 "start_step": int(step), "launch": "resume" if step else "new",
                 "changed": {c.key: c.as_json() for c in changes}, "dae_gen": __version__}
        with self.history_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
        return self.history_file

    def stored_device(self, requested: Mapping, touched: Iterable[str] | None) -> str:
        """The ``device`` a launch will run on, from ``config.yaml`` alone (no checkpoint is read): the command
        line's when it sets ``device``, else the stored one. Needed before the lock, which is collective."""
        stored = self.read_config()
        if stored is None or touched is None or "device" in set(touched):
            return str(requested.get("device", "auto"))
        return str(stored.get("device", "auto"))

    def check_layout(self) -> None:
        """The files a launch appends to or rewrites must be plain files where they exist (a folder named
        ``config_history.jsonl`` is refused before anything is written)."""
        for path in (self.config_file, self.history_file, self.metrics_file, self.log_file):
            if path.exists() and not path.is_file():
                raise RunDirError(f"{path} should be a file of the run's record but is a "
                                  f"{'folder' if path.is_dir() else 'special file'}; move it away, or train in "
                                  "another folder")
            if path.is_file() and not os.access(path, os.W_OK):
                raise RunDirError(f"{path} is not writable; fix its permissions, or train in another folder")

    # -- the lock and the resume plan -----------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator["RunDir"]:
        """Hold ``<run>/.lock`` (rank 0) for the block; collective. A second holder, even in this process, is
        refused with :class:`~dae_gen.run_dir.RunLocked` naming the holder."""
        with hold_run_dir(self.path):
            yield self

    def plan(self, requested: Mapping, touched: Iterable[str] | None = None) -> ResumePlan:
        """What a launch asking for ``requested`` does here, nothing written; its checkpoint is read once.

        A new folder: ``requested`` as given. A folder holding a run: its stored config (``config.yaml``, else its
        newest checkpoint's) with the ``touched`` keys taken from ``requested``; changes that would alter what was
        trained are refused (ConfigError). A folder holding other files is refused too.
        """
        self.check_layout()
        state, checkpoint, unreadable = self.read_newest(map_location="cpu")
        stored = self.read_config()
        if stored is None and state is not None:
            stored = dict(state["config"])
        if stored is None:
            others = sorted(p.name for p in self.path.iterdir() if p.name not in _PRE_RUN_ENTRIES
                            ) if self.path.is_dir() else []
            if others:
                raise ConfigError(f"{self.path} is not empty ({', '.join(others[:5])}"
                                  f"{' ...' if len(others) > 5 else ''}) and holds no dae_gen run (no {CONFIG_FILE}, "
                                  "no checkpoints/): train in a new or empty folder")
            return ResumePlan(config=dict(requested))
        config, changes = resumed_config(stored, requested, None if touched is None else list(touched))
        refuse_unsafe(changes, self.path)
        for key in ("data_shape", "data_info"):
            if key in stored:
                config[key] = stored[key]
        return ResumePlan(config=config, changes=changes, checkpoint=checkpoint, state=state, unreadable=unreadable)

    def start(self, plan: ResumePlan, checkpoints: RunCheckpoints) -> None:
        """The first writes of a validated launch (rank 0): set aside the plan's unreadable checkpoints and the
        temporaries of dead writers; tell ``checkpoints`` which one the run resumes from."""
        D.on_main(lambda: checkpoints.set_aside(plan.unreadable, resuming_from=plan.checkpoint))
        if plan.state is not None:
            checkpoints.adopt(plan.checkpoint, plan.state)

    def metrics_log(self, *, resume_step: int, tensorboard: bool) -> MetricsLog:
        """``metrics.jsonl`` continued from ``resume_step`` (see :class:`~dae_gen.run_dir.MetricsLog`)."""
        return MetricsLog(self.path, resume_step=resume_step, tensorboard=tensorboard)


def run_directory(checkpoint: Path) -> Path:
    """The run folder of a checkpoint file: ``<run>/checkpoints/ckpt_N.pt`` → ``<run>``; elsewhere its folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def new_output_dir(parent: Path, stamp: str | None = None) -> Path:
    """``parent/<date_time>`` not yet taken (``..._2``, ``..._3`` when several commands start in one second)."""
    stamp = stamp or time.strftime("%Y-%m-%d_%H-%M-%S")
    path, k = Path(parent) / stamp, 1
    while path.exists():
        k += 1
        path = Path(parent) / f"{stamp}_{k}"
    return path


__all__ = ["BEST_FILE", "CONFIG_FILE", "HISTORY_FILE", "LOG_FILE", "METRICS_FILE", "POSTHOC_EMA_DIR", "ResumePlan",
           "RunDir", "new_output_dir", "run_directory"]
