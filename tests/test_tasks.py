"""Image tasks (inpainting, interpolation, trajectory recording, Tweedie denoising per σ) against closed forms.

The ground truth is a correlated Gaussian N(m, Σ) in 4-D, whose smoothed score ``−(Σ + σ²I)⁻¹(x − m)`` is exact
and linear: every Langevin chain on it is a linear Gaussian recursion whose law we compute step by step
(``clamped_chain_moments``), and whose conditionals are closed forms.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from dae_gen.analytic import AnalyticGaussian
from dae_gen.noise import geometric_sigmas
from dae_gen.objectives.base import Objective
from dae_gen.samplers.langevin import annealed_langevin, initial_state, sample_annealed_langevin
from dae_gen.samplers.tasks import (
    TrajectoryRecorder,
    denoise_at_levels,
    frame_steps,
    inpaint,
    inpaint_annealed_langevin,
    inpaint_temperature_langevin,
    inpainting_mask,
    interpolate,
    interpolation_noise,
    interpolation_starts,
    record_trajectory,
    tweedie_denoising,
)
from dae_gen.samplers.temperature import sample_temperature_langevin, temperature_schedule

# N(m, Σ) with Σ = RᵀR: eigenvalues 0.18 … 1.96, every coordinate correlated with the others
FACTOR = torch.tensor([[1.0, 0.6, 0.3, 0.0], [0.0, 0.8, 0.4, 0.2], [0.0, 0.0, 0.7, 0.5], [0.0, 0.0, 0.0, 0.6]],
                      dtype=torch.float64)
COV = FACTOR.T @ FACTOR
MEAN = torch.tensor([0.5, -0.3, 0.2, 0.1], dtype=torch.float64)
KNOWN = torch.tensor([True, False, True, False])  # coordinates 0 and 2 known, 1 and 3 inpainted
X_KNOWN = torch.tensor([1.0, 0.0, -0.5, 0.0], dtype=torch.float64)  # the unknown entries are never read
K, U = KNOWN.nonzero().flatten(), (~KNOWN).nonzero().flatten()


GAUSSIAN = AnalyticGaussian(MEAN, COV, sigmas=geometric_sigmas(3.0, 0.05, 10))  # exact −(Σ + σ²I)⁻¹(x − m)


def precision(sigma: float) -> torch.Tensor:
    """``(Σ + σ²I)⁻¹``, the precision of the σ-smoothed data."""
    return torch.linalg.inv(COV + sigma**2 * torch.eye(len(MEAN), dtype=torch.float64))


def conditional(cov, sigma=0.0):
    """Law of the unknown block given known values: ``(mean(x_known), covariance)`` of the σ-smoothed Gaussian."""
    smoothed = cov + sigma**2 * torch.eye(len(MEAN), dtype=torch.float64)
    gain = smoothed[U][:, K] @ torch.linalg.inv(smoothed[K][:, K])
    return MEAN[U] + gain @ (X_KNOWN[K] - MEAN[K]), smoothed[U][:, U] - gain @ smoothed[K][:, U]


def clamped_chain_moments(steps, *, start_mean, start_cov):
    """Exact mean and covariance of the unknown block of a clamped Langevin chain on the Gaussian.

    steps: ``(drift, noise_var, score_sigma, known_level, fresh)`` per step: ``u ← u + drift·s_u(u, y) + √noise_var·ξ``
    with ``y = x_known + known_level·z`` and ``s_u = −[P_uu(u − m_u) + P_uk(y − m_k)]``, P = (Σ + σ²I)⁻¹; z is
    redrawn when ``fresh``. The state is Gaussian: we carry mean(u), cov(u) and cov(u, z).
    """
    eye = torch.eye(len(U), dtype=torch.float64)
    mean, cov = start_mean.clone(), start_cov.clone()
    cross = torch.zeros(len(U), len(K), dtype=torch.float64)
    cache = {}
    for drift, noise_var, score_sigma, level, fresh in steps:
        if score_sigma not in cache:
            p = precision(score_sigma)
            cache[score_sigma] = p[U][:, U], p[U][:, K]
        p_uu, p_uk = cache[score_sigma]
        if fresh:
            cross = torch.zeros_like(cross)
        b, g = eye - drift * p_uu, -drift * level * p_uk
        mean = b @ mean + drift * (p_uu @ MEAN[U] - p_uk @ (X_KNOWN[K] - MEAN[K]))
        cov = b @ cov @ b.T + b @ cross @ g.T + g @ cross.T @ b.T + g @ g.T + noise_var * eye
        cross = b @ cross + g
    return mean, cov


def assert_moments(x, mean, cov, n_se=4.0):
    """Sample mean and covariance of ``x`` ``(n, d)`` within ``n_se`` standard errors of the exact ones."""
    n = x.shape[0]
    mean_se = (cov.diagonal() / n).sqrt()
    cov_se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < n_se * mean_se).all(), (x.mean(0), mean)
    assert ((torch.cov(x.T) - cov).abs() < n_se * cov_se).all(), (torch.cov(x.T), cov)


def annealed_steps(sigmas, *, n_steps_each, step_lr, known_noise, denoise):
    steps = []
    for sigma in sigmas.tolist():
        alpha = step_lr * (sigma / sigmas[-1].item()) ** 2
        steps += [(0.5 * alpha, alpha, sigma, sigma, known_noise == "step" or t == 0) for t in range(n_steps_each)]
    if denoise:  # Tweedie at σ_L, reading the known pixels as the last step did (or afresh, per step)
        sigma = sigmas[-1].item()
        steps.append((sigma**2, 0.0, sigma, sigma, known_noise == "step"))
    return steps


# -- inpainting -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("known_noise", ["level", "step"])
def test_inpainting_a_gaussian_recovers_the_exact_conditional(known_noise):
    """NCSN's clamped annealed Langevin on N(m, Σ), 4-D, two coordinates known.

    At level σ with the known coordinates fixed at y = x_k + σz the chain samples the smoothed conditional
    p_σ(u | y) = N(m_u + A_σ(y − m_k), C_σ), A_σ = Σ_uk(Σ_kk + σ²)⁻¹; averaged over z its law is
    N(m_u + A_σ(x_k − m_k), C_σ + σ²A_σA_σᵀ) (one z per level; with a fresh z per step the σ²AAᵀ term vanishes as
    the step → 0). As σ_L → 0 both tend to the data conditional N(m_u + Σ_ukΣ_kk⁻¹(x_k − m_k), Σ_uu − Σ_ukΣ_kk⁻¹Σ_ku).
    A finite chain lags behind the annealing: here (σ 3 → 0.05, 8 levels × 100 steps, step_lr = 1.5σ_L²) the chain's
    exact law (the recursion) lies within 0.012 of the data conditional's mean and 2% of its covariance (computed:
    0.008 and 1.4%); 6000 chains match that exact law within 4 standard errors, and so the data conditional's mean
    within 4 SE + 0.012.
    """
    model, n = GAUSSIAN, 6000
    sigmas = geometric_sigmas(3.0, 0.05, 8).double()
    settings = dict(n_steps_each=100, step_lr=1.5 * float(sigmas[-1]) ** 2, denoise=True)
    gen = torch.Generator().manual_seed(0)
    x0 = float(sigmas[0]) * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    out = inpaint_annealed_langevin(model.score, x0, X_KNOWN.expand(n, 4), KNOWN, sigmas, known_noise=known_noise,
                                    generator=gen, **settings)
    assert torch.equal(out[:, K], X_KNOWN[K].expand(n, 2))  # the known pixels, exactly
    exact_mean, exact_cov = clamped_chain_moments(
        annealed_steps(sigmas, known_noise=known_noise, **settings),
        start_mean=torch.zeros(2, dtype=torch.float64),
        start_cov=float(sigmas[0]) ** 2 * torch.eye(2, dtype=torch.float64))
    data_mean, data_cov = conditional(COV)
    assert (exact_mean - data_mean).abs().max() < 0.012 and (exact_cov - data_cov).abs().max() < 0.02 * data_cov.max()
    assert_moments(out[:, U], exact_mean, exact_cov)
    data_se = (data_cov.diagonal() / n).sqrt()
    assert ((out[:, U].mean(0) - data_mean).abs() < 4 * data_se + 0.012).all()


def test_masked_temperature_langevin_on_a_gaussian_has_the_exact_law():
    """MDSM's masked sampler on E = −log p_σ₀ of the Gaussian: steps u ← u + ½ε²s_u + √T ε ξ with the known
    coordinates at x_k + σ₀√T_k z (fresh z each step), T: 4 for 100 steps, decaying to 1 over 300, to 0 over 50,
    then the jump u + σ₀²s_u. The exact law (recursion) against 6000 chains: within 4 standard errors."""
    model, n, sigma0, eps = GAUSSIAN, 6000, 0.3, 0.25
    schedule = dict(n_steps_hot=100, temp_hot=4.0, n_steps_anneal=300, n_steps_cool=50)
    gen = torch.Generator().manual_seed(1)
    x0 = 0.5 + torch.randn(n, 4, generator=gen, dtype=torch.float64)
    out = inpaint_temperature_langevin(model.score, x0, X_KNOWN.expand(n, 4), KNOWN, sigma0=sigma0, step_size=eps,
                                       generator=gen, **schedule)
    assert torch.equal(out[:, K], X_KNOWN[K].expand(n, 2))
    temps = temperature_schedule(**schedule).tolist()
    steps = [(0.5 * eps**2, t * eps**2, sigma0, sigma0 * math.sqrt(t), True) for t in temps]
    steps.append((sigma0**2, 0.0, sigma0, 0.0, True))  # the jump reads the known pixels at the last level, 0
    exact_mean, exact_cov = clamped_chain_moments(steps, start_mean=torch.full((2,), 0.5, dtype=torch.float64),
                                                  start_cov=torch.eye(2, dtype=torch.float64))
    assert_moments(out[:, U], exact_mean, exact_cov)


def test_known_pixels_are_noised_at_each_level_as_ncsn_and_ncsnv2_do():
    """The score sees the known pixels at x_k + σz: one z per level (NCSN Alg. 3) or one per step (NCSNv2);
    the temperature version at x_k + σ₀√T_k z."""
    seen = []

    def spy(x, sigma):
        seen.append((float(sigma[0]), x[:, K].clone()))
        return torch.zeros_like(x)

    sigmas = torch.tensor([2.0, 1.0], dtype=torch.float64)
    x0, known = torch.zeros(3, 4, dtype=torch.float64), X_KNOWN.expand(3, 4)
    for mode in ("level", "step"):
        seen.clear()
        inpaint_annealed_langevin(spy, x0, known, KNOWN, sigmas, n_steps_each=3, step_lr=0.1, denoise=True,
                                  known_noise=mode, generator=torch.Generator().manual_seed(0))
        assert [s for s, _ in seen] == [2.0] * 3 + [1.0] * 4  # 2 levels × 3 steps, then the Tweedie step at σ_L
        z = [(y - X_KNOWN[K]) / s for s, y in seen]
        same = [torch.equal(z[i], z[i + 1]) for i in range(6)]
        assert same == ([True, True, False, True, True, True] if mode == "level" else [False] * 6)
    seen.clear()
    schedule = dict(n_steps_hot=2, temp_hot=4.0, n_steps_anneal=2, n_steps_cool=2)
    inpaint_temperature_langevin(spy, x0, known, KNOWN, sigma0=0.5, **schedule,
                                 generator=torch.Generator().manual_seed(3))
    assert len(seen) == 7 and all(s == 0.5 for s, _ in seen)  # 6 steps and the jump, all read at σ₀
    # the same generator replayed: each step draws z (the known pixels') and then the Langevin noise
    replay = torch.Generator().manual_seed(3)
    draws = [torch.randn(3, 4, generator=replay, dtype=torch.float64) for _ in range(2 * 6 + 1)][::2]
    levels = [*(0.5 * temperature_schedule(**schedule).sqrt()).tolist(), 0.0]  # the jump: the last level, 0
    for (_, y), z, level in zip(seen, draws, levels):
        torch.testing.assert_close(y, X_KNOWN[K] + level * z[:, K], rtol=0, atol=1e-12)
    assert torch.equal(seen[-1][1], X_KNOWN[K].expand(3, 2))  # after cooling to T = 0: the true values


@pytest.mark.parametrize("sampler", ["annealed_langevin", "temperature_langevin"])
def test_inpaint_driver_is_the_score_level_sampler_with_the_samplers_own_start(sampler):
    """``inpaint(model, images, mask)`` = the driver's initial state + the score-level masked sampler, bit for bit."""
    model, images = GAUSSIAN, torch.stack([X_KNOWN, X_KNOWN.flip(0)])
    if sampler == "annealed_langevin":
        knobs = dict(n_steps_each=4, step_lr=1e-3)
        out = inpaint(model, images, KNOWN, n_per_image=3, sampler=sampler, generator=torch.Generator().manual_seed(5),
                      **knobs)
        gen = torch.Generator().manual_seed(5)
        x0 = initial_state((6, 4), init="uniform", init_low=0.0, init_high=1.0, sigma_max=3.0, device="cpu",
                           generator=gen)
        expected = inpaint_annealed_langevin(model.score, x0, images.repeat_interleave(3, 0), KNOWN, model.sigmas,
                                             generator=gen, **knobs)
    else:
        knobs = dict(n_steps_hot=3, temp_hot=5.0, n_steps_anneal=3, n_steps_cool=2)
        out = inpaint(model, images, KNOWN, n_per_image=3, sampler=sampler, generator=torch.Generator().manual_seed(5),
                      **knobs)
        gen = torch.Generator().manual_seed(5)
        x0 = 0.5 + torch.randn(6, 4, generator=gen)
        expected = inpaint_temperature_langevin(model.score, x0, images.repeat_interleave(3, 0), KNOWN,
                                                sigma0=model.reference_sigma, generator=gen, **knobs)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out.reshape(6, 4), expected, rtol=0, atol=1e-12)
    assert torch.equal(out[:, :, K], images[:, None, K].expand(2, 3, 2))


