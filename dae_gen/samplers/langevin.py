"""Annealed Langevin dynamics (NCSN, Song & Ermon 2019, Algorithm 1) over any score callable."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dae_gen.noise import validate_sigmas
from dae_gen.score import Callback, Cond, Score, ScoreModel, Step, protocol_device, sigma_batch


def denoise_step(score: Score, x: Tensor, sigma: float | Tensor, *, cond: Cond | None = None) -> Tensor:
    """Tweedie's formula: ``E[x₀ | x] = x + σ² ∇log p_σ(x)`` (the final step of NCSNv2, Appendix C)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return x + sigma**2 * score(x, sigma_batch(sigma, x), **(cond or {}))


@torch.inference_mode()  # no graph, no version counters: only the score may need grad (it enables it itself)
def annealed_langevin(score: Score, x: Tensor, sigmas: Tensor, *, n_steps_each: int, step_lr: float,
                      denoise: bool = True, generator: torch.Generator | None = None,
                      callback: Callback = None, noise: Callable[[Tensor], Tensor] | None = None,
                      cond: Cond | None = None) -> Tensor:
    """Annealed Langevin dynamics, NCSN Algorithm 1.

    At level i, ``α_i = step_lr · σ_i² / σ_L²`` and ``n_steps_each`` times ``x ← x + ½α_i s(x, σ_i) + √α_i ξ``;
    then, with ``denoise``, one Tweedie step ``x ← x + σ_L² s(x, σ_L)``.
    x: the initial state ``(B, ...)``; sigmas: ``(L,)`` strictly decreasing.
    noise: ``x -> ξ``, each step's standard normal draw (default ``torch.randn`` from ``generator``); NCSNv2's
           interpolation passes noise shared across chains (``dae_gen.samplers.tasks.interpolation_noise``).
    cond:  keyword tensors passed to every ``score(x, sigma, **cond)`` call as they are (e.g. ``class_labels``).
    """
    sigmas = validate_sigmas(sigmas).to(x.device)
    if int(n_steps_each) < 1:
        raise ValueError(f"n_steps_each must be at least 1, got {n_steps_each}")
    if not step_lr > 0:
        raise ValueError(f"step_lr must be positive, got {step_lr}")
    if x.shape[0] == 0:  # an empty batch only validates the arguments (the CLI does this before training)
        return x
    total, i, extra = len(sigmas) * n_steps_each, 0, dict(cond or {})
    for sigma in sigmas:
        alpha = step_lr * (sigma / sigmas[-1]) ** 2
        sigma_b = sigma_batch(sigma, x)
        for _ in range(n_steps_each):
            grad = score(x, sigma_b, **extra)
            xi = noise(x) if noise is not None else torch.randn(x.shape, generator=generator, device=x.device,
                                                                 dtype=x.dtype)
            x = x + 0.5 * alpha * grad + alpha.sqrt() * xi
            i += 1
            if callback is not None:
                # tensors, not floats: a host sync per step would stall a GPU chain
                callback(Step(i=i, n=total, x=x, sigma=sigma, extras={"grad": grad}))
    if denoise:
        x = denoise_step(score, x, sigmas[-1], cond=cond)
    return x


def initial_state(shape: tuple[int, ...], *, init: str, init_low: float, init_high: float, sigma_max: float,
                  device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Starting point of a chain: ``uniform`` on [low, high] (NCSN), or ``gaussian`` N(0, σ_1² I) (the prior)."""
    if init == "uniform":
        return init_low + (init_high - init_low) * torch.rand(shape, generator=generator, device=device)
    if init == "gaussian":
        return sigma_max * torch.randn(shape, generator=generator, device=device)
    raise ValueError(f"init must be 'uniform' or 'gaussian', got {init!r}")


def sample_annealed_langevin(model: ScoreModel, n: int, *, n_steps_each: int = 100, step_lr: float = 2e-5,
                             denoise: bool = True, init: str = "uniform", init_low: float = 0.0, init_high: float = 1.0,
                             sigmas: Tensor | None = None, generator: torch.Generator | None = None,
                             callback: Callback = None, cond: Cond | None = None) -> Tensor:
    """Draw ``n`` samples from any model with the score protocol by annealed Langevin over its σ levels."""
    sigmas = model.sigmas if sigmas is None else torch.as_tensor(sigmas)
    device = protocol_device(model)
    x = initial_state((n, *model.data_shape), init=init, init_low=init_low, init_high=init_high,
                      sigma_max=float(sigmas[0]), device=device, generator=generator)
    return annealed_langevin(model.score, x, sigmas.to(device), n_steps_each=n_steps_each, step_lr=step_lr,
                             denoise=denoise, generator=generator, callback=callback, cond=cond)
