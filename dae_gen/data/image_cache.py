"""Decoded images cached once on disk as a uint8 ``(N, C, H, W)`` ``.npy``, shared by the on-disk image readers.

A reader decodes its files with PIL (threads: PIL releases the GIL while decoding), writes the array atomically
(a temporary ``.npy`` in the same folder, renamed when complete, removed on any failure, so no half-written cache
is ever read back) and memory-maps it on later runs. What identifies a cache (split, size, the folder's file
list) is the reader's business: it names the file; :func:`cache_key_digest` turns a JSON-able key into a name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from dae_gen.errors import DataError

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS}


def cache_key_digest(key: dict) -> str:
    """16 hex digits of the SHA-256 of ``key`` as canonical JSON (sorted keys): equal keys, equal names."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def decode_all(paths: Sequence[Path], decode: Callable[[Path], np.ndarray], out: np.ndarray) -> None:
    """``out[i] = decode(paths[i])`` for every file, on up to 8 threads; the first error is raised (in order)."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, pixels in enumerate(pool.map(decode, paths)):
            out[i] = pixels


def load_cached_array(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A memory-mapped cache of the right shape and dtype, else None (missing or corrupt: rebuild)."""
    if not path.is_file():
        return None
    try:
        cached = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return cached if cached.shape == shape and cached.dtype == np.uint8 else None


def write_cached_array(path: Path, shape: tuple[int, ...], fill: Callable[[np.ndarray], None], *,
                       what: str) -> np.ndarray:
    """``fill`` a uint8 array of ``shape`` into ``path`` atomically and memory-map it.

    The array is filled in a temporary ``.npy`` beside ``path`` and renamed only when complete; on any failure
    (a corrupt image, a full disk) the temporary, and any folder made for it, is removed: nothing is left.
    what:  the dataset, for the message when the cache folder cannot be written.
    """
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    created = [d for d in [path.parent, *path.parent.parents] if not d.exists()]  # deepest first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        fill(array)
        array.flush()
        del array
        os.replace(temporary, path)
    except OSError as err:
        raise DataError(f"cannot write the {what} cache {path} ({err}); set dataset.cache_dir=DIR to a "
                        f"writable folder, or dataset.cache=false to preprocess in memory every run") from err
    finally:
        if temporary.exists():
            temporary.unlink()
        if not path.exists():  # failed: the folders made for it go too
            for folder in created:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
    return np.load(path, mmap_mode="r", allow_pickle=False)


def cached_array(path: Path | None, shape: tuple[int, ...], fill: Callable[[np.ndarray], None], *,
                 what: str) -> np.ndarray:
    """The array cached at ``path`` if it is complete, else ``fill`` it there; ``path=None``: fill in memory."""
    if path is None:
        array = np.empty(shape, dtype=np.uint8)
        fill(array)
        return array
    array = load_cached_array(path, shape)
    return array if array is not None else write_cached_array(path, shape, fill, what=what)


__all__ = ["RESAMPLE", "cache_key_digest", "cached_array", "decode_all", "load_cached_array", "write_cached_array"]
