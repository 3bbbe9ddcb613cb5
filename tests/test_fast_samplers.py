"""DPM-Solver++(2M) and Euler ancestral driven by the exact score of Gaussian data N(m, s² I): convergence order
against the probability-flow ODE's closed-form solution, the sampled moments against an exact variance
recursion and the data's, exact network-call counts, conditioning passed through, and the callback's records."""

from __future__ import annotations

import math

import pytest
import torch

from dae_gen.analytic import AnalyticGaussian
from dae_gen.errors import ConfigError
from dae_gen.noise import geometric_sigmas, karras_sigmas
from dae_gen.samplers import CountingModel, draw_samples
from dae_gen.samplers.fast import (
    ancestral_step,
    dpm_solver_2m,
    euler_ancestral,
    sample_dpm_solver_2m,
    sample_euler_ancestral,
)
from dae_gen.score import Step

MEAN, STD = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64), 0.5


GAUSSIAN = AnalyticGaussian(MEAN, std=STD)  # exact ∇log p_σ = −(x − m)/(s² + σ²)
gaussian_score = GAUSSIAN.score


def exact_flow(x, sigma, sigma_next):
    """The probability-flow ODE's solution from σ to σ' for N(m, s² I): m + √((s² + σ'²)/(s² + σ²))·(x − m)."""
    return MEAN + math.sqrt((STD**2 + sigma_next**2) / (STD**2 + sigma**2)) * (x - MEAN)


def start(n, sigma, seed=0):
    return 3.0 * sigma * torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def flow_error(solver, n_steps, sigma_max=20.0, sigma_min=0.05):
    """Max error at σ_min after ``n_steps`` steps of the ρ-schedule σ_max → σ_min (no final step to 0)."""
    sigmas = karras_sigmas(n_steps + 1, sigma_min, sigma_max)[:-1]
    x0 = start(256, sigma_max)
    return (solver(gaussian_score, x0, sigmas) - exact_flow(x0, sigma_max, sigma_min)).abs().max().item()


def euler(score, x, sigmas):
    return euler_ancestral(score, x, sigmas, eta=0.0)  # η = 0: no noise, plain Euler on the ODE


def test_dpm_solver_2m_converges_at_second_order_and_beats_euler_at_equal_calls():
    steps = (8, 16, 32, 64)
    dpm = [flow_error(dpm_solver_2m, n) for n in steps]
    eul = [flow_error(euler, n) for n in steps]
    dpm_ratios = [a / b for a, b in zip(dpm[:-1], dpm[1:])]
    eul_ratios = [a / b for a, b in zip(eul[:-1], eul[1:])]
    # halving the step: the error falls ≈ 4× (2nd order) for DPM-Solver++(2M), ≈ 2× for Euler
    assert all(3.3 < r < 5.0 for r in dpm_ratios[1:]), (dpm, dpm_ratios)
    assert all(1.7 < r < 2.4 for r in eul_ratios[1:]), (eul, eul_ratios)
    assert all(d < e / 4 for d, e in zip(dpm, eul)), (dpm, eul)  # the same N calls each
    # (measured from |x₀ − m| up to ~180: DPM 0.20, 0.090, 0.023, 0.0057; Euler 0.91, 0.48, 0.25, 0.12)


def test_a_final_zero_level_ends_with_the_denoiser():
    """With σ_N = 0 the last step returns D(x; σ_{N−1}) = m + s²/(s² + σ²)·(x − m), for both samplers."""
    sigmas = karras_sigmas(6, 0.3, 20.0)
    x0 = start(32, 20.0)
    seen = []
    for solver in (dpm_solver_2m, euler_ancestral):
        out = solver(gaussian_score, x0, sigmas, callback=seen.append)
        before = seen[-2].x
        torch.testing.assert_close(out, MEAN + STD**2 / (STD**2 + 0.3**2) * (before - MEAN), rtol=0, atol=1e-12)
        assert float(seen[-1].sigma) == 0.0


