"""Temperature-annealed Langevin dynamics (Li, Chen & Sommer 2019, §4; zengyi-li/MDSM ``sample.py``),
and one-pass generator sampling.

The energy is read from any score model at the reference scale σ₀: ``∇E(x) := −score(x, σ₀)``. For the MDSM
energy model this is exactly ``∇E`` (its score is ``−(σ₀²/σ²)∇E``); for a DAE / NCSN / DDE model it is
``−∇log p_σ₀``. Each step is ``x ← x − ½ε²∇E(x) + √T·ε·ξ``, sampling ``exp(−E/T)``, with T held at
``temp_hot``, decayed exponentially to 1, then lowered linearly to 0; a final jump ``x ← x − σ₀²∇E(x)``
denoises (Tweedie at σ₀).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from dae_gen.errors import ConfigError
from dae_gen.score import Callback, Cond, GenerativeModel, Score, ScoreModel, Step, protocol_device


def temperature_schedule(*, n_steps_hot: int = 500, temp_hot: float = 100.0, n_steps_anneal: int = 2000,
                         n_steps_cool: int = 200) -> Tensor:
    """Per-step temperatures, shape ``(n_steps_hot + n_steps_anneal + n_steps_cool,)`` float64 (MDSM ``sample.py``).

    ``temp_hot`` for ``n_steps_hot`` steps; then ``T_k = temp_hot · exp(−k log(temp_hot) / n_steps_anneal)``
    for k = 0 … n_steps_anneal − 1 (reaching ≈ 1); then ``linspace(1, 0, n_steps_cool)`` (ending at 0).
    """
    for name, n in (("n_steps_hot", n_steps_hot), ("n_steps_anneal", n_steps_anneal), ("n_steps_cool", n_steps_cool)):
        if int(n) < 0:
            raise ValueError(f"{name} must be non-negative, got {n}")
    if not temp_hot >= 1:
        raise ValueError(f"temp_hot must be at least 1 (the schedule anneals down to T = 1), got {temp_hot}")
    hot = torch.full((int(n_steps_hot),), float(temp_hot), dtype=torch.float64)
    k = torch.arange(int(n_steps_anneal), dtype=torch.float64)
    anneal = temp_hot * torch.exp(-k * math.log(temp_hot) / max(int(n_steps_anneal), 1))
    cool = torch.linspace(1.0, 0.0, int(n_steps_cool), dtype=torch.float64)
    return torch.cat([hot, anneal, cool])


@torch.inference_mode()  # no graph, no version counters: only the score may need grad (it enables it itself)
def temperature_annealed_langevin(score: Score, x: Tensor, *, sigma0: float, n_steps_hot: int = 500,
                                  temp_hot: float = 100.0, n_steps_anneal: int = 2000, n_steps_cool: int = 200,
                                  step_size: float = 0.02, denoise: bool = True,
                                  generator: torch.Generator | None = None, callback: Callback = None,
                                  noise: Callable[[Tensor], Tensor] | None = None,
                                  cond: Cond | None = None) -> Tensor:
    """Temperature-annealed Langevin on ``E`` with ``∇E(x) = −score(x, σ₀)``; x: initial state ``(B, ...)``.

    sigma0:     reference scale σ₀ at which the score is read (and the final denoising jump is made).
    step_size:  ε; each step ``x ← x − ½ε²∇E(x) + √T·ε·ξ`` (0.02 in the paper).
    denoise:    finish with ``x ← x − σ₀²∇E(x)``.
    noise:      ``x -> ξ``, each step's standard normal draw (default ``torch.randn`` from ``generator``).
    cond:       keyword tensors passed to every ``score(x, sigma, **cond)`` call as they are.
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    if not sigma0 > 0:
        raise ValueError(f"sigma0 must be positive, got {sigma0}")
    temps = temperature_schedule(n_steps_hot=n_steps_hot, temp_hot=temp_hot, n_steps_anneal=n_steps_anneal,
                                 n_steps_cool=n_steps_cool).tolist()
    if x.shape[0] == 0:  # an empty batch only validates the arguments (the CLI does this before training)
        return x
    extra = dict(cond or {})
    sigma_b = torch.full((x.shape[0],), float(sigma0), dtype=x.dtype, device=x.device)
    for i, temp in enumerate(temps):
        grad_energy = -score(x, sigma_b, **extra)
        xi = noise(x) if noise is not None else torch.randn(x.shape, generator=generator, device=x.device,
                                                             dtype=x.dtype)
        x = x - 0.5 * step_size**2 * grad_energy + math.sqrt(temp) * step_size * xi
        if callback is not None:
            # tensors, not floats: a host sync per step would stall a GPU chain
            callback(Step(i=i + 1, n=len(temps), x=x, extras={"temperature": torch.tensor(temp, dtype=torch.float64), "grad": grad_energy}))
    if denoise:
        x = x + sigma0**2 * score(x, sigma_b, **extra)
    return x


def sample_temperature_langevin(model: ScoreModel, n: int, *, n_steps_hot: int = 500, temp_hot: float = 100.0,
                                n_steps_anneal: int = 2000, n_steps_cool: int = 200, step_size: float = 0.02,
                                denoise: bool = True, init_mean: float = 0.5, init_std: float = 1.0,
                                sigma0: float | None = None, generator: torch.Generator | None = None,
                                callback: Callback = None, cond: Cond | None = None) -> Tensor:
    """Draw ``n`` samples from any score model by temperature-annealed Langevin from ``init_mean + init_std·N(0, I)``.

    ``sigma0`` defaults to the model's ``reference_sigma`` (σ₀ of an energy model, σ of a DDE, σ_L otherwise).
    """
    sigma0 = float(model.reference_sigma) if sigma0 is None else float(sigma0)
    device = protocol_device(model)
    x = init_mean + init_std * torch.randn((n, *model.data_shape), generator=generator, device=device)
    return temperature_annealed_langevin(model.score, x, sigma0=sigma0, n_steps_hot=n_steps_hot, temp_hot=temp_hot,
                                         n_steps_anneal=n_steps_anneal, n_steps_cool=n_steps_cool,
                                         step_size=step_size, denoise=denoise, generator=generator, callback=callback,
                                         cond=cond)


def sample_generator(model: GenerativeModel, n: int, *, generator: torch.Generator | None = None,
                     callback: Callback = None, cond: Cond | None = None) -> Tensor:
    """One-pass samples ``model.generate(n)`` from a model with a generator network (DDE generative model)."""
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"sampler=generator needs a model with a generator network; {type(model).__name__} has "
                        "none: use a Langevin sampler")
    if cond:
        raise ConfigError(f"sampler=generator draws unconditionally in one pass; it takes no conditioning, got "
                          f"{sorted(cond)}")
    x = model.generate(n, generator=generator)
    if callback is not None:
        callback(Step(i=1, n=1, x=x))
    return x
