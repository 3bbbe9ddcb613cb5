"""dae_gen: score-based generative modelling built on denoising autoencoders.

The public Python API (no Hydra needed)::

    from dae_gen import load_run
    run = load_run("outputs/my_run")                      # a run directory or a checkpoint file
    x = run.sample(64, sampler="temperature_langevin", n_steps_hot=50)
    run.save_grid(x, "grid.png")

Subpackages: ``data``, ``nets``, ``objectives`` (the methods), ``samplers``, ``metrics``; modules ``score`` (the
protocol every model satisfies), ``noise``, ``trainer``, ``run``, ``viz``, ``density``, ``ais``, ``threads`` (the CPU
threads rule of every CLI), ``benchmark`` (timing, as ``dae-gen-bench`` does it), ``precision`` (bf16 autocast for
training and sampling where the hardware computes in bf16).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dae_gen")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

from dae_gen import data, metrics, nets, noise, objectives, samplers, score, viz  # noqa: E402
from dae_gen.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DaeGenError,
    DataError,
    SamplingDiverged,
    TrainingDiverged,
)
from dae_gen.score import ScoreModel  # noqa: E402

#: Imported on first use, so that the layers below (``score``, ``samplers``, ``metrics``) import without the run
#: API and its config machinery (OmegaConf, Hydra).
_LAZY = {"Run": "dae_gen.run", "load_run": "dae_gen.run", "sampler_names": "dae_gen.run", "Trainer": "dae_gen.trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dae_gen' has no attribute {name!r}")

__all__ = ["CheckpointError", "ConfigError", "DaeGenError", "DataError", "Run", "SamplingDiverged", "ScoreModel",
           "Trainer", "TrainingDiverged", "__version__", "data", "load_run", "metrics", "nets", "noise", "objectives",
           "sampler_names", "samplers", "score", "viz"]