def test_first_step_is_ddim_and_the_second_uses_the_previous_denoised_value():
    """Step 1: x₁ = (σ₁/σ₀)x₀ + (1 − σ₁/σ₀)D₀; step 2: D replaced by (1 + 1/(2r))D₁ − D₀/(2r), r = h₀/h₁."""
    s = [10.0, 4.0, 1.0]
    x0 = start(8, 10.0)
    denoise = lambda x, sig: x + sig**2 * gaussian_score(x, torch.full((len(x),), sig, dtype=x.dtype))  # noqa: E731
    d0 = denoise(x0, s[0])
    x1 = s[1] / s[0] * x0 + (1 - s[1] / s[0]) * d0
    d1 = denoise(x1, s[1])
    h0, h1 = math.log(s[0] / s[1]), math.log(s[1] / s[2])
    r = h0 / h1
    x2 = s[2] / s[1] * x1 + (1 - s[2] / s[1]) * ((1 + 1 / (2 * r)) * d1 - d0 / (2 * r))
    torch.testing.assert_close(dpm_solver_2m(gaussian_score, x0, torch.tensor(s)), x2, rtol=0, atol=1e-12)


def test_ancestral_step_splits_the_next_variance():
    down, up = ancestral_step(2.0, 1.0, eta=1.0)
    assert up == pytest.approx(math.sqrt(1.0 * (4.0 - 1.0) / 4.0)) and down**2 + up**2 == pytest.approx(1.0)
    assert ancestral_step(2.0, 1.0, eta=0.0) == (1.0, 0.0)
    assert ancestral_step(2.0, 0.0, eta=1.0) == (0.0, 0.0)
    assert ancestral_step(100.0, 1.0, eta=5.0)[1] == 1.0  # σ_up never exceeds σ'


def ancestral_variance(sigmas, *, start_var, eta, s_noise):
    """Exact per-coordinate variance of Euler ancestral on N(m, s² I): x' − m = a(x − m) + s_noise·σ_up·ξ with
    a = 1 + (σ_down − σ)·σ/(s² + σ²) (from x − D = σ²/(s² + σ²)·(x − m)); the mean stays m."""
    var = start_var
    levels = sigmas.tolist()
    for sigma, sigma_next in zip(levels[:-1], levels[1:]):
        down, up = ancestral_step(sigma, sigma_next, eta=eta)
        a = 1 + (down - sigma) * sigma / (STD**2 + sigma**2)
        var = a**2 * var + (s_noise * up) ** 2
    return var


@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 1.0), (1.0, 1.05)])
def test_euler_ancestral_draws_the_data_moments_and_the_exact_variance_recursion(eta, s_noise):
    sigma_max, n_steps, n = 20.0, 200, 20_000
    sigmas = karras_sigmas(n_steps, 0.002, sigma_max)
    generator = torch.Generator().manual_seed(1)
    x0 = MEAN + math.sqrt(STD**2 + sigma_max**2) * torch.randn(n, 3, dtype=torch.float64, generator=generator)
    out = euler_ancestral(gaussian_score, x0, sigmas, eta=eta, s_noise=s_noise, generator=generator)
    exact = ancestral_variance(sigmas, start_var=STD**2 + sigma_max**2, eta=eta, s_noise=s_noise)
    var = out.var(0)
    # the sampler is the recursion: sample variance within 4 standard errors (√(2/n)·var) of its exact value
    assert (var - exact).abs().max() < 4 * math.sqrt(2 / n) * exact, (var, exact)
    assert (out.mean(0) - MEAN).abs().max() < 4 * math.sqrt(exact / n)
    if s_noise == 1.0:  # at 200 steps the variance is the data's s² within 6% (measured 4.6% at η = 1, 2.8% at ½)
        assert abs(exact / STD**2 - 1) < 0.06, exact / STD**2
        assert (var / STD**2 - 1).abs().max() < 0.08, var / STD**2


def test_euler_ancestral_variance_deficit_is_first_order_in_the_step():
    """The sampled variance falls short of s² by ≈ c/N (measured 20%, 11%, 5.7%, 2.9% at N = 40, 80, 160, 320)."""
    deficits = [1 - ancestral_variance(karras_sigmas(n, 0.002, 20.0), start_var=STD**2 + 400.0, eta=1.0,
                                       s_noise=1.0) / STD**2 for n in (40, 80, 160, 320)]
    ratios = [a / b for a, b in zip(deficits[:-1], deficits[1:])]
    assert all(d > 0 for d in deficits) and all(1.8 < r < 2.4 for r in ratios), (deficits, ratios)


