"""Fréchet Inception Distance (Heusel et al. 2017), KID (Bińkowski et al. 2018) and cached reference statistics."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_FORMAT = 1


def _as_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected mu (d,) and sigma (d, d), got {mu.shape} and {sigma.shape}")
    return mu, sigma


def _psd_eigvals(eigvals: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off (below ``d · eps · λ_max``, incl. negatives) set to 0, so
    that the square root does not turn 1e-16 noise in a null space into 1e-8 per dimension."""
    floor = eigvals.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(eigvals).max(initial=0.0)), 1e-300)
    return np.where(eigvals > floor, eigvals, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix via eigh."""
    eigvals, eigvecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (eigvecs * np.sqrt(_psd_eigvals(eigvals))) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of two Gaussians: ``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}`` (Dowson & Landau 1982).

    float64, symmetric-eigendecomposition form: ``tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(M)`` with the PSD matrix
    ``M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}``, since ``Σ₁Σ₂ = A·B`` and ``M = B·A`` for ``A = Σ₁^{1/2}``, ``B = Σ₁^{1/2}Σ₂``
    share their eigenvalues. Unlike ``scipy.linalg.sqrtm(Σ₁Σ₂)`` it needs no eps offset or real part and
    stays exact for the singular covariances of fewer samples than dimensions.
    """
    mu1, sigma1 = _as_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"statistics of different dimension: {mu1.shape[0]} vs {mu2.shape[0]}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(_psd_eigvals(eigvals)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def frechet_distance_to_features(feats, mu, sigma) -> float:
    """``frechet_distance(*feature_stats(feats), mu, sigma)``, computed in the sample space when n ≤ d.

    With centred features ``A (n, d)``, ``Σ_f = AᵀA/(n−1)`` and the nonzero eigenvalues of ``Σ Σ_f`` are those
    of the PSD ``n × n`` matrix ``A Σ Aᵀ/(n−1)``: an exact identity that replaces two ``d × d``
    eigendecompositions by one ``n × n`` (seconds → milliseconds for a few hundred samples, d = 2048).
    """
    feats = np.asarray(feats, dtype=np.float64)
    mu, sigma = _as_stats(mu, sigma, "reference statistics")
    if feats.ndim != 2 or feats.shape[0] < 2 or feats.shape[1] != mu.shape[0]:
        raise ValueError(f"expected features (n >= 2, {mu.shape[0]}), got {feats.shape}")
    n, d = feats.shape
    if n > d:
        return frechet_distance(*feature_stats(feats), mu, sigma)
    mean = feats.mean(axis=0)
    centred = feats - mean  # (n, d)
    middle = centred @ sigma @ centred.T / (n - 1)  # (n, n)
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(_psd_eigvals(eigvals)).sum()
    trace_f = np.einsum("ij,ij->", centred, centred) / (n - 1)
    diff = mean - mu
    return float(diff @ diff + trace_f + np.trace(sigma) - 2.0 * trace_sqrt)


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` (``np.cov``, ddof = 1) of features ``(n, d)``, float64."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"feature_stats: expected features (n, d) with n >= 2, got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with ``k(a, b) = (a·b/d + 1)³`` for equal-size sets ``(m, d)``."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kid(feats1, feats2, *, n_subsets: int = 100, subset_size: int = 1000,
        generator: np.random.Generator | int | None = None) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): mean and std over random subsets of unbiased MMD².

    Kernel ``k(x, y) = (x·y/d + 1)³``; each subset draws ``min(subset_size, n1, n2)`` rows of each set
    without replacement. generator: numpy Generator or seed (None → seed 0, so the metric is repeatable).
    """
    feats1, feats2 = np.asarray(feats1, dtype=np.float64), np.asarray(feats2, dtype=np.float64)
    if feats1.ndim != 2 or feats2.ndim != 2 or feats1.shape[1] != feats2.shape[1]:
        raise ValueError(f"kid: expected features (n1, d) and (n2, d), got {feats1.shape} and {feats2.shape}")
    m = min(int(subset_size), feats1.shape[0], feats2.shape[0])
    if m < 2 or n_subsets < 1:
        raise ValueError(f"kid: need subsets of at least 2 rows and n_subsets >= 1, got subset size {m} "
                         f"(from n1={feats1.shape[0]}, n2={feats2.shape[0]}, subset_size={subset_size}) and "
                         f"n_subsets={n_subsets}")
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator or 0)
    values = np.array([
        _mmd2_unbiased_poly(feats1[rng.choice(feats1.shape[0], m, replace=False)],
                            feats2[rng.choice(feats2.shape[0], m, replace=False)])
        for _ in range(n_subsets)])
    return float(values.mean()), float(values.std())


@dataclass
class ReferenceStats:
    """Feature statistics of a reference set: ``mu (d,)``, ``sigma (d, d)`` float64, ``features (n, d)`` float32."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    key: dict

    @property
    def n(self) -> int:
        return int(self.features.shape[0])


def stats_cache_path(cache_dir: str | os.PathLike, key: dict) -> Path:
    """``cache_dir/fid_stats_<sha256 of the canonical JSON key, 16 hex>.npz``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"fid_stats_{digest}.npz"


def _load_stats(path: Path, key: dict) -> ReferenceStats:
    with np.load(path, allow_pickle=False) as stored:
        found = json.loads(str(stored["key"]))
        if found != key:
            raise RuntimeError(f"FID reference cache {path}: expected key {key}, found {found}. "
                               "Delete the file to recompute it.")
        return ReferenceStats(mu=stored["mu"], sigma=stored["sigma"], features=stored["features"], key=found)


def reference_stats(*, images_fn: Callable[[], "object"], key: dict, cache_dir: str | os.PathLike | None,
                    extractor) -> ReferenceStats:
    """Reference statistics, computed once and cached to ``cache_dir`` (None: no cache).

    images_fn:  ``() -> uint8 (N, C, H, W)``, called only on a cache miss.
    key:        what identifies the set (dataset, split, resolution, n, ...); the feature network's SHA-256
                and the cache format are added, the whole key is stored in the file and checked on load.
    extractor:  an ``InceptionFeatures`` (``features(uint8) -> (n, d)``, ``sha256``).
    """
    key = {**key, "feature_net_sha256": extractor.sha256, "format": CACHE_FORMAT}
    key = json.loads(json.dumps(key, sort_keys=True))  # canonical: tuples → lists, as stored
    path = stats_cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and path.is_file():
        return _load_stats(path, key)
    feats = extractor.features(images_fn())
    mu, sigma = feature_stats(feats)
    stats = ReferenceStats(mu=mu, sigma=sigma, features=feats.astype(np.float32), key=key)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(partial, mu=stats.mu, sigma=stats.sigma, features=stats.features, key=np.array(json.dumps(key)))
        os.replace(partial, path)  # atomic: concurrent readers never see half a file
    return stats
