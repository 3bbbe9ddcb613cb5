"""The project's own error types. The CLIs print any of them as one line (no traceback; ``HYDRA_FULL_ERROR=1``
shows it); anything else is a bug and keeps its traceback.

Each message says what was expected, what was found, and what to do.
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
    """The loss or the gradients stayed NaN/inf for too many steps; the checkpoints on disk hold finite weights."""


class TrainingInterrupted(DaeGenError, RuntimeError):
    """A stop signal (SIGTERM, Ctrl-C, SLURM's pre-timeout signal) ended training after a checkpoint was written;
    the same command resumes. ``exit_code`` is 128 + the signal's number, as a shell reports a signal."""

    def __init__(self, message: str, signal_number: int = 15):
        super().__init__(message, signal_number)
        self.signal_number = int(signal_number)
        self.exit_code = 128 + int(signal_number)

    def __str__(self) -> str:
        return str(self.args[0])


class SamplingDiverged(DaeGenError, RuntimeError):
    """Some drawn samples are NaN/inf (a sampler's step size too large for the model); nothing was written."""


__all__ = ["CheckpointError", "ConfigError", "DaeGenError", "DataError", "SamplingDiverged", "TrainingDiverged",
           "TrainingInterrupted"]
