"""The probability-flow ODE solved by an adaptive Runge–Kutta solver (Song et al. 2021, §4.3 and App. D.1;
their ``get_ode_sampler``), over any score.

For the variance-exploding process ``dx/dσ = −σ·∇log p_σ(x)`` (Song et al. Eq. 13; EDM Eq. 4). It is integrated
in ``u = ln σ`` from ln σ_max to ln σ_min, where it reads ``dx/du = −σ²·score(x, σ) = x − D(x; σ)``, so an
adaptive step size is spent evenly across the decades of σ. The solver is ``torchdiffeq.odeint`` (Chen et al.
2018) with ``method`` (default ``dopri5``, the Dormand–Prince RK45 that Song et al. call through scipy) and
tolerances ``rtol``/``atol`` on the whole batch state; with ``denoise`` a final Tweedie step
``x + σ_min²·score(x, σ_min)`` follows. NFE = the solver's function evaluations (+ 1 for the denoising step),
which depends on the tolerances and on the batch: the state is one vector for the solver.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dae_gen.samplers.schedule import sigma_range
from dae_gen.score import Callback, Cond, Score, ScoreModel, Step, protocol_device, sigma_batch


@torch.no_grad()
def probability_flow_ode(score: Score, x: Tensor, *, sigma_max: float, sigma_min: float, rtol: float = 1e-5,
                         atol: float = 1e-5, method: str = "dopri5", denoise: bool = True,
                         callback: Callback = None, cond: Cond | None = None) -> Tensor:
    """Integrate ``dx/d ln σ = −σ²·score(x, σ)`` from ``sigma_max`` to ``sigma_min`` adaptively; x: ``(B, ...)``.

    rtol, atol:  the solver's relative and absolute error tolerances (Song et al.: 1e-5 both).
    method:      a ``torchdiffeq`` adaptive method: ``dopri5``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``, ``dopri8``.
    denoise:     finish with Tweedie's step at σ_min.
    cond:        keyword tensors passed to every ``score(x, sigma, **cond)`` call as they are.
    Each function evaluation calls ``callback`` with ``i`` (= ``nfe``), ``n`` (``None``: unknown in advance),
    ``x`` (the solver's current state), ``sigma`` and ``nfe``.
    """
    from torchdiffeq import odeint

    if not (sigma_min > 0 and sigma_max > sigma_min):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    adaptive = ("dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8")
    if method not in adaptive:
        raise ValueError(f"method must be an adaptive torchdiffeq solver {adaptive}, got {method!r}")
    if x.shape[0] == 0:  # an empty batch only validates the arguments (the CLI does this before training)
        return x
    nfe, extra = 0, dict(cond or {})

    def velocity(u: Tensor, state: Tensor) -> Tensor:  # dx/du at u = ln σ
        nonlocal nfe
        sigma = u.exp().to(state.dtype)
        drift = -sigma.pow(2) * score(state, sigma_batch(sigma, state), **extra)
        nfe += 1
        if callback is not None:
            callback(Step(i=nfe, n=None, x=state, sigma=sigma, extras={"nfe": torch.tensor(nfe)}))
        return drift

    span = torch.tensor([math.log(sigma_max), math.log(sigma_min)], dtype=torch.float64, device=x.device)
    x = odeint(velocity, x, span, rtol=rtol, atol=atol, method=method)[-1]
    if denoise:
        x = x + sigma_min**2 * score(x, sigma_batch(sigma_min, x), **extra)
        nfe += 1
        if callback is not None:
            callback(Step(i=nfe, n=None, x=x, sigma=torch.tensor(sigma_min, dtype=x.dtype, device=x.device),
                          extras={"nfe": torch.tensor(nfe)}))
    return x


def sample_probability_flow_ode(model: ScoreModel, n: int, *, rtol: float = 1e-5, atol: float = 1e-5,
                                method: str = "dopri5", denoise: bool = True, sigma_max: float | None = None,
                                sigma_min: float | None = None, generator: torch.Generator | None = None,
                                callback: Callback = None, cond: Cond | None = None) -> Tensor:
    """Probability-flow ODE samples from N(0, σ_max² I); ``sigma_max``/``sigma_min`` default to the model's σ_1/σ_L.

    The only randomness is the starting point: equal seeds give equal samples (up to the solver's tolerances).
    """
    sigma_max, sigma_min = sigma_range(model, sigma_max, sigma_min, sampler="ode", allow_single_level=False)
    x = sigma_max * torch.randn((n, *model.data_shape), generator=generator, device=protocol_device(model))
    return probability_flow_ode(model.score, x, sigma_max=sigma_max, sigma_min=sigma_min, rtol=rtol, atol=atol,
                                method=method, denoise=denoise, callback=callback, cond=cond)


__all__ = ["probability_flow_ode", "sample_probability_flow_ode"]
