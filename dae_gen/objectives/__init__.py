"""The methods: each owns its networks, returns per-example losses, and exposes the score protocol."""

from dae_gen.objectives.base import Objective
from dae_gen.objectives.dae import DenoisingAutoencoder
from dae_gen.objectives.dde import DDEGenerativeModel, DenoisingDensityEstimator, dde_losses
from dae_gen.objectives.dsm import DenoisingScoreMatching, dsm_losses
from dae_gen.objectives.mdsm import AnnealedDSMEnergy

__all__ = ["AnnealedDSMEnergy", "DDEGenerativeModel", "DenoisingAutoencoder", "DenoisingDensityEstimator",
           "DenoisingScoreMatching", "Objective", "dde_losses", "dsm_losses"]
