"""Sample-vs-data distances for 2-D toys, and a nearest-neighbour memorisation check for images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _check_points(x: Tensor, y: Tensor, name: str) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"{name}: expected point sets (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError(f"{name}: both sets need at least one point, got {x.shape[0]} and {y.shape[0]}")


def _quantiles(sorted_values: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantile functions ``(P, n)`` (rows sorted) at ``levels (K,)`` in (0, 1), linear between
    order statistics placed at ``(i + ½)/n``; at ``levels = (k + ½)/n`` it returns the order statistics exactly."""
    n = sorted_values.shape[1]
    position = (levels * n - 0.5).clamp(0.0, n - 1.0)  # (K,)
    lo = position.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = position - lo.to(position.dtype)
    return sorted_values[:, lo] * (1 - frac) + sorted_values[:, hi] * frac  # (P, K)


def sliced_wasserstein(x: Tensor, y: Tensor, *, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance ``(E_θ W₂²(θᵀx, θᵀy))^{1/2}``, θ uniform on the sphere (Bonneel et al. 2015).

    Each 1-D W₂ compares sorted projections (equal sizes) or the two quantile functions on a common grid of
    ``max(n, m)`` levels. A shift by v gives ``(E(θ·v)²)^{1/2} = ‖v‖/√d``.
    """
    _check_points(x, y, "sliced_wasserstein")
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)  # (d, P)
    px, py = (x @ theta).T.sort(dim=1).values, (y @ theta).T.sort(dim=1).values  # (P, n), (P, m)
    if px.shape[1] != py.shape[1]:
        k = max(px.shape[1], py.shape[1])
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        px, py = _quantiles(px, levels), _quantiles(py, levels)
    return float((px - py).square().mean().sqrt())


def mmd_rbf(x: Tensor, y: Tensor, *, bandwidths: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) with ``k = Σ_h exp(−‖a − b‖²/(2h²))`` over ``bandwidths``."""
    _check_points(x, y, "mmd_rbf")
    if x.shape[0] < 2 or y.shape[0] < 2 or not bandwidths or min(bandwidths) <= 0:
        raise ValueError(f"mmd_rbf: need >= 2 points per set and positive bandwidths, got n={x.shape[0]}, "
                         f"m={y.shape[0]}, bandwidths={tuple(bandwidths)}")
    x, y = x.detach().double(), y.detach().double()

    def kernel_sum(a: Tensor, b: Tensor, *, drop_diagonal: bool) -> Tensor:
        dist2 = torch.cdist(a, b).square()
        k = sum(torch.exp(-dist2 / (2.0 * h * h)) for h in bandwidths)
        return k.sum() - (k.diagonal().sum() if drop_diagonal else 0.0)

    n, m = x.shape[0], y.shape[0]
    return float(kernel_sum(x, x, drop_diagonal=True) / (n * (n - 1))
                 + kernel_sum(y, y, drop_diagonal=True) / (m * (m - 1))
                 - 2.0 * kernel_sum(x, y, drop_diagonal=False) / (n * m))


def mode_weights(samples: Tensor, means: Tensor, *, max_dist: float | None = None) -> tuple[Tensor, float]:
    """Fraction of samples nearest to each mode ``(K,)`` and the fraction of outliers (farther than ``max_dist``
    from every mode; None: no outliers). The fractions and the outlier fraction sum to 1."""
    _check_points(samples, means, "mode_weights")
    dist = torch.cdist(samples.detach().double(), means.detach().double().to(samples.device))  # (n, K)
    nearest_dist, nearest = dist.min(dim=1)
    inlier = torch.ones_like(nearest, dtype=torch.bool) if max_dist is None else nearest_dist <= max_dist
    counts = torch.bincount(nearest[inlier], minlength=means.shape[0]).double()
    n = samples.shape[0]
    return (counts / n).cpu(), float((~inlier).sum()) / n


def compare_with_exact(samples: Tensor, data, *, n_reference: int | None = None, seed: int = 0,
                       mmd_points: int = 2000) -> dict:
    """Distances of 2-D samples ``(n, d)`` to fresh exact samples of the distribution ``data`` (a ``PointData``).

    Returns ``sliced_wasserstein`` and ``mmd`` (unbiased MMD² on the first ``mmd_points`` of each set), the same
    two between two independent exact sets of the same sizes under ``baseline`` (what a perfect sampler scores:
    the noise floor at these sizes), and for a Gaussian mixture its ``mode_weights`` (fraction of samples nearest
    each mode), ``outliers`` (farther than 4 stds from every mode) and ``expected_mode_weights``.
    n_reference:  exact samples to compare with (None: as many as samples), drawn with seed + 10⁶ (the twin set
                  with seed + 2·10⁶), far from the seeds seed + k of a sampler's batches.
    """
    n = samples.shape[0]
    n_reference = n if n_reference is None else int(n_reference)
    exact = data.sample(n_reference, generator=torch.Generator().manual_seed(1_000_000 + seed)).detach().double().cpu()
    twin = data.sample(n, generator=torch.Generator().manual_seed(2_000_000 + seed)).detach().double().cpu()
    x = samples.detach().double().cpu().reshape(n, -1)

    def distances(points: Tensor) -> dict:
        return {"sliced_wasserstein": sliced_wasserstein(points, exact, generator=torch.Generator().manual_seed(seed)),
                "mmd": mmd_rbf(points[:mmd_points], exact[:mmd_points])}

    result = {**distances(x), "n": n, "n_reference": n_reference, "baseline": distances(twin)}
    mixture = getattr(data, "mixture", None)
    if mixture is not None:
        weights, outliers = mode_weights(x, mixture.means, max_dist=4.0 * float(mixture.stds.max()))
        result.update(mode_weights=[round(float(w), 4) for w in weights], outliers=outliers,
                      expected_mode_weights=[round(float(w), 4) for w in mixture.weights])
    return result


@torch.no_grad()
def nearest_neighbour_distances(samples: Tensor, train: Tensor, *, batch: int = 1024) -> tuple[Tensor, Tensor]:
    """For each sample, the L2 distance (pixel space, flattened) to its nearest training example and that
    example's index: ``(n,)`` float64 and ``(n,)`` long. Small distances flag memorised training images."""
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"nearest_neighbour_distances: samples {tuple(samples.shape)} and train "
                         f"{tuple(train.shape)} differ in example shape")
    if batch < 1 or train.shape[0] < 1:
        raise ValueError(f"need batch >= 1 and a non-empty train set, got batch={batch}, n_train={train.shape[0]}")
    flat = samples.reshape(samples.shape[0], -1).double()  # (n, D)
    best_dist = torch.full((flat.shape[0],), float("inf"), dtype=torch.float64, device=flat.device)
    best_index = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
    for start in range(0, train.shape[0], batch):
        chunk = train[start:start + batch].reshape(-1, flat.shape[1]).to(flat.device, torch.float64)  # (b, D)
        dist = torch.cdist(flat, chunk, compute_mode="donot_use_mm_for_euclid_dist")  # exact, (n, b)
        chunk_dist, chunk_index = dist.min(dim=1)
        better = chunk_dist < best_dist
        best_dist = torch.where(better, chunk_dist, best_dist)
        best_index = torch.where(better, chunk_index + start, best_index)
    return best_dist.cpu(), best_index.cpu()
