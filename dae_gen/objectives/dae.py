"""Denoising autoencoder as a score model (Vincent 2011; Alain & Bengio 2014, Theorem 1).

``r`` minimising ``E‖r(x + σε) − x‖²`` is ``r*(x̃) = E[x | x̃] = x̃ + σ²∇log p_σ(x̃)`` (DESIGN.md §1), so
``(r(x, σ) − x)/σ²`` is the score of the smoothed data. With one σ this is the classic single-level DAE;
with a schedule σ_1 > … > σ_L (one level drawn per example) it is a noise-conditional DAE that annealed
Langevin can sample from, exactly like NCSN's score network.

Balancing the levels. (1) Weighting: since ``r − x = σ²(s + ε/σ)`` with ``s = (r − x̃)/σ²``, the weight
``λ(σ) = 1/σ²`` on the squared error gives ``‖r − x‖²/σ² = σ²‖s(x̃) + (x̃ − x)/σ²‖²``, NCSN's λ(σ) = σ² loss
(without its ½), whose terms are all O(1) across levels; unweighted, large σ dominate by σ_1²/σ_L².
(2) Output scale: the optimal residual ``r − x̃ = σ²∇log p_σ`` has size ≈ σ, so with ``scale_residual`` the
net's output is multiplied by σ, ``r = x̃ + σ·net(x̃, σ)``, and the weighted loss becomes ``‖net(x̃, σ) + ε‖²``
(the noise-prediction form, like NCSNv2's output divided by σ). Without it an MLP on a 2-D mixture trained
over σ ∈ [0.01, 3] reaches only cos ≈ 0.6 between its score and the exact one at σ = 0.1 (0.99 with it).
With one σ both choices are the same model up to a constant factor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dae_gen.noise import sample_levels, validate_sigmas
from dae_gen.objectives.base import Objective
from dae_gen.score import expand_sigma

WEIGHTINGS = ("sigma2", "none")


def as_sigma_schedule(sigmas: float | Sequence[float] | Tensor) -> Tensor:
    """A σ schedule from a scalar, a (Hydra) list or a tensor, checked by ``validate_sigmas``: shape ``(L,)``."""
    if isinstance(sigmas, Tensor):
        return validate_sigmas(sigmas.detach().reshape(-1))
    if isinstance(sigmas, (int, float)):
        sigmas = [sigmas]
    return validate_sigmas(torch.tensor([float(s) for s in sigmas]))


class DenoisingAutoencoder(Objective):
    """DAE ``r(x̃, σ)``; per-example loss ``λ(σ)‖r(x + σε, σ) − x‖²``, score ``(r(x, σ) − x)/σ²``.

    net:        partial building the network, called as ``net(data_shape=...)``; forward ``(x̃, σ) -> (B, ...)``.
    sigmas:     noise levels σ_1 > … > σ_L (one σ = single-level DAE); training draws one per example.
    residual:   ``r = x̃ + c(σ)·net(x̃, σ)`` (True) or ``r = net(x̃, σ)`` (False).
    scale_residual: ``c(σ) = σ`` (True) or ``c(σ) = 1`` (False); ignored without ``residual``.
    weighting:  ``"sigma2"``: λ(σ) = 1/σ² (equals NCSN's σ²‖s − target‖², balanced across levels);
                ``"none"``: λ = 1, the plain reconstruction error.
    """

    def __init__(self, *, net: Callable[..., nn.Module], data_shape: Sequence[int],
                 sigmas: float | Sequence[float] | Tensor, residual: bool = True, scale_residual: bool = True,
                 weighting: str = "sigma2"):
        super().__init__(data_shape=data_shape)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.net = net(data_shape=self.data_shape)
        self.residual = bool(residual)
        self.scale_residual = bool(scale_residual)
        self.weighting = weighting
        self.register_buffer("sigma_levels", as_sigma_schedule(sigmas))

    def reconstruct(self, x_noisy: Tensor, sigma: Tensor) -> Tensor:
        """``r(x̃, σ)``: the denoised estimate of ``E[x | x̃]``. Shapes: x̃ ``(B, ...)``, σ ``(B,)``."""
        out = self.net(x_noisy, sigma)
        if not self.residual:
            return out
        return x_noisy + expand_sigma(sigma, out) * out if self.scale_residual else x_noisy + out

    def losses(self, phase: str, x: Tensor) -> Tensor:
        sigma = sample_levels(x.shape[0], self.sigma_levels).to(x.dtype)  # (B,)
        s = expand_sigma(sigma, x)
        x_noisy = x + s * torch.randn_like(x)
        error = (self.reconstruct(x_noisy, sigma) - x).pow(2).reshape(x.shape[0], -1).sum(dim=1)  # (B,)
        return error / sigma.pow(2) if self.weighting == "sigma2" else error

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``∇log p_σ(x) ≈ (r(x, σ) − x)/σ²`` (Alain & Bengio 2014)."""
        return (self.reconstruct(x, sigma) - x) / expand_sigma(sigma, x).pow(2)
