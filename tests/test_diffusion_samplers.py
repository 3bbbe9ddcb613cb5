"""EDM's Heun and stochastic samplers, the predictor–corrector sampler and the probability-flow ODE, driven by
exact scores: closed-form recursions for Gaussian data, transport of N(0, σ_max²I) to the data law (moments,
mixture mode weights), and exact network-call counts."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import edm_gaussian_moments
from dae_gen.density import GaussianMixture
from dae_gen.errors import ConfigError
from dae_gen.noise import geometric_sigmas, karras_sigmas
from dae_gen.objectives.base import Objective
from dae_gen.samplers import (
    CountingModel,
    draw_samples,
    edm_sampler,
    predictor_corrector,
    probability_flow_ode,
    sample_annealed_langevin,
    sample_edm_stochastic,
    sample_generator,
    sample_heun,
    sample_predictor_corrector,
    sample_probability_flow_ode,
    sample_temperature_langevin,
)

MEAN, STD = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
MIXTURE = GaussianMixture(torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]]), [0.4] * 3, [0.5, 0.3, 0.2])


def gaussian_score(x, sigma):
    """∇log p_σ for N(MEAN, STD² I) data: −(x − m)/(s² + σ²)."""
    return -(x - MEAN.to(x.dtype)) / (STD**2 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


def mixture_score(x, sigma):
    return MIXTURE.smoothed(float(sigma[0])).score(x)


def mode_weights(x):
    return torch.bincount(torch.cdist(x.double(), MIXTURE.means).argmin(1), minlength=3).double() / len(x)


def heun_gain(sigmas, s=STD):
    """The exact factor A with x_N − m = A·(x_0 − m) of the deterministic sampler over ``sigmas``."""
    return edm_gaussian_moments(sigmas.tolist(), s=s, start_var=0.0)[0]


# -- the schedule ----------------------------------------------------------------------------------------
def test_karras_schedule_is_eq_5_with_a_final_zero():
    sigmas = karras_sigmas(5, 0.002, 80.0, rho=7.0)
    expected = [(80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(5)] + [0.0]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-12)
    assert karras_sigmas(4, 0.5, 2.0, rho=1.0).tolist() == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0])  # ρ = 1: linear
    geometric = geometric_sigmas(10.0, 0.1, 6).double()  # large ρ tends to geometric spacing
    torch.testing.assert_close(karras_sigmas(6, 0.1, 10.0, rho=1e4)[:-1], geometric, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(5, 1.0, 0.5)


# -- EDM Heun ----------------------------------------------------------------------------------------------
def test_heun_on_a_gaussian_is_the_exact_linear_recursion_and_costs_2n_minus_1_calls():
    sigmas = karras_sigmas(18, 0.002, 80.0)
    x0 = 80.0 * torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = []
    out = edm_sampler(lambda x, s: calls.append(len(x)) or gaussian_score(x, s), x0, sigmas)
    torch.testing.assert_close(out, MEAN + heun_gain(sigmas) * (x0 - MEAN), rtol=0, atol=1e-10)
    assert len(calls) == 2 * 18 - 1


def test_heun_transports_the_prior_to_the_gaussian_data_with_second_order_convergence():
    """From N(0, 80² I) the exact flow ends at N(m, s²) (up to the prior's O(s/σ_max) mismatch); Heun's std error
    falls ≈ 4× per doubling of N (measured 6.1%, 2.1%, 0.9% at N = 18, 32, 64 on these draws)."""
    x0 = 80.0 * torch.randn(20_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = []
    for n_steps in (16, 32, 64):
        gain = heun_gain(karras_sigmas(n_steps, 0.002, 80.0))
        exact = math.sqrt((STD**2 + 0.002**2) / (STD**2 + 80.0**2))  # the flow's own factor σ_max → σ_min
        errors.append(abs(gain / exact - 1))
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3, errors
    out = edm_sampler(gaussian_score, x0, karras_sigmas(64, 0.002, 80.0))
    assert (out.mean(0) - MEAN).abs().max() < 4 * STD / math.sqrt(20_000) + STD / 80  # prior mismatch: m·s/σ_max
    assert out.std(0).tolist() == pytest.approx([STD, STD], rel=0.02)


def test_heun_keeps_the_mode_weights_of_a_mixture():
    x0 = 20.0 * torch.randn(6000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = edm_sampler(mixture_score, x0, karras_sigmas(32, 0.002, 20.0))
    assert torch.allclose(mode_weights(out), MIXTURE.weights, atol=0.03), mode_weights(out)  # se ≈ 0.0065
    nearest = torch.cdist(out, MIXTURE.means).argmin(1)
    for k in range(3):
        spread = (out[nearest == k] - MIXTURE.means[k]).std(0)
        assert spread.tolist() == pytest.approx([0.4, 0.4], rel=0.06), (k, spread)


# -- EDM stochastic ----------------------------------------------------------------------------------------
def test_stochastic_sampler_matches_its_exact_gaussian_moments_and_the_data():
    sigmas = karras_sigmas(64, 0.002, 80.0)  # the config's N and γ = 10/64 (its exact std is s·1.010)
    settings = {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.0}
    gen = torch.Generator().manual_seed(0)
    x0 = 80.0 * torch.randn(20_000, 2, dtype=torch.float64, generator=gen)
    out = edm_sampler(gaussian_score, x0, sigmas, generator=gen, **settings)
    mean_gain, var = edm_gaussian_moments(sigmas.tolist(), s=STD, start_var=80.0**2, **settings)
    assert torch.allclose(out.mean(0), MEAN * (1 - mean_gain), atol=4 * math.sqrt(var / 20_000))
    assert out.std(0).tolist() == pytest.approx([math.sqrt(var)] * 2, rel=0.03)
    assert math.sqrt(var) == pytest.approx(STD, rel=0.02)  # and those moments are the data's
    # no churn inside [s_tmin, s_tmax] at all: exactly the deterministic sampler
    plain = edm_sampler(gaussian_score, x0[:64], sigmas)
    assert torch.equal(edm_sampler(gaussian_score, x0[:64], sigmas, s_churn=20.0, s_tmin=100.0), plain)


def test_stochastic_sampler_keeps_the_mode_weights_of_a_mixture():
    gen = torch.Generator().manual_seed(0)
    x0 = 20.0 * torch.randn(6000, 2, dtype=torch.float64, generator=gen)
    out = edm_sampler(mixture_score, x0, karras_sigmas(64, 0.002, 20.0), s_churn=10.0, s_tmin=0.05, s_tmax=50.0,
                      s_noise=1.0, generator=gen)
    assert torch.allclose(mode_weights(out), MIXTURE.weights, atol=0.03), mode_weights(out)


# -- predictor–corrector -----------------------------------------------------------------------------------
def test_predictor_alone_is_the_exact_linear_gaussian_recursion():
    """Without corrector steps each level is x ← x + v·s(x, σ_i) + √v·z, v = σ_i² − σ_{i+1}²: mean gain and
    variance follow in closed form; the denoising last step is Tweedie's shrink s²/(s² + σ_N²)."""
    sigmas = geometric_sigmas(20.0, 0.01, 50).double()
    gen = torch.Generator().manual_seed(0)
    x0 = 20.0 * torch.randn(20_000, 2, dtype=torch.float64, generator=gen)
    out = predictor_corrector(gaussian_score, x0, sigmas, n_corrector_steps=0, generator=gen)
    gain, var, levels = 1.0, 20.0**2, sigmas.tolist() + [0.0]
    for i, (sig, nxt) in enumerate(zip(levels[:-1], levels[1:])):
        a = 1 - (sig**2 - nxt**2) / (STD**2 + sig**2)
        gain, var = gain * a, var * a**2 + (sig**2 - nxt**2 if i < len(levels) - 2 else 0.0)
    assert torch.allclose(out.mean(0), MEAN * (1 - gain), atol=4 * math.sqrt(var / 20_000))
    assert out.std(0).tolist() == pytest.approx([math.sqrt(var)] * 2, rel=0.03)


def test_predictor_corrector_transports_a_gaussian_in_high_dimension():
    """D = 784 (an image's size): per-example snr steps are unbiased enough; the output is N(m, s²) after the
    final denoising (std s²/√(s² + σ_N²) ≈ s): mean within 0.01, std within 2%."""
    dim = 784
    mean = torch.linspace(-1, 1, dim)

    def score(x, sigma):
        return -(x - mean) / (STD**2 + sigma[:, None] ** 2)

    gen = torch.Generator().manual_seed(0)
    x0 = 50.0 * torch.randn(500, dim, generator=gen)
    out = predictor_corrector(score, x0, geometric_sigmas(50.0, 0.01, 100), snr=0.16, generator=gen)
    assert (out.mean(0) - mean).abs().mean() < 0.03
    assert out.std(0).mean().item() == pytest.approx(STD, rel=0.02)


def test_predictor_corrector_keeps_the_mode_weights_of_a_mixture():
    gen = torch.Generator().manual_seed(0)
    x0 = 20.0 * torch.randn(6000, 2, dtype=torch.float64, generator=gen)
    out = predictor_corrector(mixture_score, x0, geometric_sigmas(20.0, 0.01, 100), corrector_norm="batch",
                              generator=gen)
    assert torch.allclose(mode_weights(out), MIXTURE.weights, atol=0.03), mode_weights(out)
    nearest = torch.cdist(out, MIXTURE.means).argmin(1)
    for k in range(3):  # Tweedie at σ_N = 0.01 keeps the component std 0.4 to 0.03%
        assert (out[nearest == k] - MIXTURE.means[k]).std(0).tolist() == pytest.approx([0.4, 0.4], rel=0.06)


# -- probability-flow ODE ----------------------------------------------------------------------------------
def test_ode_solver_follows_the_exact_gaussian_flow_and_tighter_tolerances_cost_more_calls():
    """The exact flow scales deviations by √((s² + σ_min²)/(s² + σ_max²)); Tweedie then by s²/(s² + σ_min²)."""
    x0 = 80.0 * torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact_gain = math.sqrt((STD**2 + 0.002**2) / (STD**2 + 80.0**2)) * STD**2 / (STD**2 + 0.002**2)
    exact = MEAN + exact_gain * (x0 - MEAN)
    costs = {}
    for tol in (1e-3, 1e-6):
        calls = []
        out = probability_flow_ode(lambda x, s: calls.append(1) or gaussian_score(x, s), x0, sigma_max=80.0,
                                   sigma_min=0.002, rtol=tol, atol=tol)
        costs[tol] = len(calls)
        assert (out - exact).abs().max() < 50 * tol, (tol, (out - exact).abs().max())
    assert costs[1e-6] > costs[1e-3] > 2


def test_ode_transports_the_prior_to_a_mixture():
    x0 = 20.0 * torch.randn(6000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = probability_flow_ode(mixture_score, x0, sigma_max=20.0, sigma_min=0.002, rtol=1e-4, atol=1e-4)
    assert torch.allclose(mode_weights(out), MIXTURE.weights, atol=0.03), mode_weights(out)


# -- drivers on models, network-call counts, one-level models -------------------------------------------------
class GaussianModel(Objective):
    """A score model of N(MEAN, STD² I) data with ``levels`` as its schedule (no network)."""

    def __init__(self, levels):
        super().__init__(data_shape=(2,))
        self.register_buffer("sigma_levels", torch.as_tensor(levels, dtype=torch.float32))

    def score(self, x, sigma):
        return gaussian_score(x, sigma).to(x.dtype)

    def generate(self, n, *, generator=None):
        return (MEAN + STD * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


NFE_CASES = {  # driver, settings, exact network calls per image
    "heun": (sample_heun, {"n_steps": 7}, 13),
    "edm_stochastic": (sample_edm_stochastic, {"n_steps": 9, "s_churn": 5.0}, 17),
    "pc": (sample_predictor_corrector, {"n_steps": 6, "n_corrector_steps": 2}, 18),
    "pc_own_levels": (sample_predictor_corrector, {}, 16),  # the model's 8 levels, 1 corrector step each
    "annealed_langevin": (sample_annealed_langevin, {"n_steps_each": 3}, 8 * 3 + 1),
    "temperature_langevin": (sample_temperature_langevin, {"n_steps_hot": 2, "n_steps_anneal": 3,
                                                           "n_steps_cool": 4}, 10),
    "generator": (sample_generator, {}, 1),
}


@pytest.mark.parametrize("name", sorted(NFE_CASES))
def test_network_calls_per_image_are_exact(name):
    driver, settings, expected = NFE_CASES[name]
    model = CountingModel(GaussianModel(geometric_sigmas(4.0, 0.05, 8).tolist()))
    if name.startswith("pc"):
        settings = {**settings, "corrector_norm": "batch"}
    x = draw_samples(model, lambda m, n, **kw: driver(m, n, **settings, **kw), 10, batch_size=4)
    assert x.shape == (10, 2) and torch.isfinite(x).all()
    assert model.nfe_per_image(10) == expected


def test_ode_reports_its_network_calls_through_the_callback_and_the_counter():
    model = CountingModel(GaussianModel(geometric_sigmas(4.0, 0.05, 8).tolist()))
    reported = []
    sample_probability_flow_ode(model, 16, rtol=1e-4, atol=1e-4,
                                callback=lambda step: reported.append(int(step.extras["nfe"])))
    assert reported == list(range(1, len(reported) + 1)) and model.nfe_per_image(16) == reported[-1] > 10


def test_one_level_models_heun_and_ode_refuse_pc_and_stochastic_run_at_that_sigma():
    """A DDE-like model knows p_σ₀ only: no σ range to integrate (a clear error); PC is Langevin at σ₀ then
    Tweedie, which for N(m, s²) data gives std s²/√(s² + σ₀²)."""
    sigma0 = 0.3
    model = GaussianModel([sigma0])
    for driver in (sample_heun, sample_probability_flow_ode):
        with pytest.raises(ConfigError, match="one noise level"):
            driver(model, 4)
    gen = torch.Generator().manual_seed(0)
    out = sample_predictor_corrector(model, 4000, n_steps=100, corrector_norm="batch", generator=gen)
    target = STD**2 / math.sqrt(STD**2 + sigma0**2)
    assert out.std(0).tolist() == pytest.approx([target] * 2, rel=0.06)
    assert torch.allclose(out.mean(0).double(), MEAN, atol=0.03)
    out = sample_edm_stochastic(model, 4000, n_steps=100, s_noise=1.0, generator=gen)
    assert torch.isfinite(out).all() and torch.allclose(out.mean(0).double(), MEAN, atol=0.05)
    # with an explicit range the ODE runs on the score it has
    assert sample_probability_flow_ode(model, 4, sigma_max=2.0, sigma_min=sigma0).shape == (4, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"s_churn": -1.0}, "s_churn"),
    ({"s_noise": -0.1}, "s_noise"),
])
def test_bad_edm_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        edm_sampler(gaussian_score, torch.zeros(2, 2), karras_sigmas(4, 0.1, 1.0), **kwargs)
    with pytest.raises(ValueError, match="final 0"):
        edm_sampler(gaussian_score, torch.zeros(2, 2), torch.tensor([1.0, 0.1]))


def test_bad_pc_and_ode_settings():
    with pytest.raises(ValueError, match="snr"):
        predictor_corrector(gaussian_score, torch.zeros(2, 2), torch.tensor([1.0, 0.1]), snr=0.0)
    with pytest.raises(ValueError, match="corrector_norm"):
        predictor_corrector(gaussian_score, torch.zeros(2, 2), torch.tensor([1.0, 0.1]), corrector_norm="mean")
    with pytest.raises(ValueError, match="method"):
        probability_flow_ode(gaussian_score, torch.zeros(2, 2), sigma_max=1.0, sigma_min=0.1, method="euler")
