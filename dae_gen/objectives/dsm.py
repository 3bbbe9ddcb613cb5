"""Noise-conditional denoising score matching (NCSN, Song & Ermon 2019, Eq. 5–6).

A network ``s(x̃, σ)`` over a set of noise levels, trained with the per-example loss
``λ(σ) · ½‖s(x̃, σ) + (x̃ − x)/σ²‖²`` and ``λ(σ) = σ²``, which at the optimum gives
``s(x, σ) = ∇ log p_σ(x)`` for every σ in the schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dae_gen.noise import sample_levels, validate_sigmas
from dae_gen.objectives.base import Objective
from dae_gen.score import expand_sigma


def dsm_losses(score_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, *,
               noise: Tensor | None = None) -> Tensor:
    """Per-example NCSN loss ``½ σ² ‖s(x + σε, σ) + ε/σ‖²`` summed over dimensions. Shapes: x (B, ...), σ (B,)."""
    noise = torch.randn_like(x) if noise is None else noise
    s = expand_sigma(sigma, x)
    x_noisy = x + s * noise
    residual = score_fn(x_noisy, sigma) * s + noise  # σ·(s(x̃) + (x̃ − x)/σ²)
    return 0.5 * residual.pow(2).reshape(x.shape[0], -1).sum(dim=1)


class DenoisingScoreMatching(Objective):
    """NCSN / NCSNv2 score model: ``net(x, σ)`` is the score; σ is drawn uniformly from ``sigmas`` per example.

    net:     partial building the network, called as ``net(data_shape=...)``; forward ``(x, σ) -> score``.
    sigmas:  the noise levels σ_1 > … > σ_L (training draws from them; Langevin anneals over them).
    """

    def __init__(self, *, net: Callable[..., nn.Module], data_shape: Sequence[int], sigmas: Sequence[float] | Tensor):
        super().__init__(data_shape=data_shape)
        self.net = net(data_shape=self.data_shape)
        self.register_buffer("sigma_levels", validate_sigmas(torch.as_tensor(sigmas)))

    def losses(self, phase: str, x: Tensor) -> Tensor:
        sigma = sample_levels(x.shape[0], self.sigma_levels)
        return dsm_losses(self.net, x, sigma)

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.net(x, sigma)
