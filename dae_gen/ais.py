"""Annealed importance sampling (Neal 2001, "Annealed Importance Sampling") of normalising constants, and the
log-likelihoods of energy models and DDEs (Li, Chen & Sommer, "Annealed Denoising Score Matching", report theirs
by AIS).

AIS runs ``n_chains`` independent chains along the geometric path ``π_β ∝ q^{1−β} f^β`` from a Gaussian
proposal ``q = N(m, s² I)`` (β = 0) to an unnormalised density ``f = exp(log_f)`` (β = 1). With
``0 = β_0 < β_1 < … < β_T = 1``, each chain starts at ``x ~ q`` and for t = 1 … T adds
``(β_t − β_{t−1}) (log f(x) − log q(x))`` to its log weight, then moves ``x`` by Metropolis-adjusted Langevin
(MALA) transitions that leave ``π_{β_t}`` invariant. ``E[w] = Z = ∫ f``, so ``log Ẑ = logmeanexp(log w)``
(in float64). By Jensen ``E[log Ẑ] ≤ log Z``: log Ẑ is a stochastic lower bound, and ``log f(x) − log Ẑ``
a stochastic upper bound on the normalised log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from dae_gen.score import Callback, DensityModel, EnergyModel, Step, input_gradient

LogDensity = Callable[[Tensor], Tensor]
SCHEDULES = ("sigmoid", "geometric", "linear")


# -- the β schedule --------------------------------------------------------------------------------
def ais_betas(n_steps: int, *, schedule: str = "sigmoid", sigmoid_delta: float = 4.0,
              geometric_start: float = 1e-4) -> Tensor:
    """Inverse temperatures ``0 = β_0 < … < β_T = 1``, shape ``(n_steps + 1,)`` float64.

    sigmoid:    ``β̃_t = sigmoid(δ (2t/T − 1))`` rescaled to [0, 1] (Grosse et al. 2015, "Sandwiching the
                marginal likelihood", §6); dense at both ends.
    geometric:  ``β_1 … β_T`` geometrically spaced from ``geometric_start`` to 1 (Neal 2001, §6); dense near 0.
    linear:     ``β_t = t / T``.
    """
    n_steps = int(n_steps)
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1 (the number of intermediate AIS temperatures), got {n_steps}")
    t = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps  # (T + 1,) from 0 to 1
    if schedule == "linear":
        return t
    if schedule == "sigmoid":
        if not sigmoid_delta > 0:
            raise ValueError(f"sigmoid_delta must be positive, got {sigmoid_delta}")
        raw = torch.sigmoid(float(sigmoid_delta) * (2 * t - 1))
        return (raw - raw[0]) / (raw[-1] - raw[0])
    if schedule == "geometric":
        if not 0 < geometric_start < 1:
            raise ValueError(f"geometric_start must lie in (0, 1), got {geometric_start}")
        rest = torch.logspace(math.log10(geometric_start), 0.0, n_steps, dtype=torch.float64) if n_steps > 1 \
            else torch.ones(1, dtype=torch.float64)
        return torch.cat([torch.zeros(1, dtype=torch.float64), rest])
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


# -- the Gaussian proposal -------------------------------------------------------------------------
class GaussianProposal:
    """``q = N(m, diag(s²))`` over ``dim_shape``; ``m`` and ``s`` are scalars or tensors broadcastable to it."""

    def __init__(self, *, dim_shape: Sequence[int], mean: float | Tensor = 0.0, std: float | Tensor = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        self.shape = tuple(int(d) for d in dim_shape)
        if not self.shape or any(d < 1 for d in self.shape):
            raise ValueError(f"dim_shape must be a non-empty shape of positive sizes, got {dim_shape}")
        std64 = torch.as_tensor(std, dtype=torch.float64, device=device)
        if not (std64 > 0).all():
            raise ValueError(f"proposal_std must be positive, got {std64.tolist()}; pass a positive scale "
                             "(e.g. roughly the data's standard deviation)")
        self.mean = torch.as_tensor(mean, dtype=torch.float64, device=device).expand(self.shape)  # (*shape)
        self.std = std64.expand(self.shape)                                                   # (*shape)
        self.dtype = dtype
        self.log_norm = float(-self.std.log().sum() - 0.5 * self.std.numel() * math.log(2 * math.pi))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn((n, *self.shape), generator=generator, device=self.mean.device, dtype=torch.float64)
        return (self.mean + self.std * eps).to(self.dtype)  # (n, *shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log q(x)``, shape ``(B,)`` float64."""
        z = (x.double() - self.mean) / self.std
        return self.log_norm - 0.5 * z.reshape(x.shape[0], -1).pow(2).sum(1)

    def score(self, x: Tensor) -> Tensor:
        """``∇log q(x) = −(x − m)/s²`` in ``x``'s dtype."""
        return (-(x.double() - self.mean) / self.std.pow(2)).to(x.dtype)


# -- MALA on the tempered density ------------------------------------------------------------------
class _State(NamedTuple):
    x: Tensor      # (B, *shape) chain positions
    log_f: Tensor  # (B,) float64, log f(x)
    grad_f: Tensor  # (B, *shape), ∇log f(x)


def _evaluate(log_f: LogDensity, x: Tensor) -> _State:
    value, grad = input_gradient(log_f, x.detach(), create_graph=False)
    if value.shape != (x.shape[0],):
        raise ValueError(f"log_f must map (B, *shape) to (B,), got shape {tuple(value.shape)} for B = {x.shape[0]}")
    return _State(x.detach(), value.detach().double(), grad.detach())


def _tempered(state: _State, beta: float, proposal: GaussianProposal | None) -> tuple[Tensor, Tensor]:
    """``log π_β = (1−β) log q + β log f`` (float64, up to a constant) and its gradient."""
    if proposal is None or beta == 1.0:
        return state.log_f, state.grad_f
    log_pi = (1 - beta) * proposal.log_prob(state.x) + beta * state.log_f
    return log_pi, (1 - beta) * proposal.score(state.x) + beta * state.grad_f


def _sq_norm(v: Tensor) -> Tensor:
    return v.double().reshape(v.shape[0], -1).pow(2).sum(1)  # (B,) float64


def _mala_step(log_f: LogDensity, state: _State, *, beta: float, proposal: GaussianProposal | None,
               step_size: float, generator: torch.Generator | None) -> tuple[_State, Tensor]:
    """One MALA step leaving ``π_β`` invariant (Roberts & Tweedie 1996): propose
    ``y = x + ½ε²∇log π(x) + εξ`` and accept with ``min(1, π(y) k(x|y) / (π(x) k(y|x)))``."""
    x, eps = state.x, step_size
    log_pi_x, grad_x = _tempered(state, beta, proposal)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x + 0.5 * eps**2 * grad_x + eps * noise
    new = _evaluate(log_f, y)
    log_pi_y, grad_y = _tempered(new, beta, proposal)
    log_forward = -0.5 * _sq_norm(noise)                                             # log k(y|x) + const
    log_backward = -_sq_norm(x - y - 0.5 * eps**2 * grad_y) / (2 * eps**2)           # log k(x|y) + const
    log_ratio = log_pi_y - log_pi_x + log_backward - log_forward                     # (B,) float64
    log_ratio = torch.where(torch.isfinite(log_ratio), log_ratio, torch.full_like(log_ratio, -math.inf))
    uniform = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)
    accept = uniform.log() < log_ratio                                               # (B,) bool
    mask = accept.reshape(-1, *([1] * (x.ndim - 1)))
    return _State(torch.where(mask, new.x, x), torch.where(accept, new.log_f, state.log_f),
                  torch.where(mask, new.grad_f, state.grad_f)), accept


