"""The methods: each owns its networks, returns per-example losses, and exposes the score protocol.

The NCSN, DAE and EDM models are one ``DenoisingObjective`` with different preconditionings, training σ
distributions and weightings; ``DenoisingScoreMatching`` and ``DenoisingAutoencoder`` are its named presets.
"""

from dae_gen.objectives.base import Objective
from dae_gen.objectives.dae import DenoisingAutoencoder
from dae_gen.objectives.dde import DDEGenerativeModel, DenoisingDensityEstimator, dde_losses
from dae_gen.objectives.denoising import DenoisingObjective, dsm_losses
from dae_gen.objectives.dsm import DenoisingScoreMatching
from dae_gen.objectives.mdsm import AnnealedDSMEnergy
from dae_gen.objectives.preconditioning import (
    EDMPreconditioning,
    NCSNPreconditioning,
    Preconditioning,
    ResidualPreconditioning,
)

__all__ = ["AnnealedDSMEnergy", "DDEGenerativeModel", "DenoisingAutoencoder", "DenoisingDensityEstimator",
           "DenoisingObjective", "DenoisingScoreMatching", "EDMPreconditioning", "NCSNPreconditioning", "Objective",
           "Preconditioning", "ResidualPreconditioning", "dde_losses", "dsm_losses"]
