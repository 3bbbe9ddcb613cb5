"""Denoising density estimators and the DDE generative model (Bigdeli et al., "Learning Generative Models
using Denoising Density Estimators").

A scalar network ``f(x)`` whose input gradient is a DAE: ``r(x̃) = x̃ + σ²∇f(x̃)``, trained with the per-example
loss ``½‖x̃ + σ²∇f(x̃) − x‖²`` (summed over dimensions, as ``F.mse_loss(..., reduction="sum") / 2`` in
logchan/dde). Its optimum is ``∇f = ∇log p_σ``, so ``f = log p_σ + const``: an unnormalised log-density of
the data smoothed by σ (normalise it with ``dae_gen.density``).

The generative model trains ``G(z)`` to minimise ``KL(q_σ ‖ p_σ)`` between the smoothed generator and data
laws: ``f_p`` is a DDE of the data, ``f_q`` a DDE of the generator's current samples, and the generator loss
``f_q(G(z) + η) − f_p(G(z) + η)``, η ~ N(0, σ²I), has the KL gradient ``E[(∇log q_σ − ∇log p_σ) ∂G/∂θ]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dae_gen.objectives.base import Objective
from dae_gen.score import input_gradient


def dde_losses(f: Callable[[Tensor], Tensor], x: Tensor, sigma: float) -> Tensor:
    """Per-example DDE loss ``½‖x̃ + σ²∇f(x̃) − x‖²``, ``x̃ = x + σε``, summed over dimensions. x: ``(B, ...)``."""
    x_noisy = (x + sigma * torch.randn_like(x)).detach()
    _, grad = input_gradient(f, x_noisy, create_graph=True)  # ∇f(x̃), (B, ...)
    return 0.5 * (x_noisy + sigma**2 * grad - x).pow(2).reshape(x.shape[0], -1).sum(dim=1)


def _check_sigma(sigma: float) -> float:
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return float(sigma)


class DenoisingDensityEstimator(Objective):
    """DDE ``f(x)``: ``log_density(x) = f(x) = log p_σ(x) + const``; ``score(x, ·) = ∇f(x)``.

    net:    partial building the scalar network, called as ``net(data_shape=...)``; forward ``x -> (B,)``.
    sigma:  the one noise level σ of the estimator (toy 0.2, MNIST 0.5, CelebA 32 0.6 in the paper).

    The DDE models a single σ, so ``score`` ignores its ``sigma`` argument and always returns ``∇log p_σ``
    at the trained σ; ``sigmas`` is the one-level schedule ``[σ]``.
    """

    needs_double_backward = True

    def __init__(self, *, net: Callable[..., nn.Module], data_shape: Sequence[int], sigma: float):
        super().__init__(data_shape=data_shape)
        self.sigma = _check_sigma(sigma)
        self.net = net(data_shape=self.data_shape)
        self.register_buffer("sigma_levels", torch.tensor([self.sigma]))

    def log_density(self, x: Tensor) -> Tensor:
        """Unnormalised ``log p_σ(x)``, shape ``(B,)``."""
        return self.net(x)

    def losses(self, phase: str, x: Tensor, **cond: Tensor) -> Tensor:
        self.refuse_conditioning(cond)
        return dde_losses(self.net, x, self.sigma)

    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        """``∇f(x) ≈ ∇log p_σ(x)`` at the trained σ (the ``sigma`` argument is ignored)."""
        self.refuse_conditioning(cond)
        return input_gradient(self.net, x, create_graph=False)[1]


class DDEGenerativeModel(Objective):
    """Generator ``G`` trained against two DDEs, ``f_p`` (data) and ``f_q`` (generator samples).

    generator:    partial building ``G``, called as ``net(data_shape=...)`` (plus ``latent_dim=`` when given);
                  forward ``(B, latent_dim) -> (B, *data_shape)``.
    dde:          partial building each scalar DDE network, called as ``net(data_shape=...)``.
    sigma:        the smoothing σ of both DDEs and of the generator loss.
    latent_dim:   dimension of ``z ~ N(0, I)``; default: the generator's ``latent_dim`` attribute.
    n_dde_steps:  k in the phase cycle ``dde_q × k, dde_p × k, generator × 1`` (5 in the paper).
    """

    needs_double_backward = True

    def __init__(self, *, generator: Callable[..., nn.Module], dde: Callable[..., nn.Module],
                 data_shape: Sequence[int], sigma: float, latent_dim: int | None = None, n_dde_steps: int = 5):
        super().__init__(data_shape=data_shape)
        self.sigma = _check_sigma(sigma)
        if int(n_dde_steps) < 1:
            raise ValueError(f"n_dde_steps must be at least 1, got {n_dde_steps}")
        if latent_dim is None:
            self.G = generator(data_shape=self.data_shape)
            if not hasattr(self.G, "latent_dim"):
                raise ValueError(f"{type(self.G).__name__} has no latent_dim attribute; pass latent_dim= to "
                                 "DDEGenerativeModel")
            latent_dim = self.G.latent_dim
        else:
            self.G = generator(data_shape=self.data_shape, latent_dim=int(latent_dim))
        self.latent_dim = int(latent_dim)
        self.f_p = dde(data_shape=self.data_shape)
        self.f_q = dde(data_shape=self.data_shape)
        self.phases = (("dde_q", int(n_dde_steps)), ("dde_p", int(n_dde_steps)), ("generator", 1))
        self.register_buffer("sigma_levels", torch.tensor([self.sigma]))

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        nets = {"dde_q": self.f_q, "dde_p": self.f_p, "generator": self.G}
        if phase not in nets:
            raise KeyError(f"DDEGenerativeModel has no phase {phase!r}; its phases are {self.phases}")
        return list(nets[phase].parameters())

    def _latents(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def losses(self, phase: str, x: Tensor, **cond: Tensor) -> Tensor:
        self.refuse_conditioning(cond)
        if phase == "dde_p":  # data DDE on the data batch
            return dde_losses(self.f_p, x, self.sigma)
        if phase == "dde_q":  # sample DDE on the generator's current samples (no graph through G)
            with torch.no_grad():
                samples = self.G(self._latents(x.shape[0], x.device)).to(x.dtype)  # (B, *data_shape)
            return dde_losses(self.f_q, samples, self.sigma)
        samples = self.G(self._latents(x.shape[0], x.device)).to(x.dtype)
        if phase == "generator":  # KL(q_σ ‖ p_σ) surrogate; only G is stepped
            noisy = samples + self.sigma * torch.randn_like(samples)
            return self.f_q(noisy).to(x.dtype) - self.f_p(noisy).to(x.dtype)  # bf16 under autocast: subtract in fp32
        raise KeyError(f"DDEGenerativeModel has no phase {phase!r}; its phases are {self.phases}")

    @torch.no_grad()
    def generate(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """One pass ``G(z)``, ``z ~ N(0, I)`` drawn with ``generator``: shape ``(n, *data_shape)``."""
        device = next(self.G.parameters()).device
        return self.G(self._latents(n, device, generator))

    def log_density(self, x: Tensor) -> Tensor:
        """The data DDE ``f_p(x) = log p_σ(x) + const``, shape ``(B,)``."""
        return self.f_p(x)

    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        """``∇f_p(x) ≈ ∇log p_σ(x)`` of the data at the trained σ (the ``sigma`` argument is ignored)."""
        self.refuse_conditioning(cond)
        return input_gradient(self.f_p, x, create_graph=False)[1]