def test_inpainting_masks():
    half, bottom, centre = (inpainting_mask(kind, (3, 8, 6)) for kind in ("half", "bottom", "centre"))
    assert half.shape == (3, 8, 6) and half[:, :, :3].all() and not half[:, :, 3:].any()
    assert bottom[:, :4].all() and not bottom[:, 4:].any()
    assert not centre[:, 2:6, 1:4].any() and centre.sum() == 3 * (48 - 12)
    rand = inpainting_mask("random", (3, 64, 64), missing_fraction=0.3, generator=torch.Generator().manual_seed(0))
    assert (rand == rand[:1]).all() and abs(float((~rand[0]).float().mean()) - 0.3) < 0.02
    with pytest.raises(ValueError, match="mask kind"):
        inpainting_mask("left", (1, 8, 8))


def _tiny(name, shape):
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    torch.manual_seed(0)
    return instantiate(cfg.model, data_shape=list(shape)).eval().requires_grad_(False)


@pytest.mark.parametrize("name, shape", [("ncsn_unet", (1, 8, 8)), ("dae", (1, 8, 8)), ("mdsm", (1, 32, 32)),
                                         ("dde_conv", (1, 8, 8)), ("ddegen", (1, 8, 8))])
@pytest.mark.parametrize("sampler", ["annealed_langevin", "temperature_langevin"])
def test_inpainting_runs_on_every_image_model_and_keeps_known_pixels(name, shape, sampler):
    model = _tiny(name, shape)
    images = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    mask = inpainting_mask("centre", shape)
    knobs = dict(n_steps_each=2, step_lr=1e-5) if sampler == "annealed_langevin" else dict(
        n_steps_hot=2, temp_hot=2.0, n_steps_anneal=2, n_steps_cool=1)
    out = inpaint(model, images, mask, n_per_image=2, sampler=sampler, generator=torch.Generator().manual_seed(1),
                  **knobs)
    assert out.shape == (2, 2, *shape) and torch.isfinite(out).all()
    assert torch.equal(out[:, :, mask], images[:, None, mask].expand(2, 2, -1))
    assert not torch.equal(out[:, 0, ~mask], out[:, 1, ~mask])  # two completions differ


