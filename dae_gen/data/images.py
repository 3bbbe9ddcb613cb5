"""Real image datasets read from their published on-disk formats: Fashion-MNIST, CIFAR-10, CelebA.

Each loader is a plain function with keyword arguments (a Hydra ``_target_``) returning an
``ImageTensorData`` (uint8 ``(N, C, H, W)`` kept whole on the training device). Files are located, parsed and
checked here; torchvision is used only to download (``download=True``). A missing or corrupt dataset raises
one ``DataError`` that says which files were expected where and how to get them.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dae_gen.data.base import SCALES, DataError, ImageTensorData

PathLike = str | os.PathLike


def _check_choice(what: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


def _unique_dirs(dirs: Sequence[Path]) -> list[Path]:
    seen, unique = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST (Xiao et al. 2017): IDX files, LeCun's MNIST format.
# ---------------------------------------------------------------------------------------------------------

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


def _dpkg_files(package: str) -> tuple[list[Path], str]:
    """Files installed by a Debian package (``dpkg -L``), and why none were found if so."""
    try:
        done = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return [], f"`dpkg -L {package}` could not run: {err}"
    if done.returncode != 0:
        return [], f"`dpkg -L {package}` failed: {done.stderr.strip() or f'exit status {done.returncode}'}"
    return [Path(line) for line in done.stdout.splitlines() if line.strip()], ""


def _find_in_dirs(names: Sequence[str], dirs: Sequence[Path]) -> list[Path] | None:
    """The first directory holding every ``name`` (``name`` or ``name.gz``): the paths, else None."""
    for directory in dirs:
        found = []
        for name in names:
            candidates = [directory / name, directory / f"{name}.gz"]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


def _fashion_mnist_dirs(root: Path) -> list[Path]:
    return [root / "FashionMNIST" / "raw", root]  # torchvision's layout, then a flat folder


def _locate_fashion_mnist(root: PathLike | None, split: str, download: bool) -> list[Path]:
    names = FASHION_MNIST_FILES[split]
    expected = ", ".join(f"{n}[.gz]" for n in names)
    if root is None:
        if download:
            raise DataError("Fashion-MNIST: download=true needs a folder to download into: set dataset.root=DIR")
        installed, why = _dpkg_files(FASHION_MNIST_PACKAGE)
        found = _find_in_dirs(names, _unique_dirs([p.parent for p in installed if p.name.startswith(names)]))
        if found is not None:
            return found
        if not why:
            why = f"the package {FASHION_MNIST_PACKAGE} lists no {expected}"
        raise DataError(f"Fashion-MNIST ({split}) not found: dataset.root is not set and {why}. Expected "
                        f"{expected}. Get them with `sudo apt-get install {FASHION_MNIST_PACKAGE}`, or set "
                        f"dataset.root=DIR (DIR holding those files, or torchvision's DIR/FashionMNIST/raw), "
                        f"adding dataset.download=true to download them there with torchvision")
    dirs = _fashion_mnist_dirs(Path(root))
    found = _find_in_dirs(names, dirs)
    if found is None and download:
        from dae_gen._torchvision import torchvision

        torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=True)
        found = _find_in_dirs(names, dirs)
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
    _check_choice("split", split, list(FASHION_MNIST_FILES))
    _check_choice("image_size", image_size, [28, 32])
    _check_choice("scale", scale, list(SCALES))
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


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 (Krizhevsky 2009): the "python version", pickled dicts written by Python 2's cPickle.
# ---------------------------------------------------------------------------------------------------------

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
    _check_choice("split", split, list(CIFAR10_FILES))
    _check_choice("scale", scale, list(SCALES))
    names = CIFAR10_FILES[split]
    how = (f"Get them with dataset.root=DIR dataset.download=true (torchvision downloads "
           f"cifar-10-python.tar.gz), or extract the 'CIFAR-10 python version' from {CIFAR10_URL} into DIR")
    if root is None:
        raise DataError(f"CIFAR-10 ({split}): dataset.root is not set; expected {', '.join(names)} in "
                        f"DIR/{CIFAR10_DIR}. {how}")
    dirs = _cifar_dirs(Path(root))
    found = _find_exact(names, dirs)
    if found is None and download:
        from dae_gen._torchvision import torchvision  # defines the torchvision::nms schema before torchvision loads

        download_and_extract_archive = torchvision.datasets.utils.download_and_extract_archive
        source = torchvision.datasets.CIFAR10
        download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)
        found = _find_exact(names, dirs)
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


def _find_exact(names: Sequence[str], dirs: Sequence[Path]) -> list[Path] | None:
    for directory in dirs:
        paths = [directory / name for name in names]
        if all(p.is_file() for p in paths):
            return paths
    return None


# ---------------------------------------------------------------------------------------------------------
# CelebA (Liu et al. 2015), aligned-and-cropped JPEGs, preprocessed as NCSN / NCSNv2.
# ---------------------------------------------------------------------------------------------------------

CELEBA_IMAGES = "img_align_celeba"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_ATTRIBUTES = "list_attr_celeba.txt"
CELEBA_SPLITS = {"train": "0", "valid": "1", "test": "2", "all": None}
CELEBA_SOURCE_SIZE = (178, 218)  # (width, height) of an aligned image
CELEBA_CROP = 140
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


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
    """Decode and preprocess every image into ``out`` ``(N, 3, S, S)`` (PIL releases the GIL: threads)."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, pixels in enumerate(pool.map(lambda p: _decode_celeba_file(p, image_size, resample), paths)):
            out[i] = pixels


