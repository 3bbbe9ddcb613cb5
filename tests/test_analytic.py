"""The analytic score models are exact: their scores are the gradients of their closed-form log-densities."""

import torch

from dae_gen.analytic import AnalyticGaussian
from dae_gen.density import GaussianMixture, MixtureScoreModel
from dae_gen.score import ScoreModel


def _autograd_score(log_prob, x, sigma):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x, sigma).sum(), x)
    return grad


def _correlated(dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return torch.randn(dim, generator=g, dtype=torch.float64), a @ a.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)


def test_gaussian_score_is_the_gradient_of_its_smoothed_log_density():
    mean, cov = _correlated()
    model = AnalyticGaussian(mean, cov, data_shape=(1, 2, 2))
    assert isinstance(model, ScoreModel)
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    for sigma in (0.0, 0.3, 2.0):
        expected = _autograd_score(lambda y, s: model.log_prob(y, s), x, sigma)
        assert torch.allclose(model.score(x, torch.full((5,), sigma)), expected, atol=1e-10)
    per_example = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    rows = torch.stack([model.score(x[i:i + 1], per_example[i:i + 1])[0] for i in range(5)])
    assert torch.allclose(model.score(x, per_example), rows, atol=1e-12)


def test_gaussian_log_density_and_samples_match_torch_distributions():
    mean, cov = _correlated(3, seed=1)
    model = AnalyticGaussian(mean, cov)
    x = torch.randn(7, 3, dtype=torch.float64)
    reference = torch.distributions.MultivariateNormal(mean, cov + 0.25 * torch.eye(3, dtype=torch.float64))
    assert torch.allclose(model.log_prob(x, 0.5), reference.log_prob(x), atol=1e-10)
    draws = model.sample(200_000, sigma=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(draws.mean(0), mean, atol=0.01)
    assert torch.allclose(torch.cov(draws.T), reference.covariance_matrix, atol=0.02)


def test_gaussian_generate_is_one_pass_exact_draws_of_the_data_in_float32():
    from dae_gen.samplers import sample_generator
    from dae_gen.score import GenerativeModel

    mean, cov = _correlated(4, seed=3)
    model = AnalyticGaussian(mean, cov, data_shape=(2, 2), sigmas=[1.0, 0.1])
    assert isinstance(model, GenerativeModel)
    draws = model.generate(100_000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (100_000, 2, 2) and draws.dtype == torch.float32
    # the data law itself (σ = 0, not the smallest level), the same draws as ``sample``
    assert torch.equal(draws, model.sample(100_000, generator=torch.Generator().manual_seed(0)).float())
    flat = draws.reshape(-1, 4).double()
    std_error = (cov.diagonal() / 100_000).sqrt()
    assert ((flat.mean(0) - mean).abs() < 4 * std_error).all()
    assert torch.allclose(torch.cov(flat.T), cov, atol=0.03)  # std error of an entry ≤ 0.006 here
    one_pass = sample_generator(model, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(one_pass, model.generate(8, generator=torch.Generator().manual_seed(0)))


def test_gaussian_conditional_is_the_schur_complement_of_the_joint():
    mean, cov = _correlated(4, seed=2)
    model = AnalyticGaussian(mean, cov)
    known = torch.tensor([True, False, True, False])
    values = torch.tensor([0.7, 99.0, -1.2, 99.0], dtype=torch.float64)
    cond_mean, cond_cov = model.conditional(known, values, sigma=0.3)
    # the conditional precision is the unknown block of the joint precision
    precision = torch.linalg.inv(cov + 0.09 * torch.eye(4, dtype=torch.float64))
    u = (~known).nonzero().flatten()
    assert torch.allclose(torch.linalg.inv(cond_cov), precision[u][:, u], atol=1e-9)
    # the conditional mean zeroes the score of the unknown entries at (mean, known values)
    x = values.clone()
    x[u] = cond_mean
    assert torch.allclose(model.score(x[None], 0.3)[0][u], torch.zeros(2, dtype=torch.float64), atol=1e-10)


def test_mixture_score_of_a_class_is_its_own_components_smoothed_score():
    mixture = GaussianMixture([[-2.0, 0.0], [2.0, 1.0]], [[0.5, 0.5], [0.3, 0.6]], [0.3, 0.7])
    model = MixtureScoreModel(mixture, sigmas=[1.0, 0.1], class_conditional=True)
    x = torch.randn(6, 2, dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.2, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    for k in (0, 1):
        component = GaussianMixture(mixture.means[k:k + 1], mixture.stds[k:k + 1], [1.0])
        rows = labels == k
        expected = torch.stack([component.smoothed(float(s)).score(x[i:i + 1])[0]
                                for i, s in zip(rows.nonzero().flatten(), sigma[rows])])
        assert torch.allclose(model.score(x, sigma, class_labels=labels)[rows], expected, atol=1e-12)
