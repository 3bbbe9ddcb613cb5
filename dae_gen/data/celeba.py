"""CelebA (Liu et al. 2015), aligned-and-cropped JPEGs, preprocessed as NCSN / NCSNv2 (centre crop 140, resize),
cached once as a uint8 ``.npy``; datasets larger than memory stay memory-mapped (``MemmapImageData``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dae_gen.data.base import SCALES, DataError, ImageTensorData, MemmapImageData
from dae_gen.data.files import PathLike, check_choice
from dae_gen.data.image_cache import RESAMPLE, cached_array, decode_all

CELEBA_IMAGES = "img_align_celeba"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_ATTRIBUTES = "list_attr_celeba.txt"
CELEBA_SPLITS = {"train": "0", "valid": "1", "test": "2", "all": None}
CELEBA_SOURCE_SIZE = (178, 218)  # (width, height) of an aligned image
CELEBA_CROP = 140
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def preprocess_celeba(image: Image.Image, *, image_size: int, resample: str = "bilinear") -> np.ndarray:
    """178×218 aligned face → uint8 ``(3, S, S)``: centre crop 140×140, then an antialiased resize to S×S.

    The NCSN / NCSNv2 pipeline ``CenterCrop(140)`` then ``Resize(S)`` (torchvision on PIL images, bilinear,
    whose PIL resize is antialiased); ``resample="bicubic"`` is the sharper alternative.
    """
    width, height = image.size
    left, top = round((width - CELEBA_CROP) / 2), round((height - CELEBA_CROP) / 2)  # 19, 39
    face = image.convert("RGB").crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
    face = face.resize((image_size, image_size), resample=RESAMPLE[resample])
    return np.asarray(face, dtype=np.uint8).transpose(2, 0, 1)  # (S, S, 3) → (3, S, S)


def _decode_celeba_file(path: Path, image_size: int, resample: str) -> np.ndarray:
    """Decode one JPEG with PIL, check its size, preprocess it."""
    try:
        with Image.open(path) as image:
            if image.size != CELEBA_SOURCE_SIZE:
                raise DataError(f"{path}: expected an aligned CelebA image of {CELEBA_SOURCE_SIZE[0]}×"
                                f"{CELEBA_SOURCE_SIZE[1]} (width×height), found {image.size[0]}×{image.size[1]}; "
                                f"use the 'Align&Cropped' img_align_celeba images")
            return preprocess_celeba(image, image_size=image_size, resample=resample)
    except OSError as err:
        raise DataError(f"{path}: cannot decode the image ({err}); the file is truncated or corrupt") from err


def _read_partition(path: Path, split: str) -> list[str]:
    code = CELEBA_SPLITS[split]
    names = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{number}: expected '<image>.jpg <0|1|2>', found {line!r}")
        if code is None or fields[1] == code:
            names.append(fields[0])
    return names


def _read_attributes(path: Path, names: Sequence[str]) -> np.ndarray:
    """``list_attr_celeba.txt`` (count, 40 names, then ``<image> ±1 × 40``) → ``(len(names), 40)`` uint8 0/1."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise DataError(f"{path}: expected a count line and an attribute-name line, found {len(lines)} lines")
    n_attributes = len(lines[1].split())
    rows = {}
    for number, line in enumerate(lines[2:], 3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != n_attributes + 1:
            raise DataError(f"{path}:{number}: expected an image name and {n_attributes} values, found "
                            f"{len(fields)} fields")
        rows[fields[0]] = fields[1:]
    missing = [name for name in names if name not in rows]
    if missing:
        raise DataError(f"{path}: no attributes for {len(missing)} images of the split, e.g. {missing[0]}")
    values = np.array([rows[name] for name in names], dtype=np.int8).reshape(len(names), n_attributes)
    return (values > 0).astype(np.uint8)


def _celeba_dir(root: PathLike | None, download: bool) -> Path:
    expected = f"{CELEBA_IMAGES}/*.jpg, {CELEBA_PARTITION}, {CELEBA_ATTRIBUTES}"
    how = (f"Get them with dataset.root=DIR dataset.download=true (torchvision; Google Drive often refuses "
           f"with a quota error), or download 'Align&Cropped Images' (img_align_celeba.zip) and the two list "
           f"files from {CELEBA_URL} and unpack them into DIR/celeba/")
    if root is None:
        raise DataError(f"CelebA: dataset.root is not set; expected {expected} in DIR/celeba. {how}")
    candidates = [Path(root) / "celeba", Path(root)]

    def complete(d: Path) -> bool:
        return (d / CELEBA_IMAGES).is_dir() and (d / CELEBA_PARTITION).is_file() and (d / CELEBA_ATTRIBUTES).is_file()

    found = next((d for d in candidates if complete(d)), None)
    if found is None and download:
        from dae_gen._torchvision import torchvision

        torchvision.datasets.CelebA(str(root), split="all", target_type="attr", download=True)
        found = next((d for d in candidates if complete(d)), None)
    if found is None:
        raise DataError(f"CelebA not found: expected {expected} in {' or '.join(str(d) for d in candidates)}. "
                        f"{how}")
    return found


def _build_celeba_array(paths: Sequence[Path], out: np.ndarray, image_size: int, resample: str) -> None:
    """Decode and preprocess every image into ``out`` ``(N, 3, S, S)``."""
    decode_all(paths, lambda p: _decode_celeba_file(p, image_size, resample), out)


def celeba(*, root: PathLike | None, split: str = "train", image_size: int = 64, scale: str = "unit",
           dequantize: bool = False, hflip: bool = False, cache: bool = True, cache_dir: PathLike | None = None,
           resample: str = "bilinear", max_in_memory_bytes: int = 4 * 2**30,
           download: bool = False) -> ImageTensorData:
    """CelebA aligned faces as ``(N, 3, S, S)`` uint8 (NCSN preprocessing), labels = 40 attributes as 0/1.

    root:                 folder holding ``celeba/`` (or that folder itself) with ``img_align_celeba/``,
                          ``list_eval_partition.txt`` and ``list_attr_celeba.txt``.
    split:                ``"train"`` (162 770), ``"valid"`` (19 867), ``"test"`` (19 962) or ``"all"``.
    image_size:           output side S (64: NCSNv2; 32: NCSN, DDE).
    cache:                preprocess once into ``celeba_<split>_<S>_<resample>.npy`` and reuse it.
    cache_dir:            where the cache lives; ``None`` = next to the data.
    resample:             ``"bilinear"`` (torchvision's default, as NCSN), ``"bicubic"`` or ``"lanczos"``.
    max_in_memory_bytes:  larger datasets stay memory-mapped on disk (``MemmapImageData``).
    download:             fetch CelebA into ``root`` with torchvision.
    """
    check_choice("split", split, list(CELEBA_SPLITS))
    check_choice("scale", scale, list(SCALES))
    check_choice("resample", resample, list(RESAMPLE))
    if not (isinstance(image_size, int) and 1 <= image_size <= CELEBA_CROP):
        raise ValueError(f"image_size must be an int in 1..{CELEBA_CROP}, got {image_size!r}")
    directory = _celeba_dir(root, download)
    names = _read_partition(directory / CELEBA_PARTITION, split)
    if not names:
        raise DataError(f"CelebA split {split!r} is empty: {directory / CELEBA_PARTITION} assigns it 0 images")
    labels = torch.from_numpy(_read_attributes(directory / CELEBA_ATTRIBUTES, names))
    paths = [directory / CELEBA_IMAGES / name for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"CelebA ({split}): {len(missing)} of {len(paths)} images listed in {CELEBA_PARTITION} "
                        f"are missing from {directory / CELEBA_IMAGES}, e.g. {missing[0].name}; unpack the "
                        f"complete img_align_celeba.zip there")
    shape = (len(paths), 3, image_size, image_size)
    cache_path = Path(cache_dir or directory) / f"celeba_{split}_{image_size}_{resample}.npy" if cache else None
    array = cached_array(cache_path, shape, lambda out: _build_celeba_array(paths, out, image_size, resample),
                         what="CelebA")
    options = dict(scale=scale, dequantize=dequantize, hflip=hflip, labels=labels, name=f"celeba{image_size}/{split}")
    if array.nbytes > max_in_memory_bytes:
        return MemmapImageData(array, **options)
    return ImageTensorData(torch.from_numpy(np.array(array)), **options)


__all__ = ["CELEBA_ATTRIBUTES", "CELEBA_IMAGES", "CELEBA_PARTITION", "CELEBA_SOURCE_SIZE", "celeba",
           "preprocess_celeba"]
