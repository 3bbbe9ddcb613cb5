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
recorded by :class:`dae_gen.run_folder.RunDir`: ``config.yaml`` stays the effective config, and
``config_history.jsonl`` gains one line per launch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dae_gen.errors import ConfigError

#: Keys (and subtrees) a relaunch may change: duration, observation, the grid sampler, where and how it computes.
SAFE_KEYS = ("trainer.steps", "trainer.log_every", "trainer.ckpt_every", "trainer.sample_every", "trainer.eval_every",
             "trainer.keep_checkpoints", "trainer.n_samples", "trainer.progress", "trainer.tensorboard",
             "trainer.amp", "trainer.compile", "sampler", "metrics", "device", "threads")
#: Keys computed at launch from the dataset, never taken from a command line.
DERIVED_KEYS = ("data_shape", "data_info")
#: Keys of the command line only (which run to resume), never stored.
LAUNCH_KEYS = ("run",)
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
            "folder (hydra.run.dir=DIR)" + (
                ". To choose the EMA after training, train with trainer.posthoc_ema.snapshot_every=N and sample with "
                "ema_length=L" if any(_under(c.key, ("trainer.ema_decay",)) for c in unsafe) else ""))


__all__ = ["Change", "DERIVED_KEYS", "LAUNCH_KEYS", "SAFE_KEYS", "flatten", "refuse_unsafe", "resumed_config",
           "unflatten"]
