"""Improved precision and recall of generative models (Kynkäänniemi et al. 2019, §2): k-NN balls in feature space.

Each real feature φ_r gets the ball of radius ``NND_k(φ_r)``, its distance to its k-th nearest other real feature;
the real manifold is the union of these balls. precision = the fraction of generated features inside it; recall =
the fraction of real features inside the union of the generated set's own k-NN balls. The paper uses k = 3 on
VGG-16 fc2 features; here they are the Inception pool3 features of FID.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_features(features, name: str) -> torch.Tensor:
    out = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if out.ndim != 2:
        raise ValueError(f"{name}: expected features (n, d), got shape {tuple(out.shape)}")
    return out


def knn_radii(features, *, k: int = 3, batch: int = 1024) -> torch.Tensor:
    """Distance of each row of ``features (n, d)`` to its k-th nearest other row: ``(n,)`` float64."""
    feats = _as_features(features, "knn_radii")
    if not 1 <= int(k) < feats.shape[0]:
        raise ValueError(f"knn_radii: need 1 <= k < n, got k={k} for n={feats.shape[0]}")
    radii = []
    for start in range(0, feats.shape[0], int(batch)):
        dist = torch.cdist(feats[start:start + int(batch)], feats)  # (b, n); the row itself is the 0-th neighbour
        radii.append(dist.kthvalue(int(k) + 1, dim=1).values)
    return torch.cat(radii)


def manifold_coverage(manifold, radii: torch.Tensor, queries, *, batch: int = 1024) -> float:
    """The fraction of ``queries (m, d)`` inside a ball ``‖q − φ_i‖ ≤ radii_i`` around a row of ``manifold (n, d)``."""
    manifold, queries = _as_features(manifold, "manifold"), _as_features(queries, "queries")
    if manifold.shape[1] != queries.shape[1]:
        raise ValueError(f"features of different dimension: {manifold.shape[1]} vs {queries.shape[1]}")
    inside = []
    for start in range(0, queries.shape[0], int(batch)):
        dist = torch.cdist(queries[start:start + int(batch)], manifold)  # (b, n)
        inside.append((dist <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real_features, fake_features, *, k: int = 3) -> dict:
    """``{"precision", "recall", "k"}`` of generated features against real ones (Kynkäänniemi et al. 2019, Eqs. 1–2)."""
    real, fake = _as_features(real_features, "real_features"), _as_features(fake_features, "fake_features")
    precision = manifold_coverage(real, knn_radii(real, k=k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k=k), real)
    return {"precision": precision, "recall": recall, "k": int(k)}


__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]
