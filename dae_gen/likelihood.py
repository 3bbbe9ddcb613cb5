"""Log-likelihoods and bits/dim of data under the probability-flow ODE of any score model (Song et al. 2021,
"Score-Based Generative Modeling through SDEs", §4.3 and App. D.2; FFJORD, Grathwohl et al. 2019).

For the variance-exploding process the probability-flow ODE is ``dx/dσ = −σ·score(x, σ)`` (Song et al. Eq. 13;
EDM Eq. 4). It carries a point ``x`` at σ_min to ``x_T`` at σ_max, and the instantaneous change of variables
(Chen et al. 2018, Thm. 1) gives

    log p_{σ_min}(x) = log N(x_T; 0, σ_max² I) + ∫_{σ_min}^{σ_max} ∇·(−σ·score)(x_σ, σ) dσ.

It is integrated in ``u = ln σ`` (``dx/du = −σ²·score``, as ``dae_gen.samplers.ode`` does) by ``torchdiffeq.odeint``
jointly with the divergence integral (the augmented state ``(x, Δ log p)``). Whatever the score, the result is the
exact log-density of a normalised model — the prior pushed back through the model's own flow — up to the solver's
tolerance; it is the data's ``p_{σ_min}`` only as far as the score is ``∇log p_σ`` at every σ in the range and the
prior is ``p_{σ_max}``.

The divergence is exact (one backward pass per dimension: 2-D toys, small images) or Hutchinson's estimate
``εᵀ(∂f/∂x)ε`` (Hutchinson 1989; FFJORD) with the probe ε fixed along the path, Rademacher or Gaussian. K probes
are K independent solves of copies of the batch (one state), which gives every example a standard error over probes.

Bits/dim of 8-bit data ``x ∈ {0, …, 255}^D`` (Theis et al. 2016; score_sde's convention): dequantise uniformly,
``y = lo + (x + u)(hi − lo)/256`` with ``u ~ U[0, 1)^D`` — exactly what ``ImageTensorData(dequantize=True)`` feeds a
model with range ``[lo, hi)`` — and report ``−log p_y(y)/(D ln 2) + log₂(256/(hi − lo))``: the last term is the
Jacobian of ``[0, 256)^D → [lo, hi)^D``, so the number is bits/dim of ``x + u`` on ``[0, 256)^D``, an upper bound
on the discrete model's ``−log₂ P(x)/D``. Offsets: 8 for data in [0, 1) (``scale: unit``), 7 for [−1, 1)
(``scale: symmetric``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from dae_gen.score import differentiable_input_gradients, model_device, sigma_batch

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
ADAPTIVE_METHODS = ("dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8")


class ODELikelihood(NamedTuple):
    """Result of ``ode_log_likelihood`` / ``model_log_likelihood`` for N examples."""

    log_likelihood: Tensor  # (N,) float64: log p_{σ_min}(x), the mean over the K probes
    probe_stderr: Tensor    # (N,) float64: its standard error over probes (0: exact divergence; NaN: one probe)
    prior_log_prob: Tensor  # (N,) float64: log N(x_T; 0, σ_max² I), the mean over probes
    nfe: float              # solver function evaluations per solve (mean over batches)


def _probes(shape: tuple[int, ...], probe: str, *, generator: torch.Generator | None, device, dtype) -> Tensor:
    """Hutchinson probes with E[εεᵀ] = I: Rademacher ±1 or standard Gaussian."""
    if probe == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    signs = torch.randint(0, 2, shape, generator=generator, device=device)
    return (2 * signs - 1).to(dtype)


def _exact_divergence(drift: Tensor, x: Tensor) -> Tensor:
    """``Σ_i ∂drift_i/∂x_i`` per example, by one backward pass per dimension: ``(B,)``."""
    flat = drift.reshape(drift.shape[0], -1)  # (B, D)
    divergence = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
    for i in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        divergence = divergence + row.reshape(flat.shape[0], -1)[:, i]
    return divergence


def _check_settings(*, sigma_min: float, sigma_max: float, divergence: str, probe: str, n_probes: int, rtol: float,
                    atol: float, method: str) -> None:
    if not (sigma_min > 0 and sigma_max > sigma_min):
        raise ValueError(f"the likelihood ODE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}; a one-level model (DDE, single-sigma DAE) needs both given")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    if int(n_probes) < 1:
        raise ValueError(f"n_probes must be at least 1, got {n_probes}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"method must be an adaptive torchdiffeq solver {ADAPTIVE_METHODS}, got {method!r}")


def ode_log_likelihood(score: Callable[..., Tensor], x: Tensor, *, sigma_min: float, sigma_max: float,
                       divergence: str = "hutchinson", probe: str = "rademacher", n_probes: int = 1,
                       rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                       generator: torch.Generator | None = None, cond: Mapping[str, Tensor] | None = None
                       ) -> ODELikelihood:
    """``log p_{σ_min}(x)`` of one batch ``x (B, ...)`` under the probability-flow ODE of ``score`` (see the module).

    score:       ``score(x, sigma, **cond) -> ∇log p_σ(x)``, differentiable in ``x`` (energy and density models are,
                 inside ``differentiable_input_gradients``, which this function enters).
    divergence:  ``"exact"`` (D backward passes per evaluation) or ``"hutchinson"`` (one per probe).
    probe:       Hutchinson probes, ``"rademacher"`` (lower variance) or ``"gaussian"``.
    n_probes:    K independent probes per example, solved together as K copies of the batch.
    rtol, atol:  the solver's tolerances on the joint state (Song et al.: 1e-5 both).
    method:      an adaptive ``torchdiffeq`` solver.
    generator:   draws the probes; it must live on ``x``'s device.
    cond:        conditioning passed through to every ``score`` call (tensors with a leading batch dimension).
    """
    from torchdiffeq import odeint

    _check_settings(sigma_min=sigma_min, sigma_max=sigma_max, divergence=divergence, probe=probe,
                    n_probes=n_probes, rtol=rtol, atol=atol, method=method)
    n, dim = x.shape[0], math.prod(x.shape[1:])
    k = 1 if divergence == "exact" else int(n_probes)
    repeat = (k, *([1] * (x.ndim - 1)))
    state0 = x.detach().repeat(repeat)  # (K·B, ...): copy j of example b at row j·B + b
    cond_k = {name: value.repeat(k, *([1] * (value.ndim - 1))) for name, value in (cond or {}).items()}
    eps = None if divergence == "exact" else _probes(tuple(state0.shape), probe, generator=generator,
                                                      device=x.device, dtype=x.dtype)
    nfe = 0

    def augmented(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:  # d(x, Δ log p)/du, u = ln σ
        nonlocal nfe
        nfe += 1
        sigma = u.exp().to(x.dtype)
        with torch.inference_mode(False), torch.enable_grad(), differentiable_input_gradients():
            point = state[0].detach().requires_grad_(True)
            drift = -sigma.pow(2) * score(point, sigma_batch(sigma, point), **cond_k)  # dx/du, (K·B, ...)
            if not drift.requires_grad:
                raise ValueError("the likelihood ODE needs a score differentiable in x, but this score returned a "
                                 "tensor without a graph; compute it with autograd-friendly operations")
            if eps is None:
                div = _exact_divergence(drift, point)
            else:
                (vjp,) = torch.autograd.grad(drift, point, eps)  # εᵀ ∂f/∂x
                div = (vjp * eps).reshape(point.shape[0], -1).sum(1)
        return drift.detach(), div.detach()

    span = torch.tensor([math.log(sigma_min), math.log(sigma_max)], dtype=torch.float64, device=x.device)
    delta0 = torch.zeros(state0.shape[0], dtype=x.dtype, device=x.device)
    x_path, delta_path = odeint(augmented, (state0, delta0), span, rtol=rtol, atol=atol, method=method)
    x_end, delta = x_path[-1].double(), delta_path[-1].double()
    prior = (-0.5 * dim * math.log(2 * math.pi * sigma_max**2)
             - x_end.reshape(x_end.shape[0], -1).pow(2).sum(1) / (2 * sigma_max**2))  # (K·B,)
    per_probe = (prior + delta).reshape(k, n)
    if k > 1:
        stderr = per_probe.std(dim=0) / math.sqrt(k)
    else:
        stderr = torch.full((n,), 0.0 if eps is None else math.nan, dtype=torch.float64, device=x.device)
    return ODELikelihood(per_probe.mean(0), stderr, prior.reshape(k, n).mean(0), float(nfe))


def likelihood_sigma_range(model, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """``(σ_min, σ_max)``: the given values, else the model's ``(σ_L, σ_1)``."""
    levels = model.sigmas
    sigma_min = float(levels[-1]) if sigma_min is None else float(sigma_min)
    sigma_max = float(levels[0]) if sigma_max is None else float(sigma_max)
    if not (sigma_min > 0 and sigma_max > sigma_min):
        raise ValueError(f"the likelihood ODE integrates from sigma_min to sigma_max > sigma_min, got sigma_min="
                         f"{sigma_min:g}, sigma_max={sigma_max:g} for this {type(model).__name__}; a one-level model "
                         "(DDE, single-sigma DAE) has a score at one sigma only: pass sigma_min and sigma_max to "
                         "integrate with the score it has")
    return sigma_min, sigma_max