def test_inpainting_rejects_the_generator_sampler():
    from dae_gen import ConfigError

    with pytest.raises(ConfigError, match="sampler=generator cannot inpaint.*annealed_langevin"):
        inpaint(_tiny("ddegen", (1, 8, 8)), torch.rand(1, 1, 8, 8), inpainting_mask("half", (1, 8, 8)),
                sampler="generator")


# -- interpolation ----------------------------------------------------------------------------------------
def test_interpolation_noise_is_standard_normal_and_correlated_as_cos_of_the_angle():
    rows, columns = 4000, 5
    noise = interpolation_noise(rows, columns, generator=torch.Generator().manual_seed(0))(
        torch.zeros(rows * columns, 3, dtype=torch.float64)).reshape(rows, columns, 3)
    assert noise.std(dim=(0, 2)).sub(1).abs().max() < 0.03  # each chain's noise is N(0, I)
    angles = torch.linspace(0, math.pi / 2, columns, dtype=torch.float64)
    corr = torch.corrcoef(noise.permute(1, 0, 2).reshape(columns, -1))
    torch.testing.assert_close(corr, torch.cos(angles[:, None] - angles[None, :]), atol=0.03, rtol=0)


def test_interpolation_on_a_gaussian_is_exactly_the_spherical_blend_of_the_end_chains():
    """On a linear score every chain is affine in its noise, so with NCSNv2's noise cos θ_j p + sin θ_j q and a
    shared start, chain j = c + cos θ_j (chain_0 − c) + sin θ_j (chain_{J−1} − c), c the noise-free chain."""
    model, rows, columns = GAUSSIAN, 3, 6
    out = interpolate(model, rows, n_interpolations=columns, n_steps_each=5, step_lr=1e-3, init="gaussian",
                      generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    start = initial_state((rows, 4), init="gaussian", init_low=0.0, init_high=1.0, sigma_max=3.0, device="cpu",
                          generator=gen)
    center = annealed_langevin(model.score, start.double(), model.sigmas, n_steps_each=5, step_lr=1e-3,
                               noise=torch.zeros_like)
    angles = torch.linspace(0, math.pi / 2, columns, dtype=torch.float64).reshape(1, -1, 1)
    ends = out[:, :1] - center[:, None], out[:, -1:] - center[:, None]
    blend = center[:, None] + angles.cos() * ends[0] + angles.sin() * ends[1]
    torch.testing.assert_close(out.double(), blend, rtol=0, atol=1e-6)  # exact but for float32 rounding (8e-7)


def mixture_model():
    from dae_gen.density import GaussianMixture

    mixture = GaussianMixture(means=torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64),
                              stds=torch.full((3,), 0.4, dtype=torch.float64),
                              weights=torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64))

    class Mixture(Objective):
        def __init__(self):
            super().__init__(data_shape=(2,))
            self.register_buffer("sigma_levels", geometric_sigmas(4.0, 0.05, 10).double())

        def score(self, x, sigma):
            return mixture.smoothed(float(sigma[0])).score(x.double()).to(x.dtype)

    return Mixture()


