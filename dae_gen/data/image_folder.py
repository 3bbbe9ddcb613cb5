"""A folder of a researcher's own PNG / JPEG images, optionally one sub-folder per class, as an image dataset.

Each image is decoded with PIL (EXIF orientation applied), converted to grey or RGB, its shorter side resized to
``resolution`` (antialiased) and centre-cropped to ``resolution × resolution`` -- the ``Resize(S)`` then
``CenterCrop(S)`` of torchvision's and k-diffusion's image-folder pipelines. The whole folder is decoded once
into a uint8 cache named by a digest of its file list (paths, sizes, modification times) and the settings, so
adding, removing or editing an image rebuilds it; the seeded train/test split is drawn from the cached array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dae_gen.data.base import SCALES, DataError, ImageTensorData
from dae_gen.data.files import PathLike, check_choice
from dae_gen.data.image_cache import RESAMPLE, cache_key_digest, cached_array, decode_all

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test", "all")
MODES = {1: "L", 3: "RGB"}  # dataset.channels -> PIL mode
CACHE_FORMAT = 1  # bump when the preprocessing changes, so old caches are not read back


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    """Image files below ``folder`` (any depth; hidden files and folders skipped), sorted by relative path."""
    found = [p for p in folder.rglob("*") if _is_image(p)
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def list_image_folder(root: PathLike | None) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """The images of ``root`` and their integer labels: ``(paths, labels (N,) int64 or None, class names or None)``;
    the paths are absolute (``root`` resolved).

    Images directly in ``root``: no labels. Otherwise each sub-folder of ``root`` holding images is a class; sorted
    folder names give the label ids 0, 1, ... (torchvision's ``ImageFolder`` convention).
    """
    if root is None:
        raise DataError("image_folder: dataset.root is not set; point it at a folder of PNG/JPEG images "
                        "(all in it, or one sub-folder per class): dataset.root=DIR")
    folder = Path(root).expanduser()
    if not folder.exists():
        raise DataError(f"image_folder: dataset.root={root}: no such folder; give the folder that holds your "
                        f"PNG/JPEG images")
    if not folder.is_dir():
        raise DataError(f"image_folder: dataset.root={root} is a file, not a folder; give the folder that holds it")
    folder = folder.resolve()
    top = sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)
    classes = {d.name: _images_under(d) for d in sorted(folder.iterdir(), key=lambda p: p.name)
               if d.is_dir() and not d.name.startswith(".")}
    classes = {name: paths for name, paths in classes.items() if paths}
    if top and classes:
        raise DataError(f"image_folder: {folder} holds images both directly ({top[0].name}, ...) and in class "
                        f"sub-folders ({next(iter(classes))}/, ...); put every image in a class sub-folder, or "
                        f"all of them directly in {folder}")
    if top:
        return top, None, None
    if not classes:
        others = sum(1 for p in folder.rglob("*") if p.is_file())
        raise DataError(f"image_folder: no PNG or JPEG images in {folder} or its sub-folders ({others} other "
                        f"files); expected *.png / *.jpg / *.jpeg files, optionally one sub-folder per class")
    names = list(classes)
    paths = [p for name in names for p in classes[name]]
    labels = np.concatenate([np.full(len(classes[name]), k, dtype=np.int64) for k, name in enumerate(names)])
    return paths, labels, names


def preprocess_image(image: Image.Image, *, resolution: int, channels: int = 3, resize: bool = True,
                     resample: str = "bicubic") -> np.ndarray:
    """A PIL image → uint8 ``(C, R, R)``: EXIF orientation, grey (C=1) or RGB (C=3), then the shorter side resized
    to R (antialiased ``resample``) and the centre R × R cropped; ``resize=False``: the image must be R × R."""
    image = ImageOps.exif_transpose(image).convert(MODES[channels])
    width, height = image.size
    if not resize:
        if (width, height) != (resolution, resolution):
            raise ValueError(f"is {width}×{height}, expected {resolution}×{resolution} with dataset.resize=false; "
                             f"set dataset.resize=true to resize and centre-crop, or dataset.resolution to its size")
    else:
        if min(width, height) < resolution:
            raise ValueError(f"is {width}×{height}, smaller than dataset.resolution={resolution} on its shorter "
                             f"side; lower dataset.resolution or remove the image (images are not enlarged)")
        scale = resolution / min(width, height)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        if size != (width, height):
            image = image.resize(size, resample=RESAMPLE[resample])
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(image, dtype=np.uint8).reshape(resolution, resolution, channels)
    return pixels.transpose(2, 0, 1)  # (R, R, C) → (C, R, R)


def _decode_file(path: Path, resolution: int, channels: int, resize: bool, resample: str) -> np.ndarray:
    """Decode one file with PIL and preprocess it; any failure is one DataError naming the file."""
    try:
        with Image.open(path) as image:
            return preprocess_image(image, resolution=resolution, channels=channels, resize=resize,
                                    resample=resample)
    except ValueError as err:
        raise DataError(f"image_folder: {path} {err}") from err
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # not an image, truncated, corrupt
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"image_folder: {path}: cannot decode the image ({reason}); the file is truncated or "
                        f"corrupt: replace or remove it") from err


def _check_same_size(paths: list[Path]) -> None:
    """With resizing off every image must have one size: the first file whose size differs is named (header
    sizes, before EXIF rotation)."""
    first = None
    for path in paths:
        try:
            with Image.open(path) as image:
                size = image.size
        except (OSError, SyntaxError, Image.DecompressionBombError):
            continue  # named by the decoder
        if first is None:
            first = (path, size)
        elif size != first[1]:
            raise DataError(f"image_folder: mixed image sizes with dataset.resize=false: {first[0]} is "
                            f"{first[1][0]}×{first[1][1]} but {path} is {size[0]}×{size[1]}; set "
                            f"dataset.resize=true to resize and centre-crop every image")


def split_indices(n: int, *, split: str, test_fraction: float, split_seed: int) -> np.ndarray:
    """Sorted indices of ``split`` among n images: a seeded permutation's first round(test_fraction·n) are the
    test split, the rest train (``"all"``: every image)."""
    if split == "all":
        return np.arange(n)
    order = np.random.default_rng(split_seed).permutation(n)
    n_test = int(round(test_fraction * n))
    return np.sort(order[:n_test] if split == "test" else order[n_test:])


def image_folder(*, root: PathLike | None, split: str = "train", resolution: int = 32, channels: int = 3,
                 scale: str = "unit", dequantize: bool = False, hflip: bool = False, resize: bool = True,
                 resample: str = "bicubic", test_fraction: float = 0.1, split_seed: int = 0, cache: bool = True,
                 cache_dir: PathLike | None = None) -> ImageTensorData:
    """The images of a folder as uint8 ``(N, C, R, R)``; ``labels`` (N,) int64 from class sub-folders, if any.

    root:                 a folder of PNG/JPEG files, or of one sub-folder of them per class (label k = k-th
                          sub-folder name in sorted order; the names are ``info.classes``).
    split:                ``"train"``, ``"test"`` (``test_fraction`` of the images, held out) or ``"all"``.
    resolution:           output side R: the shorter side is resized to R, then the centre R × R is cropped.
    channels:             1 (grey) or 3 (RGB).
    resize:               ``False``: use the images as they are (every one must be R × R).
    resample:             the antialiased resize filter: ``"bicubic"``, ``"bilinear"`` or ``"lanczos"``.
    test_fraction:        share of the images in the test split, drawn by a permutation seeded with ``split_seed``.
    cache:                decode once into ``cache_dir/image_folder_<folder>_<R>px_<C>ch_<digest>.npy``; the
                          digest covers every file's path, size and modification time and the settings above.
    cache_dir:            where the cache lives; ``None`` = ``root/.dae_gen_cache`` (hidden files are not images).

    The split is held in memory (a 50 000-image folder at 64 px RGB: 0.6 GB).

    ``fingerprint`` (an attribute) identifies the folder's contents and split, for reference-statistics caches.
    """
    check_choice("split", split, SPLITS)
    check_choice("channels", channels, list(MODES))
    check_choice("scale", scale, list(SCALES))
    check_choice("resample", resample, list(RESAMPLE))
    if not (isinstance(resolution, int) and not isinstance(resolution, bool) and resolution >= 1):
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    paths, labels, classes = list_image_folder(root)
    folder = Path(root).expanduser().resolve()
    settings = {"resolution": resolution, "channels": channels, "resize": bool(resize),
                "resample": resample if resize else None}
    files = [[p.relative_to(folder).as_posix(), (stat := p.stat()).st_size, stat.st_mtime_ns] for p in paths]
    key = {"format": CACHE_FORMAT, "root": str(folder), "files": files, **settings}
    digest = cache_key_digest(key)
    selected = split_indices(len(paths), split=split, test_fraction=float(test_fraction), split_seed=split_seed)
    if len(selected) == 0:
        raise DataError(f"image_folder: the {split} split of {folder} is empty ({len(paths)} images, "
                        f"dataset.test_fraction={test_fraction}); add images or change dataset.test_fraction")

    def fill(out: np.ndarray) -> None:
        if not resize:
            _check_same_size(paths)
        decode_all(paths, lambda p: _decode_file(p, resolution, channels, bool(resize), resample), out)

    cache_path = None
    if cache:
        cache_path = Path(cache_dir or folder / ".dae_gen_cache") / (
            f"image_folder_{folder.name}_{resolution}px_{channels}ch_{digest}.npy")
    array = cached_array(cache_path, (len(paths), channels, resolution, resolution), fill, what="image-folder")
    fingerprint = cache_key_digest({"cache": digest, "split": split, "test_fraction": float(test_fraction),
                                    "split_seed": int(split_seed)})
    data = ImageTensorData(torch.from_numpy(np.ascontiguousarray(array[selected])), scale=scale,
                           dequantize=dequantize, hflip=hflip, name=f"{folder.name}/{split}", classes=classes,
                           labels=None if labels is None else torch.from_numpy(labels[selected]))
    data.fingerprint = fingerprint
    return data


__all__ = ["IMAGE_SUFFIXES", "image_folder", "list_image_folder", "preprocess_image", "split_indices"]