def model_log_likelihood(model, x: Tensor, *, sigma_min: float | None = None, sigma_max: float | None = None,
                         divergence: str = "hutchinson", probe: str = "rademacher", n_probes: int = 1,
                         rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", batch_size: int = 64,
                         seed: int = 0, progress: bool = False, cond: Mapping[str, Tensor] | None = None
                         ) -> ODELikelihood:
    """``ode_log_likelihood`` of a score model on ``x (N, ...)`` (moved to the model's device) in batches.

    sigma_min, sigma_max:  the ODE's range; default the model's ``(σ_L, σ_1)``.
    seed:                  batch k draws its probes from a generator seeded ``seed + k``.
    progress:              a tqdm bar over examples, showing the NFE of the last solve.
    Other arguments: see ``ode_log_likelihood``; ``cond`` is split into batches with ``x``.
    """
    from tqdm.auto import tqdm

    sigma_min, sigma_max = likelihood_sigma_range(model, sigma_min, sigma_max)
    if int(batch_size) < 1 or x.shape[0] < 1:
        raise ValueError(f"need batch_size >= 1 and at least one example, got {batch_size} and {x.shape[0]}")
    device = model_device(model)
    parts, nfes = [], []
    with tqdm(total=x.shape[0], desc="likelihood ODE", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for k, start in enumerate(range(0, x.shape[0], int(batch_size))):
            rows = slice(start, start + int(batch_size))
            batch_cond = None if cond is None else {name: v[rows].to(device) for name, v in cond.items()}
            result = ode_log_likelihood(model.score, x[rows].to(device), sigma_min=sigma_min, sigma_max=sigma_max,
                                        divergence=divergence, probe=probe, n_probes=n_probes, rtol=rtol, atol=atol,
                                        method=method, generator=torch.Generator(device=device).manual_seed(seed + k),
                                        cond=batch_cond)
            parts.append(result)
            nfes.append(result.nfe)
            bar.set_postfix(nfe=int(result.nfe))
            bar.update(result.log_likelihood.shape[0])
    return ODELikelihood(*(torch.cat([getattr(p, f).cpu() for p in parts]) for f in ODELikelihood._fields[:3]),
                         sum(nfes) / len(nfes))


# -- bits/dim of 8-bit data -------------------------------------------------------------------------------
def dequantization_offset(data_range: tuple[float, float]) -> float:
    """``log₂(256/(hi − lo))``: bits/dim added to ``−log p_y/(D ln 2)`` for data on ``[0, 256)^D`` (8 on [0, 1),
    7 on [−1, 1))."""
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range}")
    return math.log2(256.0 / (hi - lo))