def _row_distances(rows):
    """(mean distance of neighbouring chains, of the two ends, of random pairs of end samples) over rows (R, J, 2)."""
    shuffled = rows[:, -1][torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(1))]
    return ((rows[:, 1:] - rows[:, :-1]).norm(dim=-1).mean(), (rows[:, 0] - rows[:, -1]).norm(dim=-1).mean(),
            (rows[:, 0] - shuffled).norm(dim=-1).mean())


@pytest.mark.parametrize("endpoints", ["shared", "spherical"])
def test_interpolation_rows_are_continuous_on_a_mixture(endpoints):
    """Three-mode mixture, 200 rows of 9: neighbouring chains end far closer than random pairs of samples (measured
    0.15 of the random-pair distance, asserted < 0.4), while a row's two ends are as far apart as random pairs
    (measured 1.0, asserted > 0.6): the rows interpolate between independent samples. The same starts with
    independent noise give neighbours as far apart as random pairs (> 0.6): the shared noise makes the rows."""
    model, rows, columns = mixture_model(), 200, 9
    knobs = dict(n_steps_each=30, step_lr=2e-4)
    out = interpolate(model, rows, n_interpolations=columns, init="gaussian", endpoints=endpoints,
                      generator=torch.Generator().manual_seed(0), **knobs)
    neighbours, ends, random_pairs = _row_distances(out)
    assert neighbours < 0.4 * random_pairs, (float(neighbours), float(random_pairs))
    assert ends > 0.6 * random_pairs, (float(ends), float(random_pairs))
    gen = torch.Generator().manual_seed(0)
    starts = interpolation_starts(4.0 * torch.randn(rows, 2, generator=gen), columns).flatten(0, 1)
    independent = annealed_langevin(model.score, starts, model.sigmas, generator=gen, **knobs).reshape(rows, columns, 2)
    neighbours, _, random_pairs = _row_distances(independent)
    assert neighbours > 0.6 * random_pairs, (float(neighbours), float(random_pairs))


