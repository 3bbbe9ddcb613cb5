"""Small fake CIFAR-10 and CelebA datasets written in the real on-disk formats (for tests and CPU debug runs).

The images have structure (class-dependent shapes; cartoon faces) so that a model trained for a few minutes
on a CPU produces something recognisable. The readers (``dae_gen.data.cifar10``, ``dae_gen.data.celeba``) cannot
tell these files from the real ones, except by their contents.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dae_gen.data.celeba import CELEBA_ATTRIBUTES, CELEBA_IMAGES, CELEBA_PARTITION, CELEBA_SOURCE_SIZE
from dae_gen.data.cifar10 import CIFAR10_DIR
from dae_gen.data.files import PathLike

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CELEBA_ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


# ---------------------------------------------------------------------------------------------------------
# Python 2 cPickle, protocol 2: what the CIFAR-10 "python version" files are. Python 3 cannot write this
# (its bytes pickle as _codecs.encode calls under protocol 2), so the opcodes are emitted directly.
# ---------------------------------------------------------------------------------------------------------

def _py2_pickle(obj) -> bytes:
    """``obj`` (dict, list, tuple, bytes, int, bool, None, uint8 ndarray) as Python 2 ``cPickle`` protocol 2."""
    out = bytearray(b"\x80\x02")  # PROTO 2
    _emit(obj, out)
    out += b"."  # STOP
    return bytes(out)


def _emit(obj, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"  # NEWTRUE / NEWFALSE
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += b"K" + bytes([obj])  # BININT1
        elif 0 <= obj < 65536:
            out += b"M" + struct.pack("<H", obj)  # BININT2
        else:
            out += b"J" + struct.pack("<i", obj)  # BININT
    elif isinstance(obj, bytes):  # a Python 2 str
        if len(obj) < 256:
            out += b"U" + bytes([len(obj)]) + obj  # SHORT_BINSTRING
        else:
            out += b"T" + struct.pack("<I", len(obj)) + obj  # BINSTRING
    elif isinstance(obj, tuple):
        if 1 <= len(obj) <= 3:
            for item in obj:
                _emit(item, out)
            out += b"\x85\x86\x87"[len(obj) - 1:len(obj)]  # TUPLE1/2/3
        else:
            out += b"("
            for item in obj:
                _emit(item, out)
            out += b"t"  # TUPLE
    elif isinstance(obj, list):
        out += b"]"  # EMPTY_LIST, then APPENDS in batches of 1000 as cPickle does
        for start in range(0, len(obj), 1000):
            out += b"("
            for item in obj[start:start + 1000]:
                _emit(item, out)
            out += b"e"
    elif isinstance(obj, dict):
        out += b"}"  # EMPTY_DICT, then SETITEMS
        if obj:
            out += b"("
            for key, value in obj.items():
                _emit(key, out)
                _emit(value, out)
            out += b"u"
    elif isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        # ndarray.__reduce__ of numpy 1.x: _reconstruct(ndarray, (0,), 'b'), then
        # __setstate__((1, shape, dtype, is_fortran, raw bytes)); dtype('u1') with state (3, '|', ...).
        out += b"cnumpy.core.multiarray\n_reconstruct\n"  # GLOBAL: the callable
        out += b"cnumpy\nndarray\n"
        _emit((0,), out)
        _emit(b"b", out)
        out += b"\x87R"  # TUPLE3 (ndarray, (0,), 'b'), REDUCE
        out += b"(K\x01"  # MARK, state version 1
        _emit(tuple(obj.shape), out)
        out += b"cnumpy\ndtype\n"
        _emit((b"u1", 0, 1), out)
        out += b"R"
        _emit((3, b"|", None, None, None, -1, -1, 0), out)
        out += b"b"  # BUILD the dtype
        _emit(False, out)
        _emit(np.ascontiguousarray(obj).tobytes(), out)
        out += b"tb"  # TUPLE, BUILD the array
    else:
        raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------------------

def _fake_cifar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One coloured shape per class on a plain background: ``(N, 3, 32, 32)`` uint8."""
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)  # (32, 32)
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(11, 21, size=2)
        radius = rng.uniform(6, 11)
        dy, dx = yy - cy, xx - cx
        masks = (
            dy**2 + dx**2 < radius**2,                                   # disk
            (abs(dy) < radius * 0.8) & (abs(dx) < radius * 0.8),         # square
            (yy // 4) % 2 == 0,                                          # horizontal stripes
            (xx // 4) % 2 == 0,                                          # vertical stripes
            abs(np.sqrt(dy**2 + dx**2) - radius) < 2.0,                  # ring
            (abs(dy) < 2.5) | (abs(dx) < 2.5),                           # cross
            xx + yy < cx + cy,                                           # diagonal half
            ((yy // 8) + (xx // 8)) % 2 == 0,                            # checkerboard
            (dy > -radius) & (abs(dx) < (dy + radius) * 0.6),            # triangle
            np.exp(-(dy**2 + dx**2) / (2 * radius**2)) > 0.5,            # soft blob
        )
        mask = masks[int(label)][None]  # (1, 32, 32)
        background, foreground = rng.uniform(0, 255, size=(2, 3, 1, 1))
        pixels = np.where(mask, foreground, background) + rng.normal(0, 6, size=(3, 32, 32))
        images[i] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return images


def write_fake_cifar10(root: PathLike, *, n_train: int = 500, n_test: int = 100,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``root/cifar-10-batches-py/`` (5 train batches, ``test_batch``, ``batches.meta``) as the real files.

    Returns the written data per split: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64.
    """
    rng = np.random.default_rng(seed)
    directory = Path(root) / CIFAR10_DIR
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        images = _fake_cifar_images(labels, rng)
        written[split] = (images, labels)
        parts = np.array_split(np.arange(n), 5 if split == "train" else 1)
        for number, part in enumerate(parts, 1):
            batch = {
                b"batch_label": (f"training batch {number} of 5" if split == "train"
                                 else "testing batch 1 of 1").encode(),
                b"labels": [int(label) for label in labels[part]],
                b"data": images[part].reshape(len(part), 3072),  # rows: R(1024) G(1024) B(1024)
                b"filenames": [f"fake_{CIFAR10_CLASSES[labels[j]]}_{j:05d}.png".encode() for j in part],
            }
            name = f"data_batch_{number}" if split == "train" else "test_batch"
            (directory / name).write_bytes(_py2_pickle(batch))
    meta = {b"num_cases_per_batch": max(1, -(-n_train // 5)), b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(_py2_pickle(meta))
    return written


# ---------------------------------------------------------------------------------------------------------
# CelebA
# ---------------------------------------------------------------------------------------------------------

_HAIR = {"Black_Hair": (25, 20, 20), "Blond_Hair": (225, 195, 110), "Brown_Hair": (110, 70, 40),
         "Gray_Hair": (160, 160, 165)}


def _fake_face(rng: np.random.Generator) -> tuple[Image.Image, dict[str, bool]]:
    """A 178×218 cartoon face centred like an aligned CelebA image, and the attributes it shows."""
    width, height = CELEBA_SOURCE_SIZE
    top, bottom = rng.uniform(40, 220, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]  # vertical background gradient
    background = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3))
    image = Image.fromarray(np.rint(background).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    hair_name = str(rng.choice(list(_HAIR)))
    skin = tuple(int(v) for v in rng.uniform([170, 120, 90], [250, 200, 170]))
    cx, cy = 89 + rng.uniform(-4, 4), 120 + rng.uniform(-4, 4)
    face_w, face_h = rng.uniform(34, 44), rng.uniform(46, 56)
    draw.ellipse((cx - face_w - 8, cy - face_h - 14, cx + face_w + 8, cy + face_h * 0.4), fill=_HAIR[hair_name])
    draw.ellipse((cx - face_w, cy - face_h, cx + face_w, cy + face_h), fill=skin)
    eye_y, eye_dx = cy - 12, rng.uniform(13, 18)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse((ex - 5, eye_y - 3, ex + 5, eye_y + 3), fill=(250, 250, 250))
        draw.ellipse((ex - 2.5, eye_y - 2.5, ex + 2.5, eye_y + 2.5), fill=(40, 30, 30))
    glasses = bool(rng.random() < 0.2)
    if glasses:
        for side in (-1, 1):
            ex = cx + side * eye_dx
            draw.rectangle((ex - 9, eye_y - 7, ex + 9, eye_y + 7), outline=(20, 20, 20), width=2)
        draw.line((cx - eye_dx + 9, eye_y, cx + eye_dx - 9, eye_y), fill=(20, 20, 20), width=2)
    draw.line((cx, eye_y + 4, cx - 3, cy + 8), fill=tuple(int(v * 0.8) for v in skin), width=2)  # nose
    smiling = bool(rng.random() < 0.5)
    mouth = (cx - 12, cy + 14, cx + 12, cy + 30)
    lips = (170, 60, 70)
    if smiling:
        draw.chord(mouth, 0, 180, fill=lips)
    else:
        draw.line((cx - 10, cy + 22, cx + 10, cy + 22), fill=lips, width=3)
    shown = {name: name == hair_name for name in _HAIR}
    shown.update(Eyeglasses=glasses, Smiling=smiling, Mouth_Slightly_Open=smiling)
    return image, shown


def write_fake_celeba(root: PathLike, *, n: int = 64, seed: int = 0, quality: int = 95) -> dict[str, int]:
    """Write ``root/celeba/`` (``img_align_celeba/*.jpg`` 178×218, partition and attribute lists) as the real files.

    The partition is contiguous like the real one: about 80 % train, 10 % valid, 10 % test.
    Returns the number of images per split.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    directory = Path(root) / "celeba"
    (directory / CELEBA_IMAGES).mkdir(parents=True, exist_ok=True)
    sizes = {"train": n - 2 * (n // 10), "valid": n // 10, "test": n // 10}
    codes = [0] * sizes["train"] + [1] * sizes["valid"] + [2] * sizes["test"]
    partition, attribute_rows = [], []
    for index, code in enumerate(codes, 1):
        name = f"{index:06d}.jpg"
        image, shown = _fake_face(rng)
        image.save(directory / CELEBA_IMAGES / name, quality=quality)
        values = [1 if shown.get(attribute, rng.random() < 0.3) else -1 for attribute in CELEBA_ATTRIBUTE_NAMES]
        partition.append(f"{name} {code}\n")
        attribute_rows.append(name + " " + " ".join(f"{v:2d}" for v in values) + "\n")
    (directory / CELEBA_PARTITION).write_text("".join(partition))
    (directory / CELEBA_ATTRIBUTES).write_text(f"{n}\n" + " ".join(CELEBA_ATTRIBUTE_NAMES) + " \n"
                                               + "".join(attribute_rows))
    return sizes


def main(argv: list[str] | None = None) -> None:
    """``python -m dae_gen.data.fakes DIR``: write fake CIFAR-10 and CelebA under DIR for the debug presets."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", help="folder to write cifar-10-batches-py/ and celeba/ into")
    parser.add_argument("--n", type=int, default=200, help="images per fake dataset")
    args = parser.parse_args(argv)
    write_fake_cifar10(args.root, n_train=args.n, n_test=max(10, args.n // 5))
    write_fake_celeba(args.root, n=args.n)


if __name__ == "__main__":
    main()
