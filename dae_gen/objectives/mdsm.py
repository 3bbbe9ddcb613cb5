"""Multiscale (annealed) denoising score matching energy model, MDSM (Li, Chen & Sommer 2019).

A scalar energy ``E(x)`` with no σ input. Slot i of each batch gets its own σ_i (deterministically spaced
across the batch, as in the reference code), and the per-example loss is
``‖(x − x̃)/(σ σ₀²) + ∇E(x̃)/σ‖²`` with a fixed reference scale σ₀. For one σ the minimiser is
``−∇E(x) = (σ²/σ₀²)∇log p_σ(x)``: the energy of the smoothed data at temperature T = σ²/σ₀², so at
σ = σ₀ the energy itself is ``−log p_σ₀`` (up to a constant) and sampling anneals T down to 1.

Scale, as in zengyi-li/MDSM ``train.py``: the squared residual is *summed* over pixels and averaged over
the batch, with no ½ and no normalisation; the reference logs ``σ₀⁴ · loss`` as the "normalized loss"
(σ₀⁴ = 1e-4), so the raw value here is 1e4 times the logged one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dae_gen.noise import batch_spaced_sigmas, geometric_sigmas
from dae_gen.objectives.base import Objective
from dae_gen.score import expand_sigma, input_gradient


class AnnealedDSMEnergy(Objective):
    """Energy model trained by multiscale DSM; score ``−(σ₀²/σ²)∇E(x)``.

    net:              partial building the energy, called as ``net(data_shape=...)``; forward ``x -> (B,)``.
    sigma_low:        smallest training σ (CIFAR-10 0.05, Fashion-MNIST 0.1).
    sigma_high:       largest training σ (CIFAR-10 1.2, Fashion-MNIST 3.0).
    spacing:          how σ is spread across the batch slots: ``"linear"`` (CIFAR-10) or ``"log"`` (Fashion-MNIST).
    sigma0:           reference scale σ₀ (0.1 in the paper); the temperature-annealed sampler ends at σ₀.
    n_sample_levels:  geometric σ levels from ``sigma_high`` to ``sigma_low`` for the NCSN annealed sampler.
    """

    needs_double_backward = True

    def __init__(self, *, net: Callable[..., nn.Module], data_shape: Sequence[int], sigma_low: float,
                 sigma_high: float, spacing: str = "log", sigma0: float = 0.1, n_sample_levels: int = 10):
        super().__init__(data_shape=data_shape)
        if spacing not in ("linear", "log"):
            raise ValueError(f"spacing must be 'linear' or 'log', got {spacing!r}")
        if not sigma0 > 0:
            raise ValueError(f"sigma0 must be positive, got {sigma0}")
        self.net = net(data_shape=self.data_shape)
        self.sigma_low, self.sigma_high = float(sigma_low), float(sigma_high)
        self.spacing = spacing
        self.sigma0 = float(sigma0)
        self.register_buffer("sigma_levels", geometric_sigmas(self.sigma_high, self.sigma_low, n_sample_levels))

    @property
    def reference_sigma(self) -> float:
        """σ₀: at T = 1 the energy is ``−log p_σ₀`` (the temperature sampler reads it there)."""
        return self.sigma0

    def energy(self, x: Tensor) -> Tensor:
        """``E(x)`` of shape ``(B,)``."""
        return self.net(x)

    def losses(self, phase: str, x: Tensor, **cond: Tensor) -> Tensor:
        self.refuse_conditioning(cond)
        sigma = batch_spaced_sigmas(x.shape[0], self.sigma_low, self.sigma_high, spacing=self.spacing,
                                    device=x.device).to(x.dtype)  # (B,)
        s = expand_sigma(sigma, x)
        x_noisy = x + s * torch.randn_like(x)
        _, grad = input_gradient(self.net, x_noisy, create_graph=True)  # ∇E(x̃), (B, ...)
        residual = (x - x_noisy) / (s * self.sigma0**2) + grad / s
        return residual.pow(2).reshape(x.shape[0], -1).sum(dim=1)  # (B,)

    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        """``∇log p_σ(x) ≈ −(σ₀²/σ²)∇E(x)`` (the optimum of the MDSM loss read at noise level σ)."""
        self.refuse_conditioning(cond)
        _, grad = input_gradient(self.net, x, create_graph=False)
        return -(self.sigma0**2 / expand_sigma(sigma, x).pow(2)) * grad