def test_interpolation_starts():
    start, end = torch.randn(2, 3), torch.randn(2, 3)
    shared = interpolation_starts(start, 4)
    assert shared.shape == (2, 4, 3) and torch.equal(shared, start[:, None].expand(2, 4, 3))
    turned = interpolation_starts(start, 4, end=end, center=0.5)
    torch.testing.assert_close(turned[:, 0], start)
    torch.testing.assert_close(turned[:, -1], end)
    expected = 0.5 + math.cos(math.pi / 6) * (start - 0.5) + math.sin(math.pi / 6) * (end - 0.5)
    torch.testing.assert_close(turned[:, 1], expected)


def test_interpolation_with_temperature_langevin_and_bad_samplers():
    from dae_gen import ConfigError

    out = interpolate(GAUSSIAN, 2, n_interpolations=3, sampler="temperature_langevin", n_steps_hot=3,
                      n_steps_anneal=3, n_steps_cool=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 4) and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="annealed_langevin or temperature_langevin"):
        interpolate(_tiny("ddegen_mlp", (2,)), 2, sampler="generator")


# -- trajectories -----------------------------------------------------------------------------------------
def test_recorded_states_are_bit_identical_to_unrecorded_runs():
    """σ and step_lr are powers of two, so a run cut after level ℓ (sigmas[:ℓ], step_lr·(σ_ℓ/σ_L)²) takes exactly
    the recorded run's steps: its output must equal the recorded state at step ℓ·T bit for bit."""
    model, n_steps_each, step_lr = GAUSSIAN, 3, 2.0**-10
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    x0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    recorder = TrajectoryRecorder([3, 6, 9, 12])
    recorded = annealed_langevin(model.score, x0, sigmas, n_steps_each=n_steps_each, step_lr=step_lr, denoise=True,
                                 generator=torch.Generator().manual_seed(1), callback=recorder)
    plain = annealed_langevin(model.score, x0, sigmas, n_steps_each=n_steps_each, step_lr=step_lr, denoise=True,
                              generator=torch.Generator().manual_seed(1))
    assert torch.equal(recorded, plain)
    frames = recorder.frames()
    assert frames.shape == (4, 16, 4) and len(recorder._states) == 4  # only the requested steps are held
    for level in range(1, 5):
        scale = (float(sigmas[level - 1]) / float(sigmas[-1])) ** 2
        cut = annealed_langevin(model.score, x0, sigmas[:level], n_steps_each=n_steps_each, step_lr=step_lr * scale,
                                denoise=False, generator=torch.Generator().manual_seed(1))
        assert torch.equal(frames[level - 1], cut), level


