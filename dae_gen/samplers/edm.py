"""EDM's samplers (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithms 1 and 2) over any score: the denoiser is read off the score as ``D(x; σ) = x + σ²·score(x, σ)``.

The probability-flow ODE of the variance-exploding process is ``dx/dσ = (x − D(x; σ))/σ = −σ·score(x, σ)``
(EDM Eq. 4 with s(t) = 1, σ(t) = t). Heun's method on the ρ-schedule σ_0 > … > σ_{N−1} > σ_N = 0
(``dae_gen.noise.karras_sigmas``) takes ``N`` steps with ``2N − 1`` score evaluations (the last step, to σ = 0,
is a plain Euler step: Tweedie's ``x + σ_{N−1}²·score``). The stochastic sampler first raises σ_i to
``σ̂ = (1 + γ)σ_i`` by adding fresh noise ("churn"), then takes the same Heun step from σ̂ to σ_{i+1}.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dae_gen.noise import karras_sigmas
from dae_gen.samplers.schedule import sigma_range
from dae_gen.score import Callback, Cond, Score, ScoreModel, Step, protocol_device, sigma_batch


@torch.no_grad()
def edm_sampler(score: Score, x: Tensor, sigmas: Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = math.inf, s_noise: float = 1.0, generator: torch.Generator | None = None,
                callback: Callback = None, cond: Cond | None = None) -> Tensor:
    """EDM Algorithm 2 (stochastic Heun); with ``s_churn = 0`` exactly Algorithm 1 (deterministic Heun).

    x:        the initial state ``(B, ...)``, drawn from N(0, σ_0² I).
    sigmas:   ``(N + 1,)`` descending noise levels ending with 0 (``karras_sigmas``).
    s_churn:  S_churn, total churn: γ_i = min(S_churn/N, √2 − 1) for σ_i in [S_tmin, S_tmax], else 0.
    s_tmin:   S_tmin, smallest σ_i that is churned.
    s_tmax:   S_tmax, largest σ_i that is churned.
    s_noise:  S_noise, the std of the added noise relative to √(σ̂² − σ_i²) (slightly above 1 offsets the
              detail that denoising loses).
    cond:     keyword tensors passed to every ``score(x, sigma, **cond)`` call as they are.
    Each step calls ``callback`` with ``i``, ``n`` (= N), ``x``, ``sigma`` (σ_{i+1}), ``denoised`` (D at σ̂_i) and
    ``nfe`` (score evaluations so far, per example).
    """
    levels = [float(s) for s in torch.as_tensor(sigmas).tolist()]
    n_steps = len(levels) - 1
    if n_steps < 1 or levels[-1] != 0 or any(b > a for a, b in zip(levels[:-1], levels[1:])) or levels[-2] <= 0:
        raise ValueError(f"sigmas must be non-increasing positive levels followed by a final 0, got {levels}")
    for name, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    if x.shape[0] == 0:  # an empty batch only validates the arguments (the CLI does this before training)
        return x
    gamma_max = min(s_churn / n_steps, math.sqrt(2) - 1)
    nfe, extra = 0, dict(cond or {})
    for i in range(n_steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:  # churn: x̂ ~ p_σ̂ from x ~ p_σ by adding noise of variance σ̂² − σ²
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise
        grad = score(x, sigma_batch(sigma_hat, x), **extra)
        denoised = x + sigma_hat**2 * grad  # D(x̂; σ̂)
        slope = -sigma_hat * grad  # dx/dσ at σ̂
        x_next = x + (sigma_next - sigma_hat) * slope  # Euler step
        nfe += 1
        if sigma_next > 0:  # Heun's 2nd-order correction (EDM Alg. 1, lines 7–8)
            slope_next = -sigma_next * score(x_next, sigma_batch(sigma_next, x_next), **extra)
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)
            nfe += 1
        x = x_next
        if callback is not None:
            callback(Step(i=i + 1, n=n_steps, x=x, sigma=torch.tensor(sigma_next, dtype=x.dtype, device=x.device),
                          denoised=denoised, extras={"nfe": torch.tensor(nfe)}))
    return x


def _prior(model: ScoreModel, n: int, sigma_max: float, generator: torch.Generator | None) -> Tensor:
    """``n`` draws of N(0, σ_max² I) in the model's data shape, on its device: the EDM samplers' start."""
    return sigma_max * torch.randn((n, *model.data_shape), generator=generator, device=protocol_device(model))


def sample_heun(model: ScoreModel, n: int, *, n_steps: int = 18, rho: float = 7.0, sigma_min: float | None = None,
                sigma_max: float | None = None, generator: torch.Generator | None = None,
                callback: Callback = None, cond: Cond | None = None) -> Tensor:
    """EDM's deterministic Heun sampler (Algorithm 1) from N(0, σ_max² I); NFE = 2·n_steps − 1 per image.

    ``sigma_max`` / ``sigma_min`` default to the model's σ_1 / σ_L (EDM's own models: 80 / 0.002).
    """
    sigma_max, sigma_min = sigma_range(model, sigma_max, sigma_min, sampler="heun", allow_single_level=False)
    sigmas = karras_sigmas(n_steps, sigma_min, sigma_max, rho)
    return edm_sampler(model.score, _prior(model, n, sigma_max, generator), sigmas, generator=generator,
                       callback=callback, cond=cond)


def sample_edm_stochastic(model: ScoreModel, n: int, *, n_steps: int = 40, rho: float = 7.0,
                          sigma_min: float | None = None, sigma_max: float | None = None, s_churn: float = 40.0,
                          s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.003,
                          generator: torch.Generator | None = None, callback: Callback = None,
                          cond: Cond | None = None) -> Tensor:
    """EDM's stochastic sampler (Algorithm 2) from N(0, σ_max² I); NFE = 2·n_steps − 1 per image.

    On a one-level model (σ_max = σ_min = its σ) every step churns at that σ and steps back to it, a Langevin-like
    chain, and the last step denoises.
    """
    sigma_max, sigma_min = sigma_range(model, sigma_max, sigma_min, sampler="edm_stochastic",
                                       allow_single_level=True)
    sigmas = karras_sigmas(n_steps, sigma_min, sigma_max, rho)
    return edm_sampler(model.score, _prior(model, n, sigma_max, generator), sigmas, s_churn=s_churn, s_tmin=s_tmin,
                       s_tmax=s_tmax, s_noise=s_noise, generator=generator, callback=callback,
                       cond=cond)


__all__ = ["edm_sampler", "sample_edm_stochastic", "sample_heun"]