def _check_step_size(step_size: float) -> float:
    if not step_size > 0 or not math.isfinite(step_size):
        raise ValueError(f"step_size must be positive and finite, got {step_size}")
    return float(step_size)


@torch.no_grad()
def mala_transition(log_f: LogDensity, x: Tensor, *, step_size: float, n_steps: int = 1,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``n_steps`` MALA steps on ``exp(log_f)`` from ``x`` ``(B, *shape)``; returns ``(x, acceptance (n_steps,))``.

    The same kernel AIS uses at β = 1; ``exp(log_f)`` is invariant under it.
    """
    step_size = _check_step_size(step_size)
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    state, acceptance = _evaluate(log_f, x), []
    for _ in range(int(n_steps)):
        state, accept = _mala_step(log_f, state, beta=1.0, proposal=None, step_size=step_size, generator=generator)
        acceptance.append(accept.double().mean())
    return state.x, torch.stack(acceptance)


# -- AIS -------------------------------------------------------------------------------------------
class AISEstimate(NamedTuple):
    """Result of ``annealed_importance_log_z``."""

    log_z: float          # log Ẑ = logmeanexp(log_weights), float64
    log_z_stderr: float   # delta-method stderr of log Ẑ: std(w) / (√n mean(w)) = √((n/ESS − 1)/(n − 1))
    log_weights: Tensor   # (n_chains,) float64 AIS log weights
    ess: float            # effective sample size (Σw)² / Σw² of the weights
    acceptance: Tensor    # (n_steps,) mean MALA acceptance rate at each temperature (chains inside f's support)
    step_sizes: Tensor    # (n_steps,) MALA step size ε used at each temperature
    betas: Tensor         # (n_steps + 1,) the β schedule
    samples: Tensor       # (n_chains, *shape) final chain states: approximate draws from f / Z


def _log_z_summary(log_w: Tensor) -> tuple[float, float, float]:
    n = log_w.numel()
    log_z = torch.logsumexp(log_w, 0) - math.log(n)
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))
    stderr = math.sqrt(max(n / ess - 1.0, 0.0) / (n - 1)) if n > 1 else math.inf
    return float(log_z), stderr, ess


def _live_mean(accepted: Tensor, live: Tensor) -> float:
    return float(accepted[live].mean()) if live.any() else 0.0


@torch.no_grad()
def annealed_importance_log_z(log_f: LogDensity, *, dim_shape: Sequence[int], n_chains: int = 256,
                              n_steps: int = 500, proposal_mean: float | Tensor = 0.0,
                              proposal_std: float | Tensor = 1.0, step_size: float | None = None,
                              target_acceptance: float | None = 0.6, n_tuning_chains: int = 32,
                              n_transitions: int = 1, schedule: str = "sigmoid", sigmoid_delta: float = 4.0,
                              geometric_start: float = 1e-4, device: torch.device | str | None = None,
                              dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None,
                              callback: Callback = None) -> AISEstimate:
    """``log Z = log ∫ exp(log_f)`` by annealed importance sampling (Neal 2001, §2) with MALA transitions.

    log_f:              unnormalised log-density, ``(B, *dim_shape) -> (B,)``, differentiable in its input.
    dim_shape:          shape of one point, e.g. ``(2,)`` or ``(1, 32, 32)``.
    n_chains:           independent AIS chains (the number of importance weights).
    n_steps:            T, the number of intermediate temperatures β_1 … β_T = 1.
    proposal_mean/std:  the start ``q = N(m, s² I)``; scalars or tensors broadcastable to ``dim_shape``.
    step_size:          MALA step ε at β_1; default ``1.65 · min(s) · D^{−1/6}``, the optimal step for q itself
                        (Roberts & Rosenthal 1998).
    target_acceptance:  after each temperature, ``log ε += acceptance − target`` (Wu et al. 2017 adapt HMC in AIS
                        to a target acceptance); ``None`` keeps ε fixed.
    n_tuning_chains:    extra chains, run alongside, whose acceptance alone drives that adaptation; their weights
                        are discarded, so the kernels never depend on the counted chains and Ẑ stays unbiased.
    n_transitions:      MALA steps per temperature.
    schedule:           ``"sigmoid"``, ``"geometric"`` or ``"linear"`` β spacing (see ``ais_betas``).
    device, dtype:      where and in which precision the chains run (log weights are always float64).
    generator:          the only source of randomness; it must live on ``device``.
    callback:           called after each temperature with a ``dae_gen.score.Step`` (``i``, ``n``, ``x``; its
                        ``extras``: ``beta``, ``log_weights``, ``acceptance``, ``step_size``).
    """
    if int(n_chains) < 1:
        raise ValueError(f"n_chains must be at least 1, got {n_chains}")
    if int(n_transitions) < 1:
        raise ValueError(f"n_transitions must be at least 1, got {n_transitions}")
    if target_acceptance is not None and not 0 < target_acceptance < 1:
        raise ValueError(f"target_acceptance must lie in (0, 1) or be None, got {target_acceptance}")
    n_counted = int(n_chains)
    n_tuning = 0 if target_acceptance is None else int(n_tuning_chains)
    if target_acceptance is not None and n_tuning < 1:
        raise ValueError(f"n_tuning_chains must be at least 1 to adapt the step size, got {n_tuning_chains}; "
                         "pass target_acceptance=None for a fixed step size")
    betas = ais_betas(n_steps, schedule=schedule, sigmoid_delta=sigmoid_delta, geometric_start=geometric_start)
    proposal = GaussianProposal(dim_shape=dim_shape, mean=proposal_mean, std=proposal_std, device=device, dtype=dtype)
    dim = proposal.std.numel()
    if step_size is None:
        step_size = 1.65 * float(proposal.std.min()) * dim ** (-1 / 6)
    step_size = _check_step_size(step_size)

    # chains [0, n_counted) give the weights; chains [n_counted, n_counted + n_tuning) only tune ε
    state = _evaluate(log_f, proposal.sample(n_counted + n_tuning, generator))
    log_w = torch.zeros(n_counted + n_tuning, dtype=torch.float64, device=state.x.device)  # (n_all,)
    acceptance, step_sizes = [], []
    for t in range(1, len(betas)):
        beta, d_beta = float(betas[t]), float(betas[t] - betas[t - 1])
        log_w = log_w + d_beta * (state.log_f - proposal.log_prob(state.x))  # Neal (2001), eq. 3
        live = torch.isfinite(state.log_f)  # (n_all,) chains outside the support of f (weight 0) never move
        accepted = torch.zeros(n_counted + n_tuning, dtype=torch.float64, device=log_w.device)
        for _ in range(int(n_transitions)):
            state, accept = _mala_step(log_f, state, beta=beta, proposal=proposal, step_size=step_size,
                                       generator=generator)
            accepted += accept.double() / int(n_transitions)
        rate = _live_mean(accepted[:n_counted], live[:n_counted])
        acceptance.append(rate)
        step_sizes.append(step_size)
        if callback is not None:
            callback(Step(i=t, n=len(betas) - 1, x=state.x[:n_counted], extras={
                "beta": torch.tensor(beta, dtype=torch.float64), "log_weights": log_w[:n_counted],
                "acceptance": torch.tensor(rate, dtype=torch.float64),
                "step_size": torch.tensor(step_size, dtype=torch.float64)}))
        if n_tuning and live[n_counted:].any():
            step_size *= math.exp(_live_mean(accepted[n_counted:], live[n_counted:]) - target_acceptance)
    log_w = log_w[:n_counted]
    log_z, stderr, ess = _log_z_summary(log_w)
    return AISEstimate(log_z, stderr, log_w, ess, torch.tensor(acceptance, dtype=torch.float64),
                       torch.tensor(step_sizes, dtype=torch.float64), betas, state.x[:n_counted])


# -- model log-likelihoods -------------------------------------------------------------------------
class LikelihoodEstimate(NamedTuple):
    """Result of ``energy_log_likelihood``."""

    log_likelihood: Tensor  # (N,) float64: log p̂(x) = log f(x) − log Ẑ
    log_z: float            # log Ẑ from AIS
    log_z_stderr: float     # its standard error (shared by every entry of log_likelihood)
    ais: AISEstimate        # the full AIS diagnostics


def model_log_f(model, *, temperature: float = 1.0) -> LogDensity:
    """``log f = −E/T`` for a model with ``energy(x)`` (annealed DSM), ``f/T`` with ``log_density(x)`` (DDE)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if isinstance(model, EnergyModel):
        return lambda x: -model.energy(x) / temperature
    if isinstance(model, DensityModel):
        return lambda x: model.log_density(x) / temperature
    raise ValueError(f"{type(model).__name__} has neither energy(x) nor log_density(x); AIS log-likelihoods need "
                     "an energy model (e.g. AnnealedDSMEnergy) or a density estimator (e.g. DenoisingDensityEstimator)")


def energy_log_likelihood(model, x: Tensor, *, temperature: float = 1.0, n_chains: int = 256, n_steps: int = 500,
                          proposal_mean: float | Tensor = 0.0, proposal_std: float | Tensor = 1.0,
                          step_size: float | None = None, target_acceptance: float | None = 0.6,
                          n_tuning_chains: int = 32, n_transitions: int = 1, schedule: str = "sigmoid",
                          batch: int = 1024,
                          generator: torch.Generator | None = None, callback: Callback = None) -> LikelihoodEstimate:
    """Per-example ``log p̂(x) = log f(x) − log Ẑ`` with ``Ẑ`` from AIS (Li, Chen & Sommer; Neal 2001).

    The density is ``p_T(x) ∝ exp(−E(x)/T)`` for an energy model and ``∝ exp(f(x)/T)`` for a DDE. At T = 1
    the annealed-DSM energy satisfies ``−∇E ≈ ∇log p_σ₀`` (its loss's optimum at σ = σ₀), so ``exp(−E)``
    models the data *smoothed* by ``N(0, σ₀² I)``, not the data itself; likewise a DDE's ``exp f`` models
    ``p_σ`` at its trained σ.
    Chains run on ``x``'s device (the model's) in ``x``'s dtype; ``generator`` must live there. ``x``: ``(N, *shape)``;
    ``log f(x)`` is evaluated on chunks of ``batch`` points. Other arguments: see ``annealed_importance_log_z``.
    Put the model in eval mode first if it has dropout or batch statistics.
    """
    log_f = model_log_f(model, temperature=temperature)
    ais = annealed_importance_log_z(log_f, dim_shape=tuple(x.shape[1:]), n_chains=n_chains, n_steps=n_steps,
                                    proposal_mean=proposal_mean, proposal_std=proposal_std, step_size=step_size,
                                    target_acceptance=target_acceptance, n_tuning_chains=n_tuning_chains,
                                    n_transitions=n_transitions,
                                    schedule=schedule, device=x.device, dtype=x.dtype, generator=generator,
                                    callback=callback)
    with torch.no_grad():
        values = torch.cat([log_f(chunk).double() for chunk in x.split(int(batch))])  # (N,)
    return LikelihoodEstimate(values - ais.log_z, ais.log_z, ais.log_z_stderr, ais)
