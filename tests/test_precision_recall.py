"""Improved precision and recall (k-NN manifolds): identities and a hand-counted case."""

import pytest
import torch

from dae_gen.metrics.precision_recall import knn_radii, precision_recall


def features(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_a_set_against_itself_has_precision_and_recall_one():
    x = features(200, 0)
    assert precision_recall(x, x, k=3) == {"precision": 1.0, "recall": 1.0, "k": 3}


def test_disjoint_supports_have_precision_and_recall_zero():
    result = precision_recall(features(200, 0), features(150, 1, shift=100.0), k=3)
    assert result["precision"] == 0.0 and result["recall"] == 0.0


def test_radii_and_a_partly_covered_set():
    real = torch.arange(10, dtype=torch.float64)[:, None]  # points 0..9 on a line: the 3rd neighbour of i
    torch.testing.assert_close(knn_radii(real, k=3), torch.tensor([3., 2, 2, 2, 2, 2, 2, 2, 2, 3], dtype=torch.float64))
    fake = torch.tensor([[4.5], [11.9], [12.1], [50.0]], dtype=torch.float64)  # inside, inside (9 + 3), outside x2
    result = precision_recall(real, fake, k=3)
    assert result["precision"] == pytest.approx(0.5)
    # fake radii (k = 3 of 4 points): 45.5, 38.1, 37.9, 45.5 -> every real point is covered
    assert result["recall"] == 1.0


def test_k_must_leave_a_neighbour():
    with pytest.raises(ValueError, match="1 <= k < n"):
        knn_radii(features(3, 0), k=3)
