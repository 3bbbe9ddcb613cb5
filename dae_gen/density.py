"""Density estimation with unnormalised log-densities, and an exact Gaussian mixture for ground truth.

A denoising density estimator (Bigdeli et al., "Learning Generative Models using Denoising Density
Estimators", §3) gives ``f(x) = log p_σ(x) + const``. Two ways to remove the constant:

- in 2-D, normalise on a grid: ``log p̂(x_ij) = f(x_ij) − log Σ_kl exp f(x_kl) − log(cell area)``;
- in higher dimensions, importance sampling: ``Z = E_{y~q}[exp f(y) / q(y)]`` with the proposal
  ``q = N(0, (1 + σ²) I)`` (the law of standardised data smoothed by σ), estimated by log-mean-exp.

``GaussianMixture`` has an exact sampler, log-density and score, and stays a mixture when smoothed by
``N(0, σ² I)`` (σ² adds to every component variance), so ``log p_σ`` and ``∇ log p_σ`` are exact too;
``MixtureScoreModel`` is that exact noise-conditional score as a model every sampler accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

LogDensity = Callable[[Tensor], Tensor]


class GaussianMixture:
    """Mixture of diagonal Gaussians ``Σ_k w_k N(μ_k, diag(s_k²))``, exact in float64.

    means:   ``(K, D)`` component means.
    stds:    ``(K,)`` isotropic or ``(K, D)`` per-dimension standard deviations, all positive.
    weights: ``(K,)`` positive mixture weights (normalised to sum to one).
    """

    def __init__(self, means: Tensor | Sequence, stds: Tensor | Sequence, weights: Tensor | Sequence):
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        n_comp, dim = means.shape
        if stds.shape == (n_comp,):
            stds = stds[:, None].expand(n_comp, dim)
        if stds.shape != (n_comp, dim):
            raise ValueError(f"stds must have shape ({n_comp},) or ({n_comp}, {dim}) to match means, "
                             f"got {tuple(stds.shape)}")
        if weights.shape != (n_comp,):
            raise ValueError(f"weights must have shape ({n_comp},) to match means, got {tuple(weights.shape)}")
        if not (stds > 0).all() or not (weights > 0).all():
            raise ValueError(f"stds and weights must be positive, got stds={stds.tolist()}, weights={weights.tolist()}")
        self.means = means.clone()                      # (K, D)
        self.stds = stds.clone().contiguous()           # (K, D)
        self.weights = weights / weights.sum()          # (K,)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples of shape ``(n, D)`` in float64 on the CPU (``generator`` must be a CPU one)."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[component] + self.stds[component] * noise

    def component_log_probs(self, x: Tensor) -> Tensor:
        """``log w_k + log N(x; μ_k, diag(s_k²))`` of shape ``(N, K)`` in float64, for ``x`` of shape ``(N, D)``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        x = x.to(torch.float64)
        means, stds, weights = (t.to(x.device) for t in (self.means, self.stds, self.weights))
        z = (x[:, None, :] - means[None]) / stds[None]  # (N, K, D)
        log_norm = -stds.log().sum(1) - 0.5 * self.dim * math.log(2 * math.pi)  # (K,)
        return weights.log() + log_norm - 0.5 * z.pow(2).sum(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` of shape ``(N,)``, computed in float64 and returned in ``x``'s dtype."""
        return torch.logsumexp(self.component_log_probs(x), dim=1).to(x.dtype)

    def score(self, x: Tensor) -> Tensor:
        """Exact ``∇ log p(x) = Σ_k r_k(x) (μ_k − x) / s_k²`` with responsibilities r_k; shape ``(N, D)``."""
        resp = torch.softmax(self.component_log_probs(x), dim=1)  # (N, K)
        means, var = self.means.to(x.device), self.stds.to(x.device).pow(2)
        pull = (means[None] - x.to(torch.float64)[:, None, :]) / var[None]  # (N, K, D)
        return (resp[:, :, None] * pull).sum(1).to(x.dtype)

    def smoothed(self, sigma: float) -> "GaussianMixture":
        """The law of ``x + σε``: the same mixture with ``s_k² + σ²`` as component variances."""
        if not sigma >= 0:
            raise ValueError(f"sigma must be non-negative, got {sigma}")
        return GaussianMixture(self.means, (self.stds.pow(2) + float(sigma) ** 2).sqrt(), self.weights)


class MixtureScoreModel(nn.Module):
    """The exact score model of a Gaussian mixture: ``score(x, σ) = ∇log p_σ(x)``, ``p_σ = p ∗ N(0, σ²I)``.

    It satisfies the score protocol (``dae_gen.score.ScoreModel``), so every sampler and task runs on it: what a
    sampler achieves with a perfect score, next to what it achieves with a trained one.
    mixture:             the data law ``p``.
    sigmas:              the schedule σ_1 > … > σ_L that samplers read as the model's levels (any σ > 0 can be
                         asked for).
    class_conditional:   the class is the component: ``score(x, σ, class_labels)`` is ``∇log p_σ(x | k)`` of
                         component k (label K = ``n_classes``, or no labels: the whole mixture), the exact
                         class-conditional model that classifier-free guidance combines.
    """

    def __init__(self, mixture: GaussianMixture, *, sigmas: float | Sequence[float] | Tensor,
                 class_conditional: bool = False):
        super().__init__()
        from dae_gen.noise import as_sigma_schedule

        self.mixture = mixture
        self.data_shape = (mixture.dim,)
        self.n_classes = mixture.n_components if class_conditional else 0
        self.register_buffer("sigma_levels", as_sigma_schedule(sigmas))

    @property
    def sigmas(self) -> Tensor:
        return self.sigma_levels

    @property
    def reference_sigma(self) -> float:
        return float(self.sigma_levels[-1])

    def score(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """``Σ_k r_k(x)(μ_k − x)/(s_k² + σ²)`` with each example's own σ (x ``(B, D)``, σ ``(B,)``), in float64;
        with ``class_labels`` ``(B,)`` the responsibilities are one-hot on each example's component."""
        x64 = x.to(torch.float64)
        means, stds, weights = (t.to(x.device) for t in (self.mixture.means, self.mixture.stds, self.mixture.weights))
        var = stds.pow(2)[None] + torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1, 1) ** 2
        diff = means[None] - x64[:, None, :]                                           # (B, K, D)
        log_comp = weights.log() - 0.5 * (var.log() + math.log(2 * math.pi) + diff.pow(2) / var).sum(-1)  # (B, K)
        if class_labels is not None:
            if not self.n_classes:
                raise ValueError("class_labels given to an unconditional MixtureScoreModel; build it with "
                                 "class_conditional=True to condition on the component")
            labels = torch.as_tensor(class_labels, device=x.device).reshape(-1, 1)  # (B, 1); K: the whole mixture
            components = torch.arange(self.n_classes, device=x.device)[None]  # (1, K)
            log_comp = log_comp.masked_fill((labels != components) & (labels != self.n_classes), -math.inf)
        resp = torch.softmax(log_comp, dim=1)
        return (resp[:, :, None] * diff / var).sum(1).to(x.dtype)


# -- grid normalisation (2-D) ----------------------------------------------------------------------
class GridDensity(NamedTuple):
    """A log-density normalised on a grid of cell centres: ``log_density[i, j]`` is at ``(xs[i], ys[j])``."""

    log_density: Tensor  # (n_grid, n_grid) float64, Σ exp(log_density) · cell_area = 1
    xs: Tensor           # (n_grid,) cell centres along the first coordinate
    ys: Tensor           # (n_grid,) cell centres along the second coordinate
    cell_area: float


def _axis_bounds(bounds) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(low, high)`` for both axes, or ``((x_low, x_high), (y_low, y_high))``."""
    items = list(bounds)
    try:
        pairs = ((float(items[0]), float(items[1])),) * 2 if len(items) == 2 else None
    except (TypeError, ValueError, RuntimeError):  # the items are pairs themselves
        pairs = tuple((float(lo), float(hi)) for lo, hi in items)
    if pairs is None or len(pairs) != 2 or any(not hi > lo for lo, hi in pairs):
        raise ValueError(f"bounds must be (low, high) or ((x_low, x_high), (y_low, y_high)) with high > low, "
                         f"got {bounds}")
    return pairs


def grid_points(*, bounds, n_grid: int) -> GridDensity:
    """Cell centres of an ``n_grid × n_grid`` grid over ``bounds``; returns a ``GridDensity`` with zeros."""
    if int(n_grid) < 2:
        raise ValueError(f"n_grid must be at least 2, got {n_grid}")
    (x_lo, x_hi), (y_lo, y_hi) = _axis_bounds(bounds)
    dx, dy = (x_hi - x_lo) / n_grid, (y_hi - y_lo) / n_grid
    xs = x_lo + dx * (torch.arange(n_grid, dtype=torch.float64) + 0.5)
    ys = y_lo + dy * (torch.arange(n_grid, dtype=torch.float64) + 0.5)
    return GridDensity(torch.zeros(n_grid, n_grid, dtype=torch.float64), xs, ys, dx * dy)


@torch.no_grad()
def grid_log_density(log_density_fn: LogDensity, *, bounds, n_grid: int = 200, batch: int = 16384,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> GridDensity:
    """Normalise an unnormalised 2-D log-density on a grid (DDE paper, toy experiments).

    ``log p̂_ij = f(x_ij) − logsumexp(f) − log(cell area)``, so the grid density integrates to one over
    ``bounds``. ``log_density_fn`` maps ``(N, 2)`` points (in ``dtype`` on ``device``) to ``(N,)``.
    """
    grid = grid_points(bounds=bounds, n_grid=n_grid)
    points = torch.cartesian_prod(grid.xs, grid.ys)  # (n_grid², 2), row-major: index i * n_grid + j
    values = torch.cat([log_density_fn(chunk.to(device=device, dtype=dtype)).detach().to("cpu", torch.float64)
                        for chunk in points.split(batch)])
    if values.shape != (points.shape[0],):
        raise ValueError(f"log_density_fn must map (N, 2) points to (N,) values, got shape {tuple(values.shape)}")
    log_density = values - torch.logsumexp(values, 0) - math.log(grid.cell_area)
    return grid._replace(log_density=log_density.reshape(n_grid, n_grid))


def grid_kl(log_p: Tensor, log_q: Tensor, cell_area: float) -> float:
    """``KL(p ‖ q) ≈ Σ_ij area · p_ij (log p_ij − log q_ij)`` for two grid-normalised log-densities."""
    log_p, log_q = log_p.double(), log_q.double()
    return float((cell_area * log_p.exp() * (log_p - log_q)).sum())


# -- importance sampling (any dimension) -----------------------------------------------------------
class ImportanceEstimate(NamedTuple):
    """Result of ``importance_log_likelihood``."""

    log_likelihood: Tensor  # (N,) float64: log p̂(x) = f(x) − log Ẑ
    log_z: float            # log Ẑ = log mean_m exp(f(y_m) − log q(y_m)), y_m ~ q
    ess: float              # effective sample size (Σ w)² / Σ w² of the importance weights w = exp f / q


@torch.no_grad()
def importance_log_likelihood(log_density_fn: LogDensity, x: Tensor, *, sigma: float, n_proposal: int = 65536,
                              generator: torch.Generator | None = None, batch: int = 4096,
                              proposal_mean: float | Tensor = 0.0,
                              proposal_std: float | Tensor | None = None) -> ImportanceEstimate:
    """Log-likelihood of ``x`` under the normalised ``exp f`` by importance sampling (DDE paper, §4.1).

    The proposal ``q = N(m, s² I)`` defaults to ``m = 0``, ``s = √(1 + σ²)``: standardised data smoothed by σ.
    ``Ẑ = mean exp(f(y) − log q(y))`` over ``n_proposal`` draws is reduced in float64 by log-mean-exp;
    ``generator`` must live on ``x``'s device. ``f`` is evaluated on chunks of ``batch`` points.
    """
    if int(n_proposal) < 1:
        raise ValueError(f"n_proposal must be positive, got {n_proposal}")
    shape, device = tuple(x.shape[1:]), x.device
    dim = math.prod(shape)
    std = math.sqrt(1.0 + float(sigma) ** 2) if proposal_std is None else proposal_std
    mean = torch.as_tensor(proposal_mean, dtype=torch.float64, device=device).expand(shape)
    std = torch.as_tensor(std, dtype=torch.float64, device=device).expand(shape)
    if not (std > 0).all():
        raise ValueError("proposal_std must be positive")
    log_q_const = -std.log().sum() - 0.5 * dim * math.log(2 * math.pi)
    log_weights = []
    remaining = int(n_proposal)
    while remaining > 0:
        m = min(int(batch), remaining)
        eps = torch.randn((m, *shape), generator=generator, device=device, dtype=torch.float64)
        y = mean + std * eps                                                    # (m, *shape)
        log_q = log_q_const - 0.5 * eps.reshape(m, -1).pow(2).sum(1)            # (m,)
        log_weights.append(log_density_fn(y.to(x.dtype)).double() - log_q)
        remaining -= m
    log_w = torch.cat(log_weights)                                              # (n_proposal,)
    log_z = torch.logsumexp(log_w, 0) - math.log(log_w.numel())
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    values = torch.cat([log_density_fn(chunk).double() for chunk in x.split(int(batch))])
    return ImportanceEstimate(values - log_z, float(log_z), float(ess))


__all__ = ["GaussianMixture", "GridDensity", "ImportanceEstimate", "LogDensity", "MixtureScoreModel", "grid_kl",
           "grid_log_density", "grid_points", "importance_log_likelihood"]
