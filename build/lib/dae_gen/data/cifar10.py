"""CIFAR-10 (Krizhevsky 2009): the "python version", pickled dicts written by Python 2's cPickle, read with a
restricted unpickler that resolves only the globals a genuine batch needs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from dae_gen.data.base import SCALES, DataError, ImageTensorData
from dae_gen.data.files import PathLike, check_choice, find_exact

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allow-list of a dataset's real files."""


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# The only globals a real batch references (array reconstruction), resolved lazily to the installed numpy.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,  # as written by numpy 1.x (the real files)
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,  # as written by numpy 2.x
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10 batches contain: dicts, lists, strings, ints and numpy arrays.

    Any global outside ``_CIFAR_GLOBALS`` (e.g. ``os.system``) would be code execution: refused unresolved.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise UnsafePickleError(
                f"refusing to unpickle the global {module}.{name}: CIFAR-10 batches only need "
                f"{', '.join(f'{m}.{n}' for m, n in _CIFAR_GLOBALS)}")
        return _CIFAR_GLOBALS[module, name]()


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` int64."""
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()  # Python 2 str → bytes
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}. This is not a genuine CIFAR-10 batch: delete it and "
                                f"re-download (dataset.download=true)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(err).__name__}: {err}); the file is "
                        f"truncated or corrupt: delete it and re-download (dataset.download=true)") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = {"data", "labels"} - batch.keys()
    if missing:
        raise DataError(f"{path}: expected keys b'data' and b'labels', missing {sorted(missing)}")
    data, labels = batch["data"], np.asarray(batch["labels"], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: expected b'data' as uint8 rows of 3072 = 3×32×32 pixels, found {found}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: expected {data.shape[0]} labels in 0..9, found shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels  # each row is R(1024) G(1024) B(1024), row-major 32×32


def _cifar_dirs(root: Path) -> list[Path]:
    return [root / CIFAR10_DIR, root]


def cifar10(*, root: PathLike | None, split: str = "train", scale: str = "unit", dequantize: bool = False,
            hflip: bool = False, download: bool = False) -> ImageTensorData:
    """CIFAR-10 as ``(N, 3, 32, 32)`` uint8 with labels, read from ``root/cifar-10-batches-py``.

    root:      folder holding ``cifar-10-batches-py/`` (or that folder itself).
    split:     ``"train"`` (50 000, ``data_batch_1..5``) or ``"test"`` (10 000, ``test_batch``).
    hflip:     random left-right flips per batch (NCSN / NCSNv2 ``random_flip``).
    download:  fetch and extract ``cifar-10-python.tar.gz`` into ``root`` with torchvision (md5-checked).
    """
    check_choice("split", split, list(CIFAR10_FILES))
    check_choice("scale", scale, list(SCALES))
    names = CIFAR10_FILES[split]
    how = (f"Get them with dataset.root=DIR dataset.download=true (torchvision downloads "
           f"cifar-10-python.tar.gz), or extract the 'CIFAR-10 python version' from {CIFAR10_URL} into DIR")
    if root is None:
        raise DataError(f"CIFAR-10 ({split}): dataset.root is not set; expected {', '.join(names)} in "
                        f"DIR/{CIFAR10_DIR}. {how}")
    dirs = _cifar_dirs(Path(root))
    found = find_exact(names, dirs)
    if found is None and download:
        from dae_gen._torchvision import torchvision  # defines the torchvision::nms schema before torchvision loads

        download_and_extract_archive = torchvision.datasets.utils.download_and_extract_archive
        source = torchvision.datasets.CIFAR10
        download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)
        found = find_exact(names, dirs)
    if found is None:
        raise DataError(f"CIFAR-10 ({split}) not found: expected {', '.join(names)} in "
                        f"{' or '.join(str(d) for d in dirs)}. {how}")
    batches = [_load_cifar_batch(path) for path in found]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    if images.shape[0] == 0:
        raise DataError(f"CIFAR-10 ({split}): the batches in {found[0].parent} hold 0 images")
    return ImageTensorData(torch.from_numpy(images), labels=torch.from_numpy(labels), scale=scale,
                           dequantize=dequantize, hflip=hflip, name=f"cifar10/{split}")


__all__ = ["CIFAR10_DIR", "CIFAR10_FILES", "UnsafePickleError", "cifar10"]
