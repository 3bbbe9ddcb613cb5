"""Denoising autoencoder as a score model (Vincent 2011; Alain & Bengio 2014, Theorem 1), a preset of the one
denoising objective.

``r`` minimising ``E‖r(x + σε) − x‖²`` is ``r*(x̃) = E[x | x̃] = x̃ + σ²∇log p_σ(x̃)`` (Tweedie's formula), so
``(r(x, σ) − x)/σ²`` is the score of the smoothed data. With one σ this is the classic single-level DAE;
with a schedule σ_1 > … > σ_L (one level drawn per example) it is a noise-conditional DAE that annealed
Langevin can sample from, exactly like NCSN's score network.

Balancing the levels. (1) Weighting: since ``r − x = σ²(s + ε/σ)`` with ``s = (r − x̃)/σ²``, the weight
``λ(σ) = 1/σ²`` on the squared error gives ``‖r − x‖²/σ² = σ²‖s(x̃) + (x̃ − x)/σ²‖²``, NCSN's λ(σ) = σ² loss
(without its ½), whose terms are all O(1) across levels; unweighted, large σ dominate by σ_1²/σ_L².
(2) Output scale: the optimal residual ``r − x̃ = σ²∇log p_σ`` has size ≈ σ, so with ``scale_residual`` the
net's output is multiplied by σ, ``r = x̃ + σ·F(x̃, ln σ)``, and the weighted loss becomes ``‖F + ε‖²``
(the noise-prediction form, the same parametrisation as NCSNv2's output divided by σ). Without it an MLP on a
2-D mixture trained over σ ∈ [0.01, 3] reaches only cos ≈ 0.6 between its score and the exact one at σ = 0.1
(0.99 with it). With one σ both choices are the same model up to a constant factor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from dae_gen.noise import UniformLevels, as_sigma_schedule
from dae_gen.objectives.denoising import DenoisingObjective
from dae_gen.objectives.dsm import without_legacy_flag
from dae_gen.objectives.preconditioning import ResidualPreconditioning

DAE_WEIGHTINGS = ("sigma2", "none")


class DenoisingAutoencoder(DenoisingObjective):
    """DAE ``r(x̃, σ)``; per-example loss ``λ(σ)‖r(x + σε, σ) − x‖²``, score ``(r(x, σ) − x)/σ²``.

    net:             partial building the raw network, called as ``net(data_shape=...)``.
    sigmas:          noise levels σ_1 > … > σ_L (one σ = single-level DAE); training draws one per example.
    residual:        ``r = x̃ + c(σ)·F`` (True) or ``r = F`` (False).
    scale_residual:  ``c(σ) = σ`` (True) or ``c(σ) = 1`` (False); ignored without ``residual``.
    weighting:       ``"sigma2"``: λ(σ) = 1/σ² (equals NCSN's σ²‖s − target‖²); ``"none"``: λ = 1.
    """

    def __init__(self, *, net: Callable[..., nn.Module], data_shape: Sequence[int],
                 sigmas: float | Sequence[float] | Tensor, residual: bool = True, scale_residual: bool = True,
                 weighting: str = "sigma2"):
        if weighting not in DAE_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {DAE_WEIGHTINGS}, got {weighting!r}")
        net, divide = without_legacy_flag(net, "divide_by_sigma")
        if divide:
            raise ValueError("the DAE's network output is scaled by the objective (scale_residual), not divided by "
                             "sigma in the net; drop divide_by_sigma from the net config (older configs set it false)")
        super().__init__(net=net, data_shape=data_shape, sigmas=sigmas, training_sigma=UniformLevels(),
                         preconditioning=ResidualPreconditioning(residual=residual, scale_residual=scale_residual),
                         weighting=weighting)

    @property
    def residual(self) -> bool:
        return self.preconditioning.residual

    @property
    def scale_residual(self) -> bool:
        return self.preconditioning.scale_residual


__all__ = ["DenoisingAutoencoder", "as_sigma_schedule"]
