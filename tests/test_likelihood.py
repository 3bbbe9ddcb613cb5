"""Probability-flow ODE log-likelihoods against closed forms: Gaussians, a 2-D mixture, and bits/dim under
uniform dequantisation of a known discrete distribution."""

import math

import pytest
import torch

from dae_gen.analytic import AnalyticGaussian
from dae_gen.density import GaussianMixture, MixtureScoreModel, grid_log_density, grid_points
from dae_gen.likelihood import (
    dequantization_offset,
    dequantized_bits_per_dim,
    model_bits_per_dim,
    model_log_likelihood,
    ode_log_likelihood,
)

SIGMA_MIN, SIGMA_MAX = 0.01, 1e4  # the prior N(0, σ_max² I) is off p_σmax by O(|μ|/σ_max) nats: 1e-4 here


def gaussian(dim: int = 3, seed: int = 0):
    """Mean, a full covariance, and the exact smoothed score ``−(Σ + σ²I)⁻¹(x − μ)`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=g, dtype=torch.float64)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    cov = a @ a.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)

    score = AnalyticGaussian(mean, cov).score

    def log_prob(x, sigma):
        law = torch.distributions.MultivariateNormal(mean, cov + sigma**2 * torch.eye(dim, dtype=torch.float64))
        return law.log_prob(x)

    return mean, cov, score, log_prob


def test_exact_divergence_gives_the_closed_form_gaussian_density():
    mean, cov, score, log_prob = gaussian()
    x = torch.distributions.MultivariateNormal(mean, cov).sample((16,))
    result = ode_log_likelihood(score, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, divergence="exact",
                                rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(result.log_likelihood, log_prob(x, SIGMA_MIN), atol=2e-3, rtol=0)
    assert (result.probe_stderr == 0).all() and result.nfe > 10


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(probe):
    mean, cov, score, log_prob = gaussian(seed=1)
    x = torch.distributions.MultivariateNormal(mean, cov).sample((8,))
    result = ode_log_likelihood(score, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, probe=probe, n_probes=64,
                                rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(0))
    exact = log_prob(x, SIGMA_MIN)
    z = (result.log_likelihood - exact) / result.probe_stderr
    assert (result.probe_stderr > 0).all()             # a full covariance: the probes do vary
    assert z.abs().max() < 4.0                          # every example within 4 standard errors
    assert abs(float(z.mean()) * math.sqrt(len(z))) < 4.0  # and no bias on average


def test_mixture_ode_density_matches_the_grid_normalised_density():
    mixture = GaussianMixture([[-1.5, 0.0], [1.5, 1.0]], [0.4, 0.6], [0.3, 0.7])
    model = MixtureScoreModel(mixture, sigmas=[1e4, 0.05])
    grid = grid_points(bounds=(-4.0, 4.0), n_grid=24)
    points = torch.cartesian_prod(grid.xs, grid.ys)  # (576, 2)
    ode = model_log_likelihood(model, points, divergence="exact", rtol=1e-6, atol=1e-6, batch_size=1024)
    # the unnormalised exact log-density, normalised on the grid by dae_gen.density
    smoothed = mixture.smoothed(0.05)
    normalised = grid_log_density(lambda x: smoothed.log_prob(x) + 3.0, bounds=(-4.0, 4.0), n_grid=24,
                                  dtype=torch.float64).log_density.reshape(-1)
    mass = smoothed.log_prob(points).exp().sum() * grid.cell_area  # the grid's share of the mass
    where = normalised > -6.0                                       # where the density is not negligible
    torch.testing.assert_close(ode.log_likelihood[where], normalised[where] + mass.log(), atol=5e-3, rtol=0)
    assert float((ode.log_likelihood.exp() * grid.cell_area).sum()) == pytest.approx(float(mass), abs=2e-3)


@pytest.mark.parametrize("data_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_bits_per_dim_of_a_known_discrete_distribution(data_range):
    """A density constant on each dequantisation cell, P(x)/cell volume: bits/dim is exactly −log₂ P(x)/D."""
    lo, hi = data_range
    dim, g = 4, torch.Generator().manual_seed(0)
    probs = torch.softmax(2.0 * torch.randn(256, generator=g, dtype=torch.float64), 0)  # one law for every pixel
    images = torch.multinomial(probs, 50 * dim, replacement=True, generator=g).reshape(50, 1, 2, 2).to(torch.uint8)
    cell = (hi - lo) / 256

    def log_density(y):
        pixel = ((y - lo) / cell).floor().long().clamp(0, 255)
        return (probs[pixel].log() - math.log(cell)).reshape(y.shape[0], -1).sum(1)

    result = dequantized_bits_per_dim(log_density, images, data_range=data_range, n_dequantizations=3,
                                      generator=torch.Generator().manual_seed(1))
    expected = -probs[images.long()].log2().reshape(50, -1).sum(1) / dim
    torch.testing.assert_close(result.per_example, expected, atol=1e-9, rtol=0)
    assert result.offset == dequantization_offset(data_range) == (8.0 if lo == 0 else 7.0)
    assert result.bits_per_dim == pytest.approx(float(expected.mean()), abs=1e-9)
    assert result.stderr == pytest.approx(float(expected.std() / math.sqrt(50)), rel=1e-9)


def test_model_bits_per_dim_of_a_gaussian_with_the_ode():
    """ODE bits/dim of dequantised pixels under an exact Gaussian score = the closed form averaged over the same u."""
    mixture = GaussianMixture([[0.4, 0.6, 0.5, 0.3]], [0.15], [1.0])
    model = AnalyticGaussian(mixture.means[0], std=0.15, data_shape=(1, 2, 2), sigmas=[1e4, 0.01])  # on images
    images = (torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    result = model_bits_per_dim(model, images, data_range=(0.0, 1.0), divergence="exact", rtol=1e-7, atol=1e-7)
    y = (images.double() + torch.rand(images.shape, generator=torch.Generator().manual_seed(0))) / 256
    exact = -mixture.smoothed(0.01).log_prob(y.reshape(6, -1)) / (4 * math.log(2)) + 8
    torch.testing.assert_close(result.per_example, exact, atol=1e-3, rtol=0)
    assert result.nfe > 0 and "+ 8" in result.convention
