"""Noise-level schedules and per-batch σ samplers.

References: NCSN (Song & Ermon 2019) geometric schedule; NCSNv2 (Song & Ermon 2020) Techniques 1–2 for
σ₁ and the number of levels; annealed DSM (Li, Chen & Sommer 2019) per-slot σ across the batch; EDM
(Karras et al. 2022) the ρ-schedule of its samplers (Eq. 5) and the log-normal training σ (§5, Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _check_range(sigma_max: float, sigma_min: float) -> None:
    if not (sigma_min > 0 and sigma_max > 0):
        raise ValueError(f"noise levels must be positive, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if not sigma_max > sigma_min:
        raise ValueError(
            f"sigma_max must be larger than sigma_min, got sigma_max={sigma_max} <= sigma_min={sigma_min}"
        )


def geometric_sigmas(sigma_max: float, sigma_min: float, n_levels: int) -> Tensor:
    """NCSN schedule: ``n_levels`` σ values in geometric progression from ``sigma_max`` down to ``sigma_min``."""
    _check_range(sigma_max, sigma_min)
    if int(n_levels) < 2:
        raise ValueError(f"n_levels must be at least 2, got {n_levels}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), int(n_levels), dtype=torch.float64).float()


def validate_sigmas(sigmas: Tensor) -> Tensor:
    """Check a schedule is 1-D, positive and strictly decreasing; return it as float32."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or (sigmas <= 0).any():
        raise ValueError(f"sigmas must be finite and positive, got {sigmas.tolist()}")
    if sigmas.numel() > 1 and not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing (σ_1 > … > σ_L), got {sigmas.tolist()}")
    return sigmas


def as_sigma_schedule(sigmas: float | Sequence[float] | Tensor) -> Tensor:
    """A σ schedule from a scalar, a (Hydra) list or a tensor, checked by ``validate_sigmas``: shape ``(L,)``."""
    if isinstance(sigmas, Tensor):
        return validate_sigmas(sigmas.detach().reshape(-1))
    if isinstance(sigmas, (int, float)):
        sigmas = [sigmas]
    return validate_sigmas(torch.tensor([float(s) for s in sigmas]))


def karras_sigmas(n_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's sampling schedule (Karras et al. 2022, Eq. 5), shape ``(n_steps + 1,)`` float64, ending with σ_N = 0:

    ``σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` for i < N. ρ = 7 (EDM), ρ = 1 is linear,
    large ρ tends to geometric. ``sigma_min == sigma_max`` gives N equal levels (a one-level model), ``n_steps = 1``
    the single level σ_max.
    """
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if not (sigma_min > 0 and sigma_max >= sigma_min):
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    if n_steps > 1:
        ramp = torch.linspace(0, 1, int(n_steps), dtype=torch.float64)
    else:
        ramp = torch.zeros(1, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def ncsnv2_sigma_max(data: Tensor) -> float:
    """NCSNv2 Technique 1: σ₁ ≈ the maximum Euclidean distance between any two training points.

    ``data`` has shape ``(N, ...)``; pass a subsample for large N (the cost is O(N²)).
    """
    flat = data.reshape(data.shape[0], -1).double()
    if flat.shape[0] < 2:
        raise ValueError("need at least two data points to measure pairwise distances")
    return float(torch.cdist(flat, flat).max())


def ncsnv2_ratio(dim: int) -> float:
    """NCSNv2 Technique 2: the ratio γ = σ_{i-1}/σ_i with Φ(√(2D)(γ−1)+3γ) − Φ(√(2D)(γ−1)−3γ) ≈ 0.5."""
    if 2 * dim <= 9:
        raise ValueError(f"NCSNv2 Technique 2 has no solution for data dimension {dim} < 5 (the coverage never "
                         "falls to 0.5); choose the number of levels by hand for low-dimensional data")

    def coverage(gamma: float) -> float:
        c = math.sqrt(2 * dim) * (gamma - 1)
        phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731 standard normal CDF
        return phi(c + 3 * gamma) - phi(c - 3 * gamma)

    lo, hi = 1.0, 2.0
    while coverage(hi) > 0.5:  # coverage decreases in γ; widen until bracketed
        hi *= 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if coverage(mid) > 0.5 else (lo, mid)
    return 0.5 * (lo + hi)


def ncsnv2_num_levels(sigma_max: float, sigma_min: float, dim: int) -> int:
    """Number of geometric levels from ``sigma_max`` to ``sigma_min`` at the NCSNv2 ratio for ``dim``.

    The exact root of Technique 2 gives 220 levels for CIFAR-10 (σ 50 → 0.01) and 473 for CelebA 64
    (90 → 0.01); the paper's published 232 and 500 correspond to a coverage of ≈ 0.57 rather than 0.5.
    """
    _check_range(sigma_max, sigma_min)
    return int(math.ceil(math.log(sigma_max / sigma_min) / math.log(ncsnv2_ratio(dim)))) + 1


def sample_levels(batch_size: int, sigmas: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """NCSN training: one σ per example, drawn uniformly from the schedule. Returns shape ``(B,)``."""
    idx = torch.randint(len(sigmas), (batch_size,), generator=generator, device=sigmas.device)
    return sigmas[idx]


class UniformLevels:
    """Training σ of the NCSN family: each example draws one of the model's levels σ_1 … σ_L uniformly."""

    def sample(self, batch_size: int, levels: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` noise levels on ``levels``' device."""
        return sample_levels(batch_size, levels, generator=generator)

    def __repr__(self) -> str:
        return "UniformLevels()"


class LogNormalSigma:
    """EDM's training σ (Karras et al. 2022, §5): ``ln σ ~ N(p_mean, p_std²)``, continuous.

    p_mean:  mean of ln σ (EDM: −1.2, for data in [−1, 1]).
    p_std:   standard deviation of ln σ (EDM: 1.2).
    """

    def __init__(self, *, p_mean: float = -1.2, p_std: float = 1.2):
        if not p_std > 0:
            raise ValueError(f"p_std must be positive, got {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def sample(self, batch_size: int, levels: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` noise levels on ``levels``' device (the levels themselves are not used)."""
        normal = torch.randn(batch_size, generator=generator, device=levels.device, dtype=levels.dtype)
        return (self.p_mean + self.p_std * normal).exp()

    def __repr__(self) -> str:
        return f"LogNormalSigma(p_mean={self.p_mean}, p_std={self.p_std})"


def batch_spaced_sigmas(batch_size: int, sigma_low: float, sigma_high: float, *, spacing: str = "linear",
                        device: torch.device | str | None = None) -> Tensor:
    """Annealed DSM: slot i of the batch gets its own σ_i, spaced from ``sigma_high`` down to ``sigma_low``.

    ``spacing`` is ``"linear"`` (CIFAR-10: 0.05…1.2) or ``"log"`` (Fashion-MNIST: 0.1…3). Shape ``(B,)``.
    """
    _check_range(sigma_high, sigma_low)
    if spacing == "linear":
        return torch.linspace(sigma_high, sigma_low, batch_size, device=device)
    if spacing == "log":
        return torch.logspace(math.log10(sigma_high), math.log10(sigma_low), batch_size, device=device)
    raise ValueError(f"spacing must be 'linear' or 'log', got {spacing!r}")
