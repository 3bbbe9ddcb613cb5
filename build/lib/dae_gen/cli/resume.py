"""A run directory is the source of truth: relaunching on it resumes the config it stores.

A command line can change only what leaves the trained model's meaning intact. What was trained (dataset,
model and method settings, shapes, optimiser, learning-rate schedule, batch size, EMA, clipping, seed) is
fixed; changing it mid-run would make the folder describe a run that never happened. What is safe to change:

- how long: ``trainer.steps`` (never below the run's step);
- what is observed and kept: ``trainer.log_every``, ``ckpt_every``, ``sample_every``, ``eval_every``,
  ``keep_checkpoints``, ``n_samples`` (grid size), ``progress``, ``tensorboard``, the ``metrics`` monitor;
- the grid sampler: everything under ``sampler`` (it draws pictures; training never calls it);
- how the arithmetic is carried out: ``device``, ``threads``, ``trainer.amp``, ``trainer.compile``.

Everything else is refused, all differing keys in one message, before anything is written. Applied changes are
recorded: ``config.yaml`` stays the effective config, and ``config_history.jsonl`` gains one line per launch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dae_gen.checkpoint import load_checkpoint, resumable_checkpoint
from dae_gen.errors import ConfigError

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "config_history.jsonl"
#: Keys (and subtrees) a relaunch may change: duration, observation, the grid sampler, where and how it computes.
SAFE_KEYS = ("trainer.steps", "trainer.log_every", "trainer.ckpt_every", "trainer.sample_every", "trainer.eval_every",
             "trainer.keep_checkpoints", "trainer.n_samples", "trainer.progress", "trainer.tensorboard",
             "trainer.amp", "trainer.compile", "sampler", "metrics", "device", "threads")
#: Keys computed at launch from the dataset, never taken from a command line.
DERIVED_KEYS = ("data_shape", "data_info")
#: Keys of the command line only (which run to resume), never stored.
LAUNCH_KEYS = ("run",)
#: What a run folder may hold before its first launch wrote config.yaml (a lock, Hydra's leftovers).
_PRE_RUN_ENTRIES = {".lock", ".hydra", "train.log"}
_ABSENT = object()


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` → ``{"a.b": 1, "c": {}}`` (lists and empty mappings are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


@dataclass(frozen=True)
class Change:
    """One config key a launch changes: its stored value and its new one (``_ABSENT`` when missing)."""

    key: str
    old: Any
    new: Any

    @property
    def safe(self) -> bool:
        return _under(self.key, SAFE_KEYS)

    def __str__(self) -> str:
        def show(value: Any) -> str:
            text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
            return text if len(text) <= 60 else text[:57] + "..."

        return f"{self.key}: {show(self.old)} -> {show(self.new)}"

    def as_json(self) -> list:
        return [None if self.old is _ABSENT else self.old, None if self.new is _ABSENT else self.new]


def resumed_config(stored: Mapping, requested: Mapping, touched: Iterable[str] | None
                   ) -> tuple[dict[str, Any], list[Change]]:
    """The config a relaunch runs with, and what it changes in the stored one.

    stored:     the run's config (``config.yaml``).
    requested:  the config composed from this launch's command line.
    touched:    the keys (subtrees) the command line set; ``None``: compare every key of ``requested``.
    """
    old = {k: v for k, v in flatten(stored).items() if not _under(k, DERIVED_KEYS + LAUNCH_KEYS)}
    new_all = {k: v for k, v in flatten(requested).items() if not _under(k, DERIVED_KEYS + LAUNCH_KEYS)}
    if touched is None:
        touched = {k.split(".")[0] for k in list(old) + list(new_all)}
    touched = [t for t in touched if not _under(t, DERIVED_KEYS + LAUNCH_KEYS)]
    merged = {k: v for k, v in flatten(stored).items() if not _under(k, touched)}
    merged.update({k: v for k, v in new_all.items() if _under(k, touched)})
    keys = sorted({k for k in list(old) + list(new_all) if _under(k, touched)})
    changes = [Change(k, old.get(k, _ABSENT), new_all.get(k, _ABSENT)) for k in keys
               if old.get(k, _ABSENT) != new_all.get(k, _ABSENT)]
    return unflatten(merged), changes


def refuse_unsafe(changes: list[Change], run_dir: Path) -> None:
    """One ConfigError listing every change that would alter what the run trained (nothing is written)."""
    unsafe = [c for c in changes if not c.safe]
    if unsafe:
        raise ConfigError(
            f"{run_dir} holds a run trained with other settings; refusing to change {', '.join(map(str, unsafe))}. "
            "Relaunch without these overrides to resume it as stored (a relaunch may change only trainer.steps, "
            "the log/ckpt/sample/eval periods, sampler, metrics, device and threads), or train a new run in another "
            "folder (hydra.run.dir=DIR)")


def stored_config(run_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The run's stored config (``config.yaml``, else its newest checkpoint's) and its newest readable checkpoint.

    ``(None, None)`` for a folder that holds no run yet; a ConfigError for a folder that holds other files.
    """
    checkpoint = resumable_checkpoint(run_dir)  # newer unreadable ones: the trainer sets them aside, with a warning
    config_path = run_dir / CONFIG_FILE
    if config_path.is_file():
        try:
            config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
        except Exception as err:
            raise ConfigError(f"{config_path} is not a readable YAML config ({err}); restore it, or train in "
                              "another folder") from err
        return config, checkpoint
    if checkpoint is not None:
        return dict(load_checkpoint(checkpoint)["config"]), checkpoint
    others = sorted(p.name for p in run_dir.iterdir() if p.name not in _PRE_RUN_ENTRIES) if run_dir.is_dir() else []
    if others:
        raise ConfigError(f"{run_dir} is not empty ({', '.join(others[:5])}{' ...' if len(others) > 5 else ''}) and "
                          f"holds no dae_gen run (no {CONFIG_FILE}, no checkpoints/): train in a new or empty folder")
    return None, None


def write_config(run_dir: Path, config: Mapping) -> Path:
    """``config.yaml``, written atomically (a killed launch leaves the old one or the new one, never half)."""
    path = run_dir / CONFIG_FILE
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    OmegaConf.save(OmegaConf.create(dict(config)), tmp)
    os.replace(tmp, path)
    return path


def record_launch(run_dir: Path, *, command: str, step: int, changes: list[Change]) -> Path:
    """Append one line to ``config_history.jsonl``: when, where, the command line, the step it starts from and
    each changed key as ``[old, new]``."""
    from dae_gen import __version__

    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "host": socket.gethostname(), "command": command,
             "start_step": int(step), "launch": "resume" if step else "new",
             "changed": {c.key: c.as_json() for c in changes}, "dae_gen": __version__}
    path = run_dir / HISTORY_FILE
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, default=str) + "\n")
    return path


__all__ = ["CONFIG_FILE", "Change", "HISTORY_FILE", "SAFE_KEYS", "flatten", "record_launch", "refuse_unsafe",
           "resumed_config", "stored_config", "unflatten", "write_config"]