def _load_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A memory-mapped cache of the right shape and dtype, else None (missing or corrupt: rebuild)."""
    if not path.is_file():
        return None
    try:
        cached = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return cached if cached.shape == shape and cached.dtype == np.uint8 else None


def _write_cache(path: Path, paths: Sequence[Path], shape: tuple[int, ...], image_size: int,
                 resample: str) -> np.ndarray:
    """Preprocess into ``path`` atomically: fill a temporary ``.npy`` in the same folder, then rename."""
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        _build_celeba_array(paths, array, image_size, resample)
        array.flush()
        del array
        os.replace(temporary, path)
    except OSError as err:
        raise DataError(f"cannot write the CelebA cache {path} ({err}); set dataset.cache_dir=DIR to a "
                        f"writable folder, or dataset.cache=false to preprocess in memory every run") from err
    finally:
        if temporary.exists():
            temporary.unlink()
    return np.load(path, mmap_mode="r", allow_pickle=False)


class MemmapImageData(ImageTensorData):
    """An image dataset too big to hold in memory: a read-only uint8 ``(N, C, H, W)`` memmap on disk.

    Same interface as ``ImageTensorData``; ``batch`` gathers the shuffled indices from the memmap on the CPU,
    then moves only that batch to ``device``.
    """

    def __init__(self, images: np.ndarray, *, scale: str = "unit", dequantize: bool = False, hflip: bool = False,
                 labels: Tensor | None = None, name: str = "images"):
        self._device = torch.device("cpu")
        super().__init__(images, scale=scale, dequantize=dequantize, hflip=hflip, labels=labels, name=name)

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "MemmapImageData":
        self._device = torch.device(device)
        self._order = None
        return self

    def _gather(self, indices: Tensor) -> Tensor:
        """Read the rows at ``indices`` from disk and move only them to the device."""
        rows = np.ascontiguousarray(self.images[indices.cpu().numpy()])  # (B, C, H, W) uint8
        return torch.from_numpy(rows).to(self.device)


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
    resample:             ``"bilinear"`` (torchvision's default, as NCSN) or ``"bicubic"``.
    max_in_memory_bytes:  larger datasets stay memory-mapped on disk (``MemmapImageData``).
    download:             fetch CelebA into ``root`` with torchvision.
    """
    _check_choice("split", split, list(CELEBA_SPLITS))
    _check_choice("scale", scale, list(SCALES))
    _check_choice("resample", resample, list(RESAMPLE))
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
    if cache:
        cache_path = Path(cache_dir or directory) / f"celeba_{split}_{image_size}_{resample}.npy"
        array = _load_cache(cache_path, shape)
        if array is None:
            array = _write_cache(cache_path, paths, shape, image_size, resample)
    else:
        array = np.empty(shape, dtype=np.uint8)
        _build_celeba_array(paths, array, image_size, resample)
    options = dict(scale=scale, dequantize=dequantize, hflip=hflip, labels=labels, name=f"celeba{image_size}/{split}")
    if array.nbytes > max_in_memory_bytes:
        return MemmapImageData(array, **options)
    return ImageTensorData(torch.from_numpy(np.array(array)), **options)