def test_record_trajectory_over_any_driver_matches_the_unrecorded_driver():
    model = GAUSSIAN
    for driver, knobs in ((sample_annealed_langevin, dict(n_steps_each=4, step_lr=1e-3)),
                          (sample_temperature_langevin, dict(n_steps_hot=5, temp_hot=3.0, n_steps_anneal=5,
                                                             n_steps_cool=2))):
        built = functools.partial(driver, **knobs)
        trajectory = record_trajectory(model, 8, sampler=built, n_frames=4, generator=torch.Generator().manual_seed(2))
        plain = built(model, 8, generator=torch.Generator().manual_seed(2))
        assert torch.equal(trajectory.samples, plain)
        total = 40 if driver is sample_annealed_langevin else 12
        assert trajectory.steps == frame_steps(total, 4) and trajectory.steps[0] == 1 and trajectory.steps[-1] == total
        assert trajectory.frames.shape == (4, 8, 4)
    # with the temperature sampler: the first k steps at T = temp_hot are those of a run of k hot steps
    knobs = dict(n_steps_hot=6, temp_hot=3.0, n_steps_anneal=5, n_steps_cool=2, denoise=False)
    trajectory = record_trajectory(model, 8, sampler=functools.partial(sample_temperature_langevin, **knobs),
                                   steps=[2, 6], generator=torch.Generator().manual_seed(3))
    for k, frame in zip((2, 6), trajectory.frames):
        cut = sample_temperature_langevin(model, 8, **{**knobs, "n_steps_hot": k, "n_steps_anneal": 0,
                                                       "n_steps_cool": 0}, generator=torch.Generator().manual_seed(3))
        assert torch.equal(frame, cut)


