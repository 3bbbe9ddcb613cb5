"""Few-step samplers over any score: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", Algorithm 2) and Euler ancestral (the ancestral Euler sampler of
k-diffusion, Crowson 2022), both on the denoiser ``D(x; σ) = x + σ²·score(x, σ)``.

DPM-Solver++ writes the probability-flow ODE ``dx/dσ = (x − D(x; σ))/σ`` in λ = −log σ, where its linear part is
solved exactly: ``x(σ') = (σ'/σ)·x(σ) + σ'·∫_λ^λ' e^u D du``. The first-order step (D held constant over the
step) is ``x' = (σ'/σ)·x + (1 − σ'/σ)·D_i`` (DDIM); the multistep second-order step replaces D_i by the linear
extrapolation in λ through the previous step's denoised value, ``(1 + 1/(2r))·D_i − 1/(2r)·D_{i−1}`` with
``r = h_{i−1}/h_i`` the ratio of consecutive step sizes ``h = λ_{i+1} − λ_i``. One score evaluation per step
(``N`` steps, ``N`` calls; the first step is first order, the last, to σ = 0, returns D).

Euler ancestral splits each step σ_i → σ_{i+1} of the reverse diffusion into a deterministic Euler step of the ODE
down to ``σ_down`` and fresh noise of std ``σ_up``, with ``σ_up² + σ_down² = σ_{i+1}²``
and ``σ_up = min(σ_{i+1}, η·σ_{i+1}·√(σ_i² − σ_{i+1}²)/σ_i)``: the variance DDPM's ancestral step adds at η = 1,
none (plain Euler on the ODE) at η = 0. One score evaluation per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dae_gen.noise import karras_sigmas
from dae_gen.samplers.edm import _prior
from dae_gen.samplers.schedule import sigma_range
from dae_gen.score import Callback, Cond, Score, ScoreModel, Step, sigma_batch


def _levels(sigmas: Tensor) -> list[float]:
    """The descending levels as floats: positive and non-increasing, optionally ending with a final 0."""
    levels = [float(s) for s in torch.as_tensor(sigmas).tolist()]
    positive = levels[:-1] if levels and levels[-1] == 0 else levels
    if len(levels) < 2 or not positive or any(s <= 0 for s in positive) \
            or any(b > a for a, b in zip(levels[:-1], levels[1:])):
        raise ValueError(f"sigmas must be at least two non-increasing levels, positive except a final 0, got "
                         f"{levels}")
    return levels


def _denoise(score: Score, x: Tensor, sigma: float, cond: Cond | None) -> Tensor:
    """``D(x; σ) = x + σ²·score(x, σ)`` (Tweedie), with the conditioning passed through untouched."""
    return x + sigma**2 * score(x, sigma_batch(sigma, x), **(cond or {}))


def _report(callback: Callback, *, i: int, n: int, x: Tensor, sigma: float, denoised: Tensor, nfe: int) -> None:
    if callback is not None:
        callback(Step(i=i, n=n, x=x, sigma=torch.tensor(sigma, dtype=x.dtype, device=x.device), denoised=denoised,
                      extras={"nfe": torch.tensor(nfe)}))


@torch.no_grad()
def dpm_solver_2m(score: Score, x: Tensor, sigmas: Tensor, *, cond: Cond | None = None,
                  callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M): the multistep second-order data-prediction solver of the probability-flow ODE.

    x:        the initial state ``(B, ...)`` at σ_0 (from N(0, σ_0² I) for sampling).
    sigmas:   ``(N + 1,)`` descending levels; a final 0 makes the last step return the denoised D(x; σ_{N−1}).
    cond:     keyword tensors passed to every ``score(x, sigma, **cond)`` call as they are.
    Exactly ``N`` score evaluations. Each step calls ``callback`` with a ``Step`` (``sigma`` = σ_{i+1},
    ``denoised`` = D(x; σ_i), ``extras["nfe"]`` the evaluations so far per example).
    """
    levels = _levels(sigmas)
    n_steps = len(levels) - 1
    if x.shape[0] == 0:
        return x
    previous, h_previous = None, None
    for i in range(n_steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = _denoise(score, x, sigma, cond)
        if sigma_next == 0:  # λ = ∞: the exact solution with D constant is D itself
            x = denoised
        else:
            h = math.log(sigma / sigma_next)  # λ_{i+1} − λ_i
            estimate = denoised
            if previous is not None and h > 0 and h_previous > 0:  # 2nd order: D linear in λ through D_{i−1}
                half_inverse_r = h / (2 * h_previous)
                estimate = (1 + half_inverse_r) * denoised - half_inverse_r * previous
            ratio = sigma_next / sigma  # e^{−h}
            x = ratio * x + (1 - ratio) * estimate
            previous, h_previous = denoised, h
        _report(callback, i=i + 1, n=n_steps, x=x, sigma=sigma_next, denoised=denoised, nfe=i + 1)
    return x


def ancestral_step(sigma: float, sigma_next: float, *, eta: float = 1.0) -> tuple[float, float]:
    """``(σ_down, σ_up)`` of one ancestral step σ → σ': σ_up = min(σ', η·σ'·√(σ² − σ'²)/σ), σ_down² = σ'² − σ_up²."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(sigma**2 - sigma_next**2, 0.0)) / sigma)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@torch.no_grad()
def euler_ancestral(score: Score, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                    generator: torch.Generator | None = None, cond: Cond | None = None,
                    callback: Callback = None) -> Tensor:
    """Euler ancestral: an Euler step of the ODE from σ_i to σ_down, then noise of std ``s_noise``·σ_up.

    x:        the initial state ``(B, ...)`` at σ_0.
    sigmas:   ``(N + 1,)`` descending levels; a final 0 makes the last step return D(x; σ_{N−1}).
    eta:      η, the fraction of the ancestral noise (1: DDPM's ancestral variance; 0: deterministic Euler).
    s_noise:  the std of the added noise relative to σ_up.
    cond:     keyword tensors passed to every ``score(x, sigma, **cond)`` call as they are.
    Exactly ``N`` score evaluations; each step calls ``callback`` with a ``Step`` as ``dpm_solver_2m`` does.
    """
    levels = _levels(sigmas)
    for name, value in (("eta", eta), ("s_noise", s_noise)):
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    n_steps = len(levels) - 1
    if x.shape[0] == 0:
        return x
    for i in range(n_steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = _denoise(score, x, sigma, cond)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta=eta)
        x = x + (sigma_down - sigma) * (x - denoised) / sigma  # Euler: dx/dσ = (x − D)/σ
        if sigma_up > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + s_noise * sigma_up * noise
        _report(callback, i=i + 1, n=n_steps, x=x, sigma=sigma_next, denoised=denoised, nfe=i + 1)
    return x


def sample_dpm_solver_2m(model: ScoreModel, n: int, *, n_steps: int = 15, rho: float = 7.0,
                         sigma_min: float | None = None, sigma_max: float | None = None,
                         generator: torch.Generator | None = None, callback: Callback = None,
                         cond: Cond | None = None) -> Tensor:
    """DPM-Solver++(2M) on the ρ-schedule from N(0, σ_max² I); NFE = n_steps per image.

    ``sigma_max`` / ``sigma_min`` default to the model's σ_1 / σ_L.
    """
    sigma_max, sigma_min = sigma_range(model, sigma_max, sigma_min, sampler="dpm_solver_2m",
                                       allow_single_level=False)
    sigmas = karras_sigmas(n_steps, sigma_min, sigma_max, rho)
    return dpm_solver_2m(model.score, _prior(model, n, sigma_max, generator), sigmas, cond=cond, callback=callback)


def sample_euler_ancestral(model: ScoreModel, n: int, *, n_steps: int = 35, rho: float = 7.0,
                           sigma_min: float | None = None, sigma_max: float | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, generator: torch.Generator | None = None,
                           callback: Callback = None, cond: Cond | None = None) -> Tensor:
    """Euler ancestral on the ρ-schedule from N(0, σ_max² I); NFE = n_steps per image.

    ``sigma_max`` / ``sigma_min`` default to the model's σ_1 / σ_L.
    """
    sigma_max, sigma_min = sigma_range(model, sigma_max, sigma_min, sampler="euler_ancestral",
                                       allow_single_level=False)
    sigmas = karras_sigmas(n_steps, sigma_min, sigma_max, rho)
    return euler_ancestral(model.score, _prior(model, n, sigma_max, generator), sigmas, eta=eta, s_noise=s_noise,
                           generator=generator, cond=cond, callback=callback)


__all__ = ["ancestral_step", "dpm_solver_2m", "euler_ancestral", "sample_dpm_solver_2m", "sample_euler_ancestral"]
