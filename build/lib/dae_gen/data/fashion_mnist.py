"""Fashion-MNIST (Xiao et al. 2017): IDX files, LeCun's MNIST format.

Read from ``dataset.root`` or from the files Debian's ``dataset-fashion-mnist`` installs; parsed and checked
here (torchvision only downloads).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from dae_gen.data.base import SCALES, DataError, ImageTensorData
from dae_gen.data.files import PathLike, check_choice, dpkg_files, find_in_dirs, unique_dirs

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
_IDX_UBYTE = 0x08


def read_idx(path: PathLike) -> np.ndarray:
    """Parse one IDX file (gzipped or raw; unsigned-byte data) into a uint8 array of its declared dims."""
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise DataError(f"{path}: the gzip stream is truncated or corrupt ({err}); replace the file "
                            f"(re-download it, or reinstall {FASHION_MNIST_PACKAGE})") from err
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != _IDX_UBYTE:
        raise DataError(f"{path}: not an unsigned-byte IDX file: expected magic 00 00 08 <ndim>, found "
                        f"{raw[:4].hex(' ') or 'an empty file'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header: expected {header} bytes for {ndim} dims, found "
                        f"{len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])  # big-endian uint32 sizes
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path}: IDX file is {state}: dims {dims} need {expected} bytes (uncompressed), "
                        f"found {len(raw)} bytes; replace the file (re-download it, or reinstall "
                        f"{FASHION_MNIST_PACKAGE})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)



def _fashion_mnist_dirs(root: Path) -> list[Path]:
    return [root / "FashionMNIST" / "raw", root]  # torchvision's layout, then a flat folder


def _locate_fashion_mnist(root: PathLike | None, split: str, download: bool) -> list[Path]:
    names = FASHION_MNIST_FILES[split]
    expected = ", ".join(f"{n}[.gz]" for n in names)
    if root is None:
        if download:
            raise DataError("Fashion-MNIST: download=true needs a folder to download into: set dataset.root=DIR")
        installed, why = dpkg_files(FASHION_MNIST_PACKAGE)
        found = find_in_dirs(names, unique_dirs([p.parent for p in installed if p.name.startswith(names)]))
        if found is not None:
            return found
        if not why:
            why = f"the package {FASHION_MNIST_PACKAGE} lists no {expected}"
        raise DataError(f"Fashion-MNIST ({split}) not found: dataset.root is not set and {why}. Expected "
                        f"{expected}. Get them with `sudo apt-get install {FASHION_MNIST_PACKAGE}`, or set "
                        f"dataset.root=DIR (DIR holding those files, or torchvision's DIR/FashionMNIST/raw), "
                        f"adding dataset.download=true to download them there with torchvision")
    dirs = _fashion_mnist_dirs(Path(root))
    found = find_in_dirs(names, dirs)
    if found is None and download:
        from dae_gen._torchvision import torchvision

        torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=True)
        found = find_in_dirs(names, dirs)
    if found is None:
        raise DataError(f"Fashion-MNIST ({split}) not found: expected {expected} in "
                        f"{' or '.join(str(d) for d in dirs)}. Get them with dataset.download=true (torchvision "
                        f"downloads into {Path(root) / 'FashionMNIST' / 'raw'}), `sudo apt-get install "
                        f"{FASHION_MNIST_PACKAGE}` with dataset.root=null, or point dataset.root at a folder "
                        f"holding the files")
    return found


def fashion_mnist(*, root: PathLike | None = None, split: str = "train", image_size: int = 28, scale: str = "unit",
                  dequantize: bool = False, download: bool = False) -> ImageTensorData:
    """Fashion-MNIST as ``(N, 1, S, S)`` uint8 with labels; ``image_size=32`` zero-pads 28→32 (2 px a side).

    root:        folder with the IDX files (flat, or torchvision's ``root/FashionMNIST/raw``); ``None`` reads
                 the files installed by Debian's ``dataset-fashion-mnist`` (found with ``dpkg -L``).
    split:       ``"train"`` (60 000) or ``"test"`` (10 000).
    image_size:  28, or 32 as in annealed DSM (Li et al. 2019), which pads to the ResNet's 32→16→8→4.
    download:    fetch missing files into ``root`` with torchvision (then read with our own parser: Debian's
                 recompressed files fail torchvision's checksums, so torchvision never reads them).
    """
    check_choice("split", split, list(FASHION_MNIST_FILES))
    check_choice("image_size", image_size, [28, 32])
    check_choice("scale", scale, list(SCALES))
    images_path, labels_path = _locate_fashion_mnist(root, split, download)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected images of shape (N, 28, 28), found {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{labels_path}: expected {images.shape[0]} labels to match {images_path}, found "
                        f"shape {labels.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: the {split} split is empty (0 images)")
    pad = (image_size - 28) // 2
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))[:, None]  # (N, 1, S, S), zero border
    return ImageTensorData(torch.from_numpy(images), labels=torch.from_numpy(labels.astype(np.int64)),
                           scale=scale, dequantize=dequantize, name=f"fashion_mnist{image_size}/{split}")


__all__ = ["FASHION_MNIST_FILES", "FASHION_MNIST_PACKAGE", "fashion_mnist", "read_idx"]