def test_recorder_over_batches_and_bad_steps():
    from dae_gen.samplers.batches import draw_samples

    model = GAUSSIAN
    driver = functools.partial(sample_annealed_langevin, n_steps_each=2, step_lr=1e-3)
    recorder = TrajectoryRecorder([1, 20])
    samples = draw_samples(model, driver, 10, batch_size=4, seed=0, callback=recorder)
    frames = recorder.frames()
    assert frames.shape == (2, 10, 4)
    sigma_last = model.sigmas[-1]  # the samples are the last recorded states after the Tweedie step
    torch.testing.assert_close(samples, frames[-1] + sigma_last**2 * model.score(frames[-1], sigma_last.expand(10)))
    with pytest.raises(ValueError, match="runs 20 steps"):
        draw_samples(model, driver, 2, batch_size=2, callback=TrajectoryRecorder([21]))
    assert frame_steps(2700, 5) == [1, 676, 1350, 2025, 2700] and frame_steps(3, 10) == [1, 2, 3]


# -- denoising --------------------------------------------------------------------------------------------
def test_tweedie_denoising_of_gaussian_data_is_the_exact_posterior_mean():
    """E[x | x + σε] = m + Σ(Σ + σ²I)⁻¹(x̃ − m) for x ~ N(m, Σ); and the mean squared error of that posterior mean
    is tr(Σ − Σ(Σ + σ²I)⁻¹Σ), checked on 20 000 draws (4 standard errors)."""
    model, n = GAUSSIAN, 20000
    x = MEAN + torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ FACTOR
    sigmas = torch.tensor([0.05, 0.3, 1.0, 3.0], dtype=torch.float64)
    result = tweedie_denoising(model.score, x, sigmas, generator=torch.Generator().manual_seed(1))
    assert result.noisy.shape == result.denoised.shape == (4, n, 4)
    eps = (result.noisy[0] - x) / 0.05
    for k, sigma in enumerate(sigmas.tolist()):
        torch.testing.assert_close(result.noisy[k], x + sigma * eps)  # one ε, scaled by each σ
        gain = COV @ precision(sigma)
        posterior_mean = MEAN + (result.noisy[k] - MEAN) @ gain.T
        torch.testing.assert_close(result.denoised[k], posterior_mean, rtol=0, atol=1e-12)
        errors = (result.denoised[k] - x).pow(2).sum(1)
        expected = torch.trace(COV - gain @ COV)
        assert abs(float(errors.mean() - expected)) < 4 * float(errors.std()) / n**0.5
    assert float(eps.std()) == pytest.approx(1.0, abs=0.02)


