"""Preconditioning: how a raw network ``F`` becomes a denoiser and a score (Karras et al. 2022, "Elucidating
the Design Space of Diffusion-Based Generative Models" (EDM), §5 and Table 1).

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)),        score(x, σ) = (D(x; σ) − x)/σ²

Every noise-conditional denoising model in dae_gen is one choice of the four coefficients; the network returns
a raw ``F`` and the objective (``dae_gen.objectives.denoising``) owns all scaling:

| parametrisation                         | c_skip          | c_out              | c_in            | c_noise  |
|-----------------------------------------|-----------------|--------------------|-----------------|----------|
| EDM (σ_d: the data's std)               | σ_d²/(σ² + σ_d²) | σσ_d/√(σ² + σ_d²)  | 1/√(σ² + σ_d²)  | ¼ ln σ   |
| NCSNv2, score = F/σ (Technique 3)       | 1               | σ                  | 1               | ln σ     |
| NCSN, score = F                         | 1               | σ²                 | 1               | ln σ     |
| residual DAE r = x̃ + σF (scaled)        | 1               | σ                  | 1               | ln σ     |
| residual DAE r = x̃ + F                  | 1               | 1                  | 1               | ln σ     |
| direct DAE r = F                        | 0               | 1                  | 1               | ln σ     |

(NCSNv2's net and the σ-scaled residual DAE are the same parametrisation under two names.) The noise label
``ln σ`` is what dae_gen's nets embedded internally before preconditioning was made explicit, so NCSN and DAE
checkpoints keep their meaning. Coefficients are computed in float64: ``c_skip − 1`` (which the score needs) is
then exact enough even at σ ≈ 0.002.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Coefficients(NamedTuple):
    """The four preconditioning coefficients for a batch of noise levels, each ``(B,)`` float64."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def _as_float64(sigma: Tensor) -> Tensor:
    return torch.as_tensor(sigma).to(torch.float64)


class Preconditioning:
    """A parametrisation of ``D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)``; subclasses define ``coefficients``."""

    def coefficients(self, sigma: Tensor) -> Coefficients:
        """The coefficients at noise levels ``sigma`` of shape ``(B,)``, in float64."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class EDMPreconditioning(Preconditioning):
    """EDM's preconditioning (Karras et al. 2022, Table 1 and App. B.6): unit-variance network input and training
    target at every σ, and ``c_skip`` that lets ``F`` predict whichever of signal and noise is smaller.

    sigma_data:  σ_d, the standard deviation of the data (0.5 for images in [−1, 1]).
    """

    def __init__(self, *, sigma_data: float = 0.5):
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: Tensor) -> Coefficients:
        sigma = _as_float64(sigma)
        sd2, total = self.sigma_data**2, sigma.pow(2) + self.sigma_data**2  # σ_d², σ² + σ_d²
        return Coefficients(c_skip=sd2 / total, c_out=sigma * self.sigma_data / total.sqrt(), c_in=total.rsqrt(),
                            c_noise=sigma.log() / 4)


class NCSNPreconditioning(Preconditioning):
    """A score network: ``score = F/σ`` (NCSNv2, Song & Ermon 2020, Technique 3) or ``score = F`` (NCSN, 2019).

    Since ``D = x + σ²·score``: ``c_skip = 1``, ``c_out = σ`` (or σ²), ``c_in = 1``, ``c_noise = ln σ``.

    divide_by_sigma:  True: the net's output is divided by σ (NCSNv2); False: the net is the score itself.
    """

    def __init__(self, *, divide_by_sigma: bool = True):
        self.divide_by_sigma = bool(divide_by_sigma)

    def coefficients(self, sigma: Tensor) -> Coefficients:
        sigma = _as_float64(sigma)
        return Coefficients(c_skip=torch.ones_like(sigma), c_out=sigma if self.divide_by_sigma else sigma.pow(2),
                            c_in=torch.ones_like(sigma), c_noise=sigma.log())


class ResidualPreconditioning(Preconditioning):
    """A denoising autoencoder ``r(x̃, σ)`` (Vincent 2011; Alain & Bengio 2014): ``r = x̃ + c(σ)·F`` or ``r = F``.

    The optimal residual ``r − x̃ = σ²∇log p_σ`` has size ≈ σ, so ``scale_residual`` (``c = σ``) keeps ``F`` of
    order one at every level; with the λ = 1/σ² weighting the loss is then ``‖F + ε‖²`` (noise prediction).

    residual:        True: ``c_skip = 1`` (r = x̃ + c·F); False: ``c_skip = 0`` (r = F).
    scale_residual:  ``c_out = σ`` (True) or 1 (False); ignored without ``residual``.
    """

    def __init__(self, *, residual: bool = True, scale_residual: bool = True):
        self.residual = bool(residual)
        self.scale_residual = bool(scale_residual)

    def coefficients(self, sigma: Tensor) -> Coefficients:
        sigma = _as_float64(sigma)
        ones = torch.ones_like(sigma)
        if not self.residual:
            return Coefficients(c_skip=torch.zeros_like(sigma), c_out=ones, c_in=ones, c_noise=sigma.log())
        return Coefficients(c_skip=ones, c_out=sigma if self.scale_residual else ones, c_in=ones,
                            c_noise=sigma.log())


#: Loss weightings λ(σ) on ``‖D(x + σε; σ) − x‖²``, from σ and the preconditioning's coefficients.
WEIGHTINGS = {
    # EDM Eq. 8 / Table 1: λ = 1/c_out², unit effective weight on F's target; with EDM's c_out this is
    # (σ² + σ_d²)/(σ·σ_d)².
    "edm": lambda sigma, c: c.c_out.pow(-2),
    # NCSN (Song & Ermon 2019, Eq. 2 with λ(σ) = σ²): ½σ²‖s(x̃) + (x̃ − x)/σ²‖² = ‖D − x‖²/(2σ²).
    "ncsn": lambda sigma, c: 0.5 / sigma.pow(2),
    # The DAE's λ = 1/σ²: twice NCSN's, balanced across levels.
    "sigma2": lambda sigma, c: sigma.pow(-2),
    # The plain reconstruction error ‖r − x‖².
    "none": lambda sigma, c: torch.ones_like(sigma),
}


def loss_weight(weighting: str, sigma: Tensor, coefficients: Coefficients) -> Tensor:
    """λ(σ) of shape ``(B,)`` in float64 for one of ``WEIGHTINGS``."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {sorted(WEIGHTINGS)}, got {weighting!r}")
    return WEIGHTINGS[weighting](_as_float64(sigma), coefficients)


__all__ = ["Coefficients", "EDMPreconditioning", "NCSNPreconditioning", "Preconditioning", "ResidualPreconditioning",
           "WEIGHTINGS", "loss_weight"]
