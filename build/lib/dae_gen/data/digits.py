"""scikit-learn's bundled 8×8 handwritten digits (1797 images, grey levels 0–16): real data, offline."""

from __future__ import annotations

import numpy as np
import torch

from dae_gen.data.base import DataError, ImageTensorData


def digits(*, split: str = "all", scale: str = "unit", dequantize: bool = False, test_fraction: float = 0.2,
           seed: int = 0) -> ImageTensorData:
    """The UCI digits as ``(N, 1, 8, 8)`` uint8 (0–16 stretched to 0–255).

    split: ``"all"`` (1797), or a seeded ``"train"`` / ``"test"`` split with ``test_fraction`` held out.
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a core dependency
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    if split != "all":
        order = np.random.default_rng(seed).permutation(len(images))
        n_test = int(round(test_fraction * len(images)))
        keep = order[:n_test] if split == "test" else order[n_test:]
        images, labels = images[keep], labels[keep]
    return ImageTensorData(torch.from_numpy(images), labels=torch.from_numpy(labels), scale=scale,
                           dequantize=dequantize, name=f"digits/{split}")
