"""Annealed / multiscale DSM energy model and the temperature-annealed Langevin sampler, against closed forms
for Gaussian data and exact mixture scores."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from conftest import fit_on_mixture, score_errors
from dae_gen.density import GaussianMixture
from dae_gen.nets.mlp import ScalarMLP
from dae_gen.noise import batch_spaced_sigmas
from dae_gen.objectives.mdsm import AnnealedDSMEnergy
from dae_gen.samplers.temperature import (
    sample_temperature_langevin,
    temperature_annealed_langevin,
    temperature_schedule,
)


class QuadraticEnergy(nn.Module):
    """``E_a(x) = ½ a ‖x‖²``, so ``∇E = a x``."""

    def __init__(self, *, data_shape, a: float = 1.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a), dtype=torch.float64))

    def forward(self, x):
        return 0.5 * self.a * x.reshape(x.shape[0], -1).pow(2).sum(1)


def three_modes(radius: float = 1.5, std: float = 0.3) -> GaussianMixture:
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    return GaussianMixture(radius * torch.stack([angles.cos(), angles.sin()], 1), [std] * 3, [0.5, 0.3, 0.2])


# -- the objective -------------------------------------------------------------------------------------
def test_quadratic_energy_loss_matches_closed_form_and_is_minimised_at_the_optimum():
    """x ~ N(0, s²I) in D dims, E_a = ½a‖x‖². Slot i's expected loss is (D/σ_i²)[a²s² + σ_i²(a − 1/σ₀²)²]
    (sum over dimensions, no ½, as zengyi-li/MDSM), minimised over the batch at a* = 1/(σ₀²(1 + s² mean 1/σ_i²))."""
    s, dim, batch, sigma0 = 0.7, 4, 8192, 0.1
    model = AnnealedDSMEnergy(net=QuadraticEnergy, data_shape=(dim,), sigma_low=0.1, sigma_high=2.0,
                              spacing="log", sigma0=sigma0)
    sigmas = batch_spaced_sigmas(batch, 0.1, 2.0, spacing="log").double()
    a_star = float(1 / (sigma0**2 * (1 + s**2 * sigmas.pow(-2).mean())))
    x = s * torch.randn(batch, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def mean_loss(a: float) -> float:
        with torch.no_grad():
            model.net.a.fill_(a)
        torch.manual_seed(1)  # common random numbers across values of a
        return float(model.losses("model", x).mean().detach())

    expected = float((dim / sigmas**2 * (a_star**2 * s**2 + sigmas**2 * (a_star - 1 / sigma0**2) ** 2)).mean())
    at_opt = mean_loss(a_star)
    assert at_opt == pytest.approx(expected, rel=0.03)
    assert at_opt < mean_loss(0.9 * a_star) and at_opt < mean_loss(1.1 * a_star)


def test_optimal_quadratic_energy_gives_the_tempered_smoothed_score():
    """At one σ the optimum a = σ²/(σ₀²(s² + σ²)) has −∇E = (σ²/σ₀²)∇log p_σ, so score(x, σ) = ∇log p_σ exactly."""
    s, sigma0 = 0.7, 0.1
    x = torch.randn(32, 3, dtype=torch.float64)
    for sigma in (0.1, 0.5, 2.0):
        a = sigma**2 / (sigma0**2 * (s**2 + sigma**2))
        model = AnnealedDSMEnergy(net=functools.partial(QuadraticEnergy, a=a), data_shape=(3,), sigma_low=0.05,
                                  sigma_high=3.0, sigma0=sigma0)
        sigma_b = torch.full((32,), sigma, dtype=torch.float64)
        exact = -x / (s**2 + sigma**2)
        torch.testing.assert_close(model.score(x, sigma_b), exact)
        grad_energy = torch.func.grad(lambda y: model.energy(y).sum())(x)
        torch.testing.assert_close(-grad_energy, sigma**2 / sigma0**2 * exact)  # −∇E = (σ²/σ₀²)∇log p_σ


def test_schedule_and_attributes():
    model = AnnealedDSMEnergy(net=QuadraticEnergy, data_shape=(2,), sigma_low=0.1, sigma_high=3.0, n_sample_levels=5)
    assert model.needs_double_backward and model.sigma0 == 0.1
    torch.testing.assert_close(model.sigmas, torch.logspace(math.log10(3.0), -1.0, 5))
    with pytest.raises(ValueError, match="spacing"):
        AnnealedDSMEnergy(net=QuadraticEnergy, data_shape=(2,), sigma_low=0.1, sigma_high=3.0, spacing="cosine")


def test_trained_mlp_energy_points_along_the_smoothed_score():
    """MLP energy trained over σ ∈ [0.2, 1] (log-spaced slots) on a 3-mode mixture. One energy serves all σ only
    approximately, so we test the direction: mean cos(−∇E, ∇log p_σ) > 0.95 at σ = 0.2 and 0.4 (measured ≈ 0.99)
    and, at the geometric middle σ = 0.4, the magnitude too: relative error < 0.15 (measured ≈ 0.04)."""
    torch.manual_seed(0)
    mixture = three_modes()
    model = AnnealedDSMEnergy(net=functools.partial(ScalarMLP, hidden=64, depth=2), data_shape=(2,),
                              sigma_low=0.2, sigma_high=1.0, spacing="log", sigma0=0.1)
    gen = fit_on_mixture(model, mixture, steps=1500, lr=3e-3, eta_min=1.5e-4)
    for sigma in (0.2, 0.4):
        rel_error, cos = score_errors(model, mixture, sigma, gen)
        assert cos > 0.95, f"σ={sigma}: mean cosine similarity {cos:.3f}"
        if sigma == 0.4:
            assert rel_error < 0.15, f"σ={sigma}: relative score error {rel_error:.3f}"


def test_per_example_losses_on_images_are_finite_and_reach_the_energy():
    torch.manual_seed(0)
    model = AnnealedDSMEnergy(net=functools.partial(ScalarMLP, hidden=16, depth=1), data_shape=(1, 8, 8),
                              sigma_low=0.1, sigma_high=3.0)
    x = torch.rand(6, 1, 8, 8)
    losses = model.losses("model", x)
    assert losses.shape == (6,) and torch.isfinite(losses).all()
    losses.mean().backward()  # double backward through ∇E
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads.pop("net.net.2.bias") is None  # ∇E does not depend on the output bias
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    score = model.score(x, torch.full((6,), 0.5))
    assert score.shape == x.shape and not score.requires_grad


# -- the temperature schedule and sampler ----------------------------------------------------------------
def test_temperature_schedule_is_the_published_one():
    """MDSM sample.py: 500 × 100, then 100·exp(−k ln100/2000) for k < 2000, then linspace(1, 0, 200)."""
    temps = temperature_schedule()
    assert temps.shape == (2700,)
    assert (temps[:501] == 100).all()
    ratios = temps[501:2500] / temps[500:2499]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 100 ** (-1 / 2000)))
    assert float(temps[2499]) == pytest.approx(100 ** (1 / 2000))
    torch.testing.assert_close(temps[2500:], torch.linspace(1, 0, 200, dtype=torch.float64))
    assert temperature_schedule(n_steps_hot=3, temp_hot=4.0, n_steps_anneal=0, n_steps_cool=0).tolist() == [4.0] * 3
    with pytest.raises(ValueError, match="temp_hot"):
        temperature_schedule(temp_hot=0.5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_langevin_step_has_the_exact_discrete_stationary_variance(temperature):
    """On E = x²/(2v) the chain x ← x − ½ε²x/v + √T ε ξ is AR(1) with ρ = 1 − ε²/(2v) and stationary variance
    T ε²/(1 − ρ²) (≈ 1.099 T for ε = 0.6, v = 1, which differs from the continuous T v by 10%)."""
    eps, v = 0.6, 1.0
    rho = 1 - eps**2 / (2 * v)
    expected = temperature * eps**2 / (1 - rho**2)
    gen = torch.Generator().manual_seed(0)
    x0 = math.sqrt(expected) * torch.randn(40000, 1, generator=gen, dtype=torch.float64)
    out = temperature_annealed_langevin(lambda x, s: -x / v, x0, sigma0=0.1, n_steps_hot=60, temp_hot=temperature,
                                        n_steps_anneal=0, n_steps_cool=0, step_size=eps, denoise=False,
                                        generator=gen)
    assert float(out.var()) == pytest.approx(expected, rel=0.03)


def test_final_denoising_jump_and_callback():
    """With no Langevin steps the sampler is exactly the jump x − σ₀²∇E(x) = x + σ₀² score(x, σ₀)."""
    sigmas_seen, events = [], []

    def score(x, sigma):
        sigmas_seen.append(sigma)
        return -3.0 * x

    x = torch.randn(7, 2, dtype=torch.float64)
    out = temperature_annealed_langevin(score, x, sigma0=0.3, n_steps_hot=0, n_steps_anneal=0, n_steps_cool=0)
    torch.testing.assert_close(out, x - 0.09 * 3.0 * x)
    assert sigmas_seen[0].shape == (7,) and (sigmas_seen[0] == 0.3).all()
    temperature_annealed_langevin(score, x, sigma0=0.3, n_steps_hot=2, temp_hot=5.0, n_steps_anneal=3,
                                  n_steps_cool=2, callback=events.append)
    assert [e.i for e in events] == list(range(1, 8)) and events[0].n == 7
    assert events[0].extras["temperature"] == 5.0 and events[-1].extras["temperature"] == 0.0


def test_driver_reads_sigma0_from_the_model_and_is_reproducible():
    model = AnnealedDSMEnergy(net=functools.partial(QuadraticEnergy, a=2.0), data_shape=(3,), sigma_low=0.1,
                              sigma_high=1.0, sigma0=0.3)
    out = sample_temperature_langevin(model, 5, n_steps_hot=0, n_steps_anneal=0, n_steps_cool=0,
                                      generator=torch.Generator().manual_seed(4))
    x0 = 0.5 + torch.randn(5, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, x0 - 0.3**2 * 2.0 * x0)  # score at σ₀ is −∇E = −a x
    knobs = dict(n_steps_hot=5, temp_hot=10.0, n_steps_anneal=5, n_steps_cool=5)
    first = sample_temperature_langevin(model, 4, **knobs, generator=torch.Generator().manual_seed(1))
    second = sample_temperature_langevin(model, 4, **knobs, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, second)


def test_temperature_annealing_recovers_mode_weights_of_an_exact_mixture():
    """Energy = −log p_σ₀ of a 3-mode mixture (weights .5/.3/.2), shortened schedule (50 steps at T = 10, 1000
    annealing steps, ε = 0.15, no cooling): the fraction of chains in each mode's region matches the exact
    fraction under p_σ₀ within 0.05 (measured errors ≤ 0.02 with 4000 chains)."""
    mixture, sigma0 = three_modes(radius=0.8, std=0.35), 0.1
    smoothed = mixture.smoothed(sigma0)
    gen = torch.Generator().manual_seed(0)
    x0 = 0.5 + torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    out = temperature_annealed_langevin(lambda x, s: smoothed.score(x), x0, sigma0=sigma0, n_steps_hot=50,
                                        temp_hot=10.0, n_steps_anneal=1000, n_steps_cool=0, step_size=0.15,
                                        denoise=False, generator=gen)
    regions = mixture.component_log_probs(out).argmax(1)
    exact_regions = mixture.component_log_probs(smoothed.sample(200000, gen)).argmax(1)
    weights = torch.bincount(regions, minlength=3) / len(regions)
    exact = torch.bincount(exact_regions, minlength=3) / len(exact_regions)
    torch.testing.assert_close(weights, exact, atol=0.05, rtol=0)