def dequantize(images: Tensor, *, data_range: tuple[float, float], generator: torch.Generator | None = None) -> Tensor:
    """uint8 ``(N, ...)`` → ``lo + (x + u)(hi − lo)/256``, ``u ~ U[0, 1)``, float32 (as ``ImageTensorData`` does)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"dequantize: expected uint8 pixels 0..255, got {images.dtype}")
    lo, hi = (float(v) for v in data_range)
    u = torch.rand(images.shape, generator=generator, device=images.device)
    return lo + (images.float() + u) * ((hi - lo) / 256.0)


def convention(data_range: tuple[float, float], sigma_min: float | None = None) -> str:
    """The bits/dim convention in words, for every output that reports bits/dim."""
    lo, hi = (float(v) for v in data_range)
    text = (f"bits/dim of 8-bit data on [0, 256)^D: uniform dequantisation y = {lo:g} + (x + u)*{hi - lo:g}/256, "
            f"x in 0..255, u ~ U[0,1); bpd = -log p(y)/(D ln 2) + log2(256/{hi - lo:g}) = ... + "
            f"{dequantization_offset(data_range):g}")
    return text + ("" if sigma_min is None else f"; p = the model's p_sigma at sigma_min = {sigma_min:g}")


@dataclass
class BitsPerDim:
    """Bits/dim of N examples, averaged over dequantisation draws (and probes), with standard errors."""

    bits_per_dim: float      # mean over examples
    stderr: float            # standard error of that mean over examples (probe and dequantisation noise included)
    probe_stderr: float      # the part of it due to the Hutchinson probes alone (0: exact; NaN: one probe)
    per_example: Tensor      # (N,) float64 bits/dim of each example
    n: int
    n_dequantizations: int
    offset: float            # log₂(256/(hi − lo))
    convention: str
    nfe: float | None = None  # solver function evaluations per solve, where an ODE gave the log-likelihoods

    def as_dict(self) -> dict:
        return {"bpd": self.bits_per_dim, "bpd_stderr": self.stderr, "bpd_probe_stderr": self.probe_stderr,
                "n": self.n, "n_dequantizations": self.n_dequantizations, "bpd_offset": self.offset,
                "bpd_convention": self.convention, "nfe": self.nfe}


def dequantized_bits_per_dim(log_likelihood_fn: Callable[[Tensor], Tensor | ODELikelihood], images: Tensor, *,
                             data_range: tuple[float, float], n_dequantizations: int = 1,
                             generator: torch.Generator | None = None, sigma_min: float | None = None) -> BitsPerDim:
    """Bits/dim of uint8 ``images (N, ...)`` under a continuous log-density on ``[lo, hi)^D`` (see the module).

    log_likelihood_fn:  ``y (N, ...) -> log p(y) (N,)``, or an ``ODELikelihood`` (its probe errors are carried).
    n_dequantizations:  independent draws of u per image; each image's bits/dim is their mean.
    generator:          draws u (a CPU generator: ``images`` are dequantised on their device, normally the CPU).
    sigma_min:          named in the convention string when the density is a model's ``p_{σ_min}``.
    """
    if int(n_dequantizations) < 1:
        raise ValueError(f"n_dequantizations must be at least 1, got {n_dequantizations}")
    n, dim = images.shape[0], math.prod(images.shape[1:])
    offset = dequantization_offset(data_range)
    draws, probe_var, nfes = [], torch.zeros(n, dtype=torch.float64), []
    for _ in range(int(n_dequantizations)):
        result = log_likelihood_fn(dequantize(images, data_range=data_range, generator=generator))
        if isinstance(result, ODELikelihood):
            probe_var = probe_var + result.probe_stderr.double().cpu().pow(2)
            nfes.append(result.nfe)
            result = result.log_likelihood
        draws.append(result.double().cpu().reshape(n))
    log_p = torch.stack(draws).mean(0)                            # (N,)
    per_example = -log_p / (dim * math.log(2)) + offset           # (N,)
    stderr = float(per_example.std() / math.sqrt(n)) if n > 1 else math.nan
    probe_var = probe_var / int(n_dequantizations) ** 2           # variance of each example's mean over draws
    probe_stderr = float(probe_var.sum().sqrt() / (n * dim * math.log(2)))
    return BitsPerDim(float(per_example.mean()), stderr, probe_stderr, per_example, n, int(n_dequantizations), offset,
                      convention(data_range, sigma_min), sum(nfes) / len(nfes) if nfes else None)


def model_bits_per_dim(model, images: Tensor, *, data_range: tuple[float, float], n_dequantizations: int = 1,
                       seed: int = 0, sigma_min: float | None = None, sigma_max: float | None = None,
                       **ode_settings) -> BitsPerDim:
    """Bits/dim of uint8 ``images`` under a score model's probability-flow ODE: ``dequantized_bits_per_dim`` of
    ``model_log_likelihood``. ``ode_settings``: ``divergence``, ``probe``, ``n_probes``, ``rtol``, ``atol``,
    ``method``, ``batch_size``, ``progress``, ``cond``. Dequantisation draw j uses seed ``seed + j``·10⁶."""
    sigma_min, sigma_max = likelihood_sigma_range(model, sigma_min, sigma_max)
    draw = iter(range(int(n_dequantizations)))

    def log_likelihood(y: Tensor) -> ODELikelihood:
        return model_log_likelihood(model, y, sigma_min=sigma_min, sigma_max=sigma_max,
                                    seed=seed + 1_000_000 * next(draw), **ode_settings)

    return dequantized_bits_per_dim(log_likelihood, images, data_range=data_range,
                                    n_dequantizations=n_dequantizations,
                                    generator=torch.Generator().manual_seed(seed), sigma_min=sigma_min)


__all__ = ["BitsPerDim", "ODELikelihood", "convention", "dequantization_offset", "dequantize",
           "dequantized_bits_per_dim", "likelihood_sigma_range", "model_bits_per_dim", "model_log_likelihood",
           "ode_log_likelihood"]
