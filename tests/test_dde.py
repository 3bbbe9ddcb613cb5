"""Denoising density estimators, the DDE generative model, and density estimation (grid normalisation,
importance sampling, the exact Gaussian mixture), against closed forms."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from conftest import fit_on_mixture
from dae_gen.density import (
    GaussianMixture,
    MixtureScoreModel,
    grid_kl,
    grid_log_density,
    importance_log_likelihood,
)
from dae_gen.nets.mlp import GeneratorMLP, ScalarMLP
from dae_gen.objectives.dde import DDEGenerativeModel, DenoisingDensityEstimator
from dae_gen.samplers.temperature import sample_generator


def three_modes() -> GaussianMixture:
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    return GaussianMixture(1.5 * torch.stack([angles.cos(), angles.sin()], 1), [0.3] * 3, [0.5, 0.3, 0.2])


class ExactLogDensity(nn.Module):
    """A fixed "DDE" whose output is an exact log-density plus a constant."""

    def __init__(self, mixture: GaussianMixture, constant: float = 0.0):
        super().__init__()
        self.mixture, self.constant = mixture, constant

    def forward(self, x):
        return self.mixture.log_prob(x) + self.constant


class QuadraticLogDensity(nn.Module):
    """``f_a(x) = −½ a ‖x‖²``, so ``x̃ + σ²∇f(x̃) = (1 − σ²a) x̃``."""

    def __init__(self, *, data_shape, a: float = 1.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a), dtype=torch.float64))

    def forward(self, x):
        return -0.5 * self.a * x.reshape(x.shape[0], -1).pow(2).sum(1)


# -- the exact mixture -----------------------------------------------------------------------------
def test_mixture_score_is_the_gradient_of_log_prob_and_shapes_are_checked():
    mixture = GaussianMixture(torch.randn(4, 3), torch.rand(4, 3) + 0.2, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(mixture.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    x = torch.randn(50, 3, dtype=torch.float64)
    torch.testing.assert_close(mixture.score(x), torch.func.grad(lambda y: mixture.log_prob(y).sum())(x))
    assert mixture.log_prob(x.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 3), torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        mixture.log_prob(torch.zeros(5, 2))


def test_smoothed_mixture_is_the_law_of_noisy_samples():
    """One component: N(μ, s²) * N(0, σ²) = N(μ, s² + σ²) exactly; K components: moments of x + σε match."""
    single = GaussianMixture([[1.0, -2.0]], [[0.5, 0.3]], [1.0]).smoothed(0.4)
    torch.testing.assert_close(single.stds, torch.tensor([[0.5**2 + 0.16, 0.3**2 + 0.16]]).double().sqrt())
    mixture, sigma = three_modes(), 0.7
    gen = torch.Generator().manual_seed(0)
    noisy = mixture.sample(200000, gen) + sigma * torch.randn(200000, 2, generator=gen, dtype=torch.float64)
    smoothed = mixture.smoothed(sigma).sample(200000, gen)
    torch.testing.assert_close(noisy.mean(0), smoothed.mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(noisy.T), torch.cov(smoothed.T), atol=0.015, rtol=0)
    # the exact log-likelihood of noisy samples under the smoothed mixture beats the unsmoothed one
    assert mixture.smoothed(sigma).log_prob(noisy).mean() > mixture.log_prob(noisy).mean() + 0.5


def test_mixture_score_model_is_the_exact_smoothed_score_for_each_example_and_samples_the_mixture():
    """Each example's own σ: the score equals GaussianMixture.smoothed(σ).score; annealed Langevin on it (the score
    protocol) draws the mixture with its weights."""
    from dae_gen.noise import geometric_sigmas
    from dae_gen.samplers import sample_annealed_langevin
    from dae_gen.score import ScoreModel

    mixture = three_modes()
    model = MixtureScoreModel(mixture, sigmas=geometric_sigmas(3.0, 0.1, 10))
    assert isinstance(model, ScoreModel) and model.data_shape == (2,) and model.reference_sigma == pytest.approx(0.1)
    x = 3 * torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.0001, 0.1, 0.3, 1.0, 2.0, 5.0], dtype=torch.float64)
    expected = torch.stack([mixture.smoothed(float(s)).score(x[i:i + 1])[0] for i, s in enumerate(sigma)])
    torch.testing.assert_close(model.score(x, sigma), expected, rtol=1e-10, atol=1e-12)
    assert model.score(x.float(), sigma.float()).dtype == torch.float32
    samples = sample_annealed_langevin(model, 4000, n_steps_each=50, step_lr=2e-3, init="gaussian",
                                       generator=torch.Generator().manual_seed(1))
    nearest = torch.cdist(samples.double(), mixture.means).argmin(1)
    weights = torch.bincount(nearest, minlength=3).double() / len(samples)
    assert torch.allclose(weights, mixture.weights, atol=0.04), weights  # measured: within 0.02


def test_grid_normalisation_recovers_a_normalised_density_from_any_constant():
    """exp(log p + c) normalised on a grid that holds the mass equals p (to the grid's Riemann error)."""
    mixture = three_modes()
    grid = grid_log_density(lambda x: mixture.log_prob(x) + 17.3, bounds=(-3.5, 3.5), n_grid=120,
                            dtype=torch.float64)
    points = torch.cartesian_prod(grid.xs, grid.ys)
    exact = mixture.log_prob(points).reshape(120, 120)
    torch.testing.assert_close(grid.log_density, exact, atol=2e-3, rtol=0)
    assert float(grid.log_density.exp().sum() * grid.cell_area) == pytest.approx(1.0)
    assert grid_kl(grid.log_density, exact, grid.cell_area) == pytest.approx(0.0, abs=1e-6)
    rect = grid_log_density(mixture.log_prob, bounds=((-3.5, 3.5), (-3.0, 3.0)), n_grid=10, dtype=torch.float64)
    assert rect.cell_area == pytest.approx(0.7 * 0.6) and rect.ys[0] == pytest.approx(-2.7)


def test_importance_sampling_matches_the_exact_log_likelihood():
    """f = log N(m, (s² + σ²)I) + 3.7 in 5-D; the default proposal N(0, (1 + σ²)I) recovers log p within 0.02."""
    dim, s, sigma = 5, 0.8, 0.5
    target = GaussianMixture(torch.full((1, dim), 0.2), [math.sqrt(s**2 + sigma**2)], [1.0])
    gen = torch.Generator().manual_seed(0)
    x = target.sample(100, gen)
    estimate = importance_log_likelihood(ExactLogDensity(target, constant=3.7), x, sigma=sigma,
                                         n_proposal=100000, generator=gen, batch=25000)
    torch.testing.assert_close(estimate.log_likelihood, target.log_prob(x), atol=0.02, rtol=0)
    assert estimate.log_z == pytest.approx(3.7, abs=0.02)
    assert 0.3 * 100000 < estimate.ess <= 100000
    tight = importance_log_likelihood(ExactLogDensity(target), x, sigma=sigma, n_proposal=20000, generator=gen,
                                      proposal_mean=0.2, proposal_std=math.sqrt(s**2 + sigma**2))
    assert tight.log_z == pytest.approx(0.0, abs=1e-9) and tight.ess == pytest.approx(20000)  # q = p: w ≡ 1


# -- the denoising density estimator -----------------------------------------------------------------
def test_quadratic_dde_loss_matches_closed_form_and_its_optimum_is_log_p_sigma():
    """x ~ N(0, s²I): E ½‖(1 − σ²a)x̃ − x‖² = (D/2)[σ⁴a²s² + σ²(1 − σ²a)²] (sum over dims, ½ as logchan/dde),
    minimised at a = 1/(s² + σ²), i.e. f = log p_σ + const and ∇f = ∇log p_σ."""
    s, sigma, dim, batch = 0.7, 0.4, 3, 20000
    model = DenoisingDensityEstimator(net=QuadraticLogDensity, data_shape=(dim,), sigma=sigma)
    x = s * torch.randn(batch, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_star = 1 / (s**2 + sigma**2)

    def mean_loss(a: float) -> float:
        with torch.no_grad():
            model.net.a.fill_(a)
        torch.manual_seed(1)
        return float(model.losses("model", x).mean().detach())

    expected = 0.5 * dim * (sigma**4 * a_star**2 * s**2 + sigma**2 * (1 - sigma**2 * a_star) ** 2)
    at_opt = mean_loss(a_star)
    assert at_opt == pytest.approx(expected, rel=0.03)
    assert at_opt < mean_loss(0.9 * a_star) and at_opt < mean_loss(1.1 * a_star)
    mean_loss(a_star)
    y = torch.randn(10, dim, dtype=torch.float64)
    torch.testing.assert_close(model.score(y, torch.full((10,), 123.0)), -y / (s**2 + sigma**2))  # σ arg ignored
    assert model.sigmas.tolist() == pytest.approx([sigma]) and model.needs_double_backward


def test_trained_dde_density_matches_the_smoothed_mixture_on_a_grid():
    """MLP DDE (σ = 0.2) on a 3-mode mixture: grid KL(p_σ ‖ p̂) < 0.04 (measured ≈ 0.015), well below the
    KL(p_σ ‖ p) ≈ 0.077 between the smoothed and unsmoothed data."""
    torch.manual_seed(0)
    mixture, sigma = three_modes(), 0.2
    model = DenoisingDensityEstimator(net=functools.partial(ScalarMLP, hidden=64, depth=3), data_shape=(2,),
                                      sigma=sigma)
    fit_on_mixture(model, mixture, steps=1500, lr=3e-3, eta_min=1.5e-4)
    bounds = (-3.5, 3.5)
    estimate = grid_log_density(model.log_density, bounds=bounds, n_grid=100)
    exact = grid_log_density(mixture.smoothed(sigma).log_prob, bounds=bounds, n_grid=100, dtype=torch.float64)
    unsmoothed = grid_log_density(mixture.log_prob, bounds=bounds, n_grid=100, dtype=torch.float64)
    kl = grid_kl(exact.log_density, estimate.log_density, exact.cell_area)
    assert kl < 0.04, f"KL(p_σ ‖ p̂) = {kl:.4f}"
    assert grid_kl(exact.log_density, unsmoothed.log_density, exact.cell_area) > 0.06


# -- the generative model ------------------------------------------------------------------------------
def _dde_gen(sigma: float = 0.5, n_dde_steps: int = 5, hidden: int = 64) -> DDEGenerativeModel:
    return DDEGenerativeModel(generator=functools.partial(GeneratorMLP, hidden=hidden, depth=2),
                              dde=functools.partial(ScalarMLP, hidden=hidden, depth=2), data_shape=(2,), sigma=sigma,
                              latent_dim=2, n_dde_steps=n_dde_steps)


def test_phases_parameters_and_gradient_routing():
    torch.manual_seed(0)
    model = _dde_gen(n_dde_steps=3)
    assert model.phases == (("dde_q", 3), ("dde_p", 3), ("generator", 1))
    groups = {phase: {id(p) for p in model.phase_parameters(phase)} for phase, _ in model.phases}
    assert sum(len(g) for g in groups.values()) == len({id(p) for p in model.parameters()})  # a partition
    with pytest.raises(KeyError, match="phases"):
        model.phase_parameters("model")
    x = torch.randn(16, 2)
    for phase, nets_with_grad in [("dde_p", {"f_p"}), ("dde_q", {"f_q"}), ("generator", {"G", "f_p", "f_q"})]:
        model.zero_grad(set_to_none=True)
        losses = model.losses(phase, x)
        assert losses.shape == (16,) and torch.isfinite(losses).all()
        losses.mean().backward()
        for name in ("G", "f_p", "f_q"):
            has_grad = any(p.grad is not None for p in getattr(model, name).parameters())
            assert has_grad == (name in nets_with_grad), f"phase {phase}: gradient in {name} is {has_grad}"


def test_generate_is_reproducible_and_the_sampler_driver_wraps_it():
    model = _dde_gen()
    first = sample_generator(model, 8, generator=torch.Generator().manual_seed(3))
    second = model.generate(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, second)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, model.G(z).detach())
    assert first.shape == (8, 2) and not first.requires_grad
    with pytest.raises(ValueError, match="latent_dim"):
        DDEGenerativeModel(generator=lambda data_shape: nn.Linear(2, 2), dde=ScalarMLP, data_shape=(2,), sigma=0.5)


def test_generator_against_an_exact_data_density_covers_all_modes_with_the_right_weights():
    """f_p = exact log p_σ of a 3-mode mixture (weights .5/.3/.2), f_q trained (5 steps per generator step),
    400 generator steps at σ = 0.5: each mode's share of G(z) is within 0.06 of the exact share (measured
    errors ≤ 0.025 over 3 seeds) and samples sit near the modes (mean distance to the nearest mean < 0.65,
    exact 0.375, an untrained generator's ≈ 1.4)."""
    torch.manual_seed(0)
    mixture, sigma = three_modes(), 0.5
    model = _dde_gen(sigma=sigma)
    model.f_p = ExactLogDensity(mixture.smoothed(sigma))
    opt_q = torch.optim.Adam(model.phase_parameters("dde_q"), lr=5e-3)
    opt_g = torch.optim.Adam(model.phase_parameters("generator"), lr=3e-3)
    batch = torch.zeros(256, 2)  # only its size matters for the dde_q and generator phases
    for _ in range(400):
        for _ in range(5):
            model.zero_grad(set_to_none=True)
            model.losses("dde_q", batch).mean().backward()
            opt_q.step()
        model.zero_grad(set_to_none=True)
        model.losses("generator", batch).mean().backward()
        opt_g.step()
    gen = torch.Generator().manual_seed(1)
    samples = model.generate(4000, generator=gen).double()
    regions = mixture.component_log_probs(samples).argmax(1)
    exact_regions = mixture.component_log_probs(mixture.sample(100000, gen)).argmax(1)
    shares = torch.bincount(regions, minlength=3) / len(regions)
    exact = torch.bincount(exact_regions, minlength=3) / len(exact_regions)
    torch.testing.assert_close(shares, exact, atol=0.06, rtol=0)
    distance = torch.cdist(samples, mixture.means).min(1).values.mean()
    assert distance < 0.65, f"mean distance to the nearest mode {distance:.3f}"


def test_per_example_losses_on_images_are_finite():
    torch.manual_seed(0)
    dde = DenoisingDensityEstimator(net=functools.partial(ScalarMLP, hidden=16, depth=1), data_shape=(1, 8, 8),
                                    sigma=0.5)
    x = torch.rand(4, 1, 8, 8)
    losses = dde.losses("model", x)
    assert losses.shape == (4,) and torch.isfinite(losses).all()
    assert dde.log_density(x).shape == (4,) and dde.score(x, torch.full((4,), 0.5)).shape == x.shape
    model = DDEGenerativeModel(generator=functools.partial(GeneratorMLP, hidden=16, depth=1, latent_dim=3),
                               dde=functools.partial(ScalarMLP, hidden=16, depth=1), data_shape=(1, 8, 8), sigma=0.5)
    assert model.latent_dim == 3
    for phase, _ in model.phases:
        losses = model.losses(phase, x)
        assert losses.shape == (4,) and torch.isfinite(losses).all()
    assert model.generate(5).shape == (5, 1, 8, 8)
