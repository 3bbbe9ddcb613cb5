"""The project's own error types. The CLIs print any of them as one line (no traceback; ``HYDRA_FULL_ERROR=1``
shows it); anything else is a bug and keeps its traceback.

Each message says what was expected, what was found, and what to do (STYLE.md, principle 8).
"""

from __future__ import annotations


class DaeGenError(Exception):
    """Base class: a problem with the user's input or files, not a bug in dae_gen."""


class ConfigError(DaeGenError, ValueError):
    """A configuration value or override is invalid (names the key and what is allowed)."""


class DataError(DaeGenError, RuntimeError):
    """A dataset is missing, corrupt or not what the config asked for."""


class CheckpointError(DaeGenError, RuntimeError):
    """A checkpoint is missing, corrupt, hostile or from another program."""


class TrainingDiverged(DaeGenError, RuntimeError):
    """The loss or the gradients became NaN/inf; the checkpoints on disk are left untouched."""


class SamplingDiverged(DaeGenError, RuntimeError):
    """Some drawn samples are NaN/inf (a sampler's step size too large for the model); nothing was written."""


__all__ = ["CheckpointError", "ConfigError", "DaeGenError", "DataError", "SamplingDiverged", "TrainingDiverged"]