def gaussian_model(levels):
    """A score model of N(MEAN, STD² I) data with ``levels`` as its schedule (no network)."""
    return AnalyticGaussian(MEAN, std=STD, sigmas=levels)


@pytest.mark.parametrize("driver", [sample_dpm_solver_2m, sample_euler_ancestral])
@pytest.mark.parametrize("n_steps", [1, 7, 20])
def test_network_calls_per_image_equal_the_steps(driver, n_steps):
    model = CountingModel(gaussian_model(geometric_sigmas(20.0, 0.01, 8).tolist()))
    x = draw_samples(model, lambda m, n, **kw: driver(m, n, n_steps=n_steps, **kw), 10, batch_size=4)
    assert x.shape == (10, 3) and torch.isfinite(x).all()
    assert model.nfe_per_image(10) == n_steps


class LabelledGaussian(AnalyticGaussian):
    """Class-conditional data: label k is N(m + k, s² I); the score refuses to run without ``class_labels``."""

    def __init__(self, levels):
        super().__init__(MEAN, std=STD, sigmas=levels)
        self.seen = []

    def score(self, x, sigma, *, class_labels):
        self.seen.append(class_labels)
        return super().score(x - class_labels.to(x.dtype)[:, None], sigma)  # N(m + k, s²I) is N(m, s²I) shifted


@pytest.mark.parametrize("driver", [sample_dpm_solver_2m, sample_euler_ancestral])
def test_conditioning_reaches_every_score_call_untouched(driver):
    model = LabelledGaussian([80.0, 0.002])
    labels = torch.tensor([0, 3, -2, 5])
    out = driver(model, 4, n_steps=12, cond={"class_labels": labels}, generator=torch.Generator().manual_seed(0))
    assert len(model.seen) == 12 and all(seen is labels for seen in model.seen)
    # each image lands near its own class mean (s = 0.5; the start is N(0, 80²), whose mismatch is ~s/80)
    offset = (out - MEAN.float()).mean(1)
    assert (offset - labels).abs().max() < 2.5, offset
    with pytest.raises(TypeError, match="class_labels"):
        driver(model, 2, n_steps=3)


@pytest.mark.parametrize("driver", [sample_dpm_solver_2m, sample_euler_ancestral])
def test_callback_receives_one_step_record_per_step(driver):
    model = gaussian_model(geometric_sigmas(20.0, 0.01, 8).tolist())
    steps = []
    out = driver(model, 5, n_steps=6, callback=steps.append, generator=torch.Generator().manual_seed(0))
    expected = karras_sigmas(6, 0.01, 20.0).tolist()[1:]
    assert all(isinstance(step, Step) for step in steps)
    assert [step.i for step in steps] == list(range(1, 7)) and {step.n for step in steps} == {6}
    assert [float(step.sigma) for step in steps] == pytest.approx(expected, rel=1e-6)
    assert [int(step.extras["nfe"]) for step in steps] == list(range(1, 7))
    assert all(step.denoised.shape == (5, 3) for step in steps) and torch.equal(steps[-1].x, out)


@pytest.mark.parametrize("driver", [sample_dpm_solver_2m, sample_euler_ancestral])
def test_a_one_level_model_has_no_range_to_integrate(driver):
    with pytest.raises(ConfigError, match="one noise level"):
        driver(gaussian_model([0.5]), 4, n_steps=5)


def test_bad_levels_and_settings_are_refused():
    x = torch.zeros(2, 3)
    for bad in ([1.0], [1.0, 2.0, 0.0], [1.0, 0.0, 0.0], [1.0, -1.0]):
        with pytest.raises(ValueError, match="sigmas must be"):
            dpm_solver_2m(gaussian_score, x, torch.tensor(bad))
    with pytest.raises(ValueError, match="eta must be non-negative"):
        euler_ancestral(gaussian_score, x, torch.tensor([1.0, 0.0]), eta=-1.0)
    with pytest.raises(ValueError, match="s_noise must be non-negative"):
        euler_ancestral(gaussian_score, x, torch.tensor([1.0, 0.0]), s_noise=-0.5)
