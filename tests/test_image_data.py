"""Image datasets: real Debian Fashion-MNIST, fake CIFAR-10 / CelebA in their real on-disk formats."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dae_gen.data import celeba as celeba_module
from dae_gen.data import files as data_files
from dae_gen.data.base import DataError, ImageTensorData, MemmapImageData
from dae_gen.data.celeba import celeba, preprocess_celeba
from dae_gen.data.cifar10 import UnsafePickleError, cifar10
from dae_gen.data.fakes import write_fake_celeba, write_fake_cifar10
from dae_gen.data.fashion_mnist import FASHION_MNIST_PACKAGE, fashion_mnist, read_idx


def _debian_file(name: str) -> Path:
    files, why = data_files.dpkg_files(FASHION_MNIST_PACKAGE)
    hits = [p for p in files if p.name == name]
    if not hits:
        pytest.skip(f"Debian package {FASHION_MNIST_PACKAGE} not installed ({why or 'no ' + name})")
    return hits[0]


def _idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file written by hand: 00 00 08 ndim, big-endian dims, data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


# ---------------------------------------------------------------------------------------------------------
# torchvision shim
# ---------------------------------------------------------------------------------------------------------

def test_torchvision_shim_gives_working_datasets_and_transforms():
    import importlib

    from dae_gen._torchvision import torchvision  # defines the torchvision::nms schema before torchvision loads

    v2 = importlib.import_module("torchvision.transforms.v2")
    assert hasattr(torchvision.datasets, "CIFAR10") and hasattr(torchvision.datasets, "CelebA")
    assert hasattr(torch.ops.torchvision, "nms")  # the real kernel or our schema
    x = torch.arange(36.0).reshape(1, 6, 6)
    torch.testing.assert_close(v2.CenterCrop(2)(x), x[:, 2:4, 2:4])


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST (real data from the Debian package)
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fmnist_train():
    _debian_file("train-images-idx3-ubyte.gz")
    return fashion_mnist(split="train")


@pytest.fixture(scope="module")
def fmnist_test():
    _debian_file("t10k-images-idx3-ubyte.gz")
    return fashion_mnist(split="test")


def test_fashion_mnist_sizes_and_balanced_classes(fmnist_train, fmnist_test):
    assert fmnist_train.images.shape == (60000, 1, 28, 28) and fmnist_train.images.dtype == torch.uint8
    assert fmnist_test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(fmnist_train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(fmnist_test.labels, minlength=10).tolist() == [1000] * 10
    # Known facts of the dataset: first labels, and the training mean pixel 0.2860 used for normalisation.
    assert fmnist_train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert fmnist_test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert abs(fmnist_train.images.double().mean().item() / 255 - 0.2860) < 1e-4


def test_fashion_mnist_pixels_match_an_independent_reader(fmnist_test):
    raw = gzip.decompress(_debian_file("t10k-images-idx3-ubyte.gz").read_bytes())
    expected = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(10000, 28, 28)
    assert np.array_equal(fmnist_test.images[:, 0].numpy(), expected)


@pytest.mark.parametrize("scale, low, high", [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0)])
def test_fashion_mnist_scaling(fmnist_test, scale, low, high):
    data = ImageTensorData(fmnist_test.images[:2000], scale=scale)
    x = data.batch(2000, generator=torch.Generator().manual_seed(0))
    assert x.min().item() == low and x.max().item() == high  # Fashion-MNIST uses both extreme grey levels
    values = torch.unique(x)
    torch.testing.assert_close(values, low + (high - low) * torch.unique(fmnist_test.images[:2000]).float() / 255)


def test_fashion_mnist_padding_to_32(fmnist_test):
    padded = fashion_mnist(split="test", image_size=32, scale="symmetric")
    assert padded.shape == (1, 32, 32) and len(padded) == 10000
    assert torch.equal(padded.images[:, :, 2:30, 2:30], fmnist_test.images)
    border = padded.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.max().item() == 0
    x = padded.scale_uint8(padded.images[:8])
    assert (x[:, :, :2] == -1).all() and (x[:, :, :, -2:] == -1).all()  # zero pixels → −1 in [−1, 1]
    assert torch.equal(padded.labels, fmnist_test.labels)


def test_read_idx_exact_and_layouts(tmp_path):
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(pictures))  # raw
    (flat / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))  # gzipped
    torchvision_layout = tmp_path / "tv"
    shutil.copytree(flat, torchvision_layout / "FashionMNIST" / "raw")
    for root in (flat, torchvision_layout):
        data = fashion_mnist(root=root, split="test")
        assert np.array_equal(data.images[:, 0].numpy(), pictures)
        assert data.labels.tolist() == list(range(7))


def test_truncated_idx_is_a_clear_error(tmp_path):
    real = gzip.decompress(_debian_file("t10k-images-idx3-ubyte.gz").read_bytes())
    shutil.copy(_debian_file("t10k-labels-idx1-ubyte.gz"), tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(real[:-100], compresslevel=1))
    with pytest.raises(DataError) as caught:
        fashion_mnist(root=tmp_path, split="test")
    message = str(caught.value)
    assert str(bad) in message and "truncated" in message
    assert "7840016" in message and "7839916" in message  # 16 + 10000·28·28 expected, 100 fewer found


def test_truncated_gzip_stream_is_a_clear_error(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(_debian_file("t10k-labels-idx1-ubyte.gz").read_bytes()[:-50])
    with pytest.raises(DataError, match="gzip stream is truncated"):
        read_idx(path)


def test_wrong_idx_image_size_is_a_clear_error(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((3, 27, 27), np.uint8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match=r"expected images of shape \(N, 28, 28\), found \(3, 27, 27\)"):
        fashion_mnist(root=tmp_path, split="test")


def test_missing_fashion_mnist_names_files_and_remedies(tmp_path):
    with pytest.raises(DataError) as caught:
        fashion_mnist(root=tmp_path, split="train")
    message = str(caught.value)
    for expected in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", str(tmp_path / "FashionMNIST" / "raw"),
                     "download=true", "apt-get install dataset-fashion-mnist"):
        assert expected in message


def test_no_dpkg_is_a_clear_error(monkeypatch):
    def no_dpkg(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "dpkg")

    monkeypatch.setattr(data_files.subprocess, "run", no_dpkg)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist()


def test_bad_arguments_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="split"):
        fashion_mnist(split="validation")
    with pytest.raises(ValueError, match="image_size"):
        fashion_mnist(image_size=30)
    with pytest.raises(ValueError, match="split"):
        cifar10(root=tmp_path, split="val")
    with pytest.raises(ValueError, match="split"):
        celeba(root=tmp_path, split="val")


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 (fake batches in the real Python-2 pickle format)
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_fake_cifar10(root, n_train=103, n_test=17, seed=3)


@pytest.mark.parametrize("split, n", [("train", 103), ("test", 17)])
def test_fake_cifar10_reads_back_exactly(fake_cifar, split, n):
    root, written = fake_cifar
    data = cifar10(root=root, split=split)
    assert data.images.shape == (n, 3, 32, 32)
    assert np.array_equal(data.images.numpy(), written[split][0])
    assert np.array_equal(data.labels.numpy(), written[split][1])
    assert torch.equal(cifar10(root=root / "cifar-10-batches-py", split=split).images, data.images)


def test_cifar10_rows_are_red_green_blue_planes(fake_cifar):
    root, _ = fake_cifar
    with open(root / "cifar-10-batches-py" / "data_batch_2", "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")  # the files are Python 2 str-keyed dicts
    assert sorted(batch) == [b"batch_label", b"data", b"filenames", b"labels"]
    assert batch[b"batch_label"] == b"training batch 2 of 5"
    row = batch[b"data"][0]  # pixel (i, j) of channel c at c·1024 + 32·i + j
    first = cifar10(root=root).images[21].numpy()  # batch 1 holds 21 of the 103 images
    for c, i, j in [(0, 0, 0), (1, 0, 0), (2, 31, 31), (0, 5, 17), (2, 17, 5)]:
        assert first[c, i, j] == row[c * 1024 + 32 * i + j]


def test_cifar10_matches_torchvision_reader(fake_cifar, monkeypatch):
    from dae_gen._torchvision import torchvision

    root, _ = fake_cifar
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)  # fakes: other md5
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    reference = torchvision.datasets.CIFAR10(str(root), train=True, download=False)  # (N, 32, 32, 3) HWC
    ours = cifar10(root=root)
    assert np.array_equal(ours.images.numpy().transpose(0, 2, 3, 1), reference.data)
    assert ours.labels.tolist() == reference.targets
    assert reference.classes[0] == "airplane"


class _Hostile:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_hostile_pickle_is_refused(tmp_path, payload):
    write_fake_cifar10(tmp_path, n_train=10, n_test=2)
    marker = tmp_path / "pwned"
    if payload == "system":
        evil = _Hostile(f"touch {marker}")
    else:
        evil = type("Evil", (), {"__reduce__": lambda self: (eval, (f"open({str(marker)!r}, 'w')",))})()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": evil}, protocol=4))
    with pytest.raises(UnsafePickleError, match=f"refusing to unpickle the global .*{payload}"):
        cifar10(root=tmp_path, split="test")
    assert not marker.exists()


def test_truncated_cifar_batch_is_a_clear_error(tmp_path):
    write_fake_cifar10(tmp_path, n_train=10, n_test=4)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DataError, match="truncated or corrupt"):
        cifar10(root=tmp_path, split="test")


def test_missing_cifar10_names_files(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        cifar10(root=tmp_path)
    message = str(caught.value)
    assert "data_batch_5" in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "download=true" in message
    with pytest.raises(DataError, match="dataset.root is not set"):
        cifar10(root=None)


# ---------------------------------------------------------------------------------------------------------
# CelebA (fake JPEGs in the real layout)
# ---------------------------------------------------------------------------------------------------------

def _centre_box_image(centre=(200, 30, 90), outside=(10, 180, 60)) -> Image.Image:
    """178×218 image: the NCSN crop window (x 19..158, y 39..178) one colour, everything else another."""
    pixels = np.empty((218, 178, 3), np.uint8)
    pixels[:] = outside
    pixels[39:179, 19:159] = centre
    return Image.fromarray(pixels)


@pytest.mark.parametrize("size", [64, 32])
@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_celeba_crop_is_exactly_the_centre_140(size, resample):
    out = preprocess_celeba(_centre_box_image(), image_size=size, resample=resample)
    assert out.shape == (3, size, size) and out.dtype == np.uint8
    assert (out == np.array([200, 30, 90], np.uint8).reshape(3, 1, 1)).all()  # not one pixel of the outside


def test_celeba_orientation():
    pixels = np.zeros((218, 178, 3), np.uint8)
    pixels[:, :89, 0] = 255  # red on the left half of the crop window (x < 89 = 19 + 70)
    pixels[:109, :, 1] = 255  # green on its top half (y < 109 = 39 + 70)
    out = preprocess_celeba(Image.fromarray(pixels), image_size=64).astype(int)
    assert (out[0, :, :30] == 255).all() and (out[0, :, 34:] == 0).all()
    assert (out[1, :30, :] == 255).all() and (out[1, 34:, :] == 0).all()
    assert (out[2] == 0).all()


def test_celeba_preprocessing_equals_ncsn_torchvision_pipeline():
    from dae_gen._torchvision import torchvision  # defines the torchvision::nms schema before torchvision loads

    transforms = torchvision.transforms
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8))
    for size in (64, 32):
        ncsn = transforms.Compose([transforms.CenterCrop(140), transforms.Resize(size)])  # NCSNv2 datasets/__init__
        expected = np.asarray(ncsn(image)).transpose(2, 0, 1)
        assert np.array_equal(preprocess_celeba(image, image_size=size), expected)


@pytest.fixture
def fake_celeba(tmp_path):
    sizes = write_fake_celeba(tmp_path, n=20, seed=1)
    return tmp_path, sizes


def test_celeba_partition_sizes_and_attributes(fake_celeba):
    root, sizes = fake_celeba
    lines = (root / "celeba" / "list_eval_partition.txt").read_text().split("\n")
    counted = {name: sum(line.endswith(f" {code}") for line in lines) for name, code in
               [("train", 0), ("valid", 1), ("test", 2)]}
    assert sizes == counted == {"train": 16, "valid": 2, "test": 2}
    attribute_lines = (root / "celeba" / "list_attr_celeba.txt").read_text().splitlines()
    assert attribute_lines[0] == "20" and len(attribute_lines[1].split()) == 40
    for split, n in [*sizes.items(), ("all", 20)]:
        data = celeba(root=root, split=split, image_size=32, cache=False)
        assert len(data) == n and data.shape == (3, 32, 32) and data.labels.shape == (n, 40)
    test = celeba(root=root / "celeba", split="test", image_size=32, cache=False)
    row = attribute_lines[2 + 18].split()  # 000019.jpg, the first test image
    assert row[0] == "000019.jpg"
    assert test.labels[0].tolist() == [int(v == "1") for v in row[1:]]


def test_celeba_jpeg_geometry_end_to_end(fake_celeba):
    root, _ = fake_celeba
    _centre_box_image().save(root / "celeba" / "img_align_celeba" / "000001.jpg", quality=100, subsampling=0)
    data = celeba(root=root, image_size=64, cache=False)
    first = data.images[0].int()
    assert (first - torch.tensor([200, 30, 90]).reshape(3, 1, 1)).abs().max() <= 4  # JPEG is lossy
    with Image.open(root / "celeba" / "img_align_celeba" / "000002.jpg") as image:
        assert np.array_equal(data.images[1].numpy(), preprocess_celeba(image, image_size=64))


def test_celeba_cache_is_reused_and_rebuilt_when_corrupt(fake_celeba, monkeypatch):
    root, _ = fake_celeba
    first = celeba(root=root, split="train", image_size=32)
    cache = root / "celeba" / "celeba_train_32_bilinear.npy"
    assert cache.is_file() and np.load(cache).shape == (16, 3, 32, 32)
    assert not list(cache.parent.glob("*.tmp*"))

    decode = celeba_module._decode_celeba_file

    def refuse(*args):
        raise AssertionError("a cached load must not decode JPEGs")

    monkeypatch.setattr(celeba_module, "_decode_celeba_file", refuse)
    assert torch.equal(celeba(root=root, split="train", image_size=32).images, first.images)

    calls = []

    def counting(*args):
        calls.append(args[0])
        return decode(*args)

    monkeypatch.setattr(celeba_module, "_decode_celeba_file", counting)
    for corrupt in (b"not a numpy file", None):
        if corrupt is None:
            np.save(cache, np.zeros((15, 3, 32, 32), np.uint8))  # wrong shape: a stale cache
        else:
            cache.write_bytes(corrupt)
        calls.clear()
        assert torch.equal(celeba(root=root, split="train", image_size=32).images, first.images)
        assert len(calls) == 16


def test_celeba_memmap_when_too_big(fake_celeba):
    root, _ = fake_celeba
    held = celeba(root=root, split="train", image_size=32, hflip=True)
    mapped = celeba(root=root, split="train", image_size=32, hflip=True, max_in_memory_bytes=0)
    assert isinstance(mapped, MemmapImageData) and isinstance(mapped.images, np.memmap)
    assert mapped.shape == held.shape and len(mapped) == len(held) and mapped.kind == "image"
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):  # crosses an epoch boundary (16 images, batches of 7)
        torch.testing.assert_close(mapped.batch(7, generator=g1), held.batch(7, generator=g2), rtol=0, atol=0)
    state = mapped.state_dict()
    expected = mapped.batch(5, generator=torch.Generator().manual_seed(9))
    mapped.load_state_dict(state)
    torch.testing.assert_close(mapped.batch(5, generator=torch.Generator().manual_seed(9)), expected, rtol=0, atol=0)


def test_celeba_empty_split_and_bad_files(fake_celeba):
    root, _ = fake_celeba
    partition = root / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text().replace(" 2\n", " 1\n"))
    with pytest.raises(DataError, match="split 'test' is empty"):
        celeba(root=root, split="test", cache=False)
    Image.new("RGB", (100, 100)).save(root / "celeba" / "img_align_celeba" / "000003.jpg")
    with pytest.raises(DataError, match="178×218.*found 100×100"):
        celeba(root=root, split="train", cache=False)
    with pytest.raises(DataError, match="178×218.*found 100×100"):
        celeba(root=root, split="train")
    assert not list((root / "celeba").glob("*.npy*"))  # no cache, no temporary left behind
    (root / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(DataError, match="1 of 16 images .* are missing.*000003.jpg"):
        celeba(root=root, split="train", cache=False)


def test_missing_celeba_names_files(tmp_path):
    with pytest.raises(DataError) as caught:
        celeba(root=tmp_path)
    message = str(caught.value)
    for expected in ("img_align_celeba", "list_eval_partition.txt", "list_attr_celeba.txt",
                     str(tmp_path / "celeba"), "download=true"):
        assert expected in message