def test_denoise_at_levels_uses_the_models_levels():
    model = GAUSSIAN
    result = denoise_at_levels(model, MEAN.expand(3, 4), n_sigmas=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.sigmas, model.sigmas[[0, 3, 6, 9]])
    assert result.denoised.shape == (4, 3, 4)


def test_denoising_with_an_energy_model_is_its_tweedie_jump():
    """For the annealed-DSM energy, x̃ + σ²·score(x̃, σ) = x̃ − σ₀²∇E(x̃) at every σ (its score is −(σ₀²/σ²)∇E)."""
    model = _tiny("mdsm_mlp", (2,))
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    result = denoise_at_levels(model, x, sigmas=[0.3, 1.0], generator=torch.Generator().manual_seed(1))
    for noisy, denoised in zip(result.noisy, result.denoised):
        grad = torch.func.grad(lambda y: model.energy(y).sum())(noisy)
        torch.testing.assert_close(denoised, noisy - model.sigma0**2 * grad)


# -- pictures ---------------------------------------------------------------------------------------------
def test_inpainting_rows_show_masked_input_completions_and_original(tmp_path):
    import numpy as np
    from PIL import Image

    from dae_gen.viz import save_inpainting_rows

    images = torch.stack([torch.full((1, 2, 2), 0.2), torch.full((1, 2, 2), 0.8)])  # (2, 1, 2, 2)
    mask = torch.tensor([[[True, False], [True, False]]])  # right column missing
    samples = torch.stack([torch.full((3, 1, 2, 2), 0.0), torch.full((3, 1, 2, 2), 1.0)])  # (2, 3, 1, 2, 2)
    grid = np.asarray(Image.open(save_inpainting_rows(images, mask, samples, tmp_path / "i.png", to_unit=lambda x: x)))
    assert grid.shape == (1 + 2 * 3, 1 + 5 * 3)  # 2 rows; masked | 3 samples | original
    cell = lambda r, c: grid[1 + 3 * r:3 + 3 * r, 1 + 3 * c:3 + 3 * c]  # noqa: E731
    assert (cell(0, 0)[:, 0] == 51).all() and (cell(0, 0)[:, 1] == 128).all()  # known 0.2 | missing grey 0.5
    assert all((cell(0, c) == 0).all() and (cell(1, c) == 255).all() for c in (1, 2, 3))
    assert (cell(0, 4) == 51).all() and (cell(1, 4) == 204).all()


def test_gif_has_one_frame_per_recorded_state(tmp_path):
    from PIL import Image, ImageSequence

    from dae_gen.viz import save_gif

    frames = torch.linspace(0, 1, 5).reshape(5, 1, 1, 1, 1).expand(5, 4, 1, 3, 3)  # 5 frames of 4 images
    path = save_gif(frames, tmp_path / "t.gif", to_unit=lambda x: x, nrow=2, scale=2)
    with Image.open(path) as gif:
        pictures = [frame.convert("L") for frame in ImageSequence.Iterator(gif)]
    assert len(pictures) == 5 and pictures[0].size == (2 * (1 + 2 * 4), 2 * (1 + 2 * 4))
    centres = [p.getpixel((4, 4)) for p in pictures]
    assert centres == [round(255 * v) for v in (0, 0.25, 0.5, 0.75, 1)]
