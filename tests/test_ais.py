"""Annealed importance sampling against closed-form normalising constants and exact mixture log-densities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dae_gen.ais import ais_betas, annealed_importance_log_z, energy_log_likelihood, mala_transition
from dae_gen.density import GaussianMixture, importance_log_likelihood
from dae_gen.objectives.dde import DenoisingDensityEstimator
from dae_gen.objectives.mdsm import AnnealedDSMEnergy


def gaussian_energy(dim: int, *, s: float = 0.5, c: float = 1.3):
    """``E(x) = ‖x − m‖²/(2s²) + c`` and its ``log Z = log ∫ exp(−E) = (D/2) log(2π s²) − c``."""
    m = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64) + 0.5  # the proposal N(0, 2² I) is off in mean and scale

    def energy(x):
        return (x - m).pow(2).sum(1) / (2 * s**2) + c

    return energy, 0.5 * dim * math.log(2 * math.pi * s**2) - c


def three_modes() -> GaussianMixture:
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    return GaussianMixture(1.5 * torch.stack([angles.cos(), angles.sin()], 1), [0.3] * 3, [0.5, 0.3, 0.2])


class MixtureLogDensity(nn.Module):
    """An exact log-density plus a constant, as a network (``sign=-1`` makes it an energy)."""

    def __init__(self, mixture: GaussianMixture, *, constant: float, sign: float = 1.0):
        super().__init__()
        self.mixture, self.constant, self.sign = mixture, constant, sign

    def forward(self, x):
        return self.sign * (self.mixture.log_prob(x) + self.constant)


# -- schedule and MALA -----------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["sigmoid", "geometric", "linear"])
def test_betas_run_from_zero_to_one_strictly_increasing(schedule):
    betas = ais_betas(50, schedule=schedule)
    assert betas.shape == (51,) and betas.dtype == torch.float64
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    torch.testing.assert_close(ais_betas(1, schedule=schedule), torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_mala_leaves_a_gaussian_invariant():
    """From exact draws of N(m, diag(s²)), 20 MALA steps keep mean and variance. At ε = 1.2 the unadjusted
    Langevin chain would inflate the s = 0.7 variance ×3.8 (its stationary variance: ε²/(1 − (1 − ε²/2s²)²))."""
    std = torch.tensor([0.7, 1.0, 1.5], dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = mean + std * torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    y, acceptance = mala_transition(lambda z: -((z - mean) / std).pow(2).sum(1) / 2, x, step_size=1.2, n_steps=20,
                                    generator=gen)
    assert acceptance.shape == (20,) and 0.3 < float(acceptance.mean()) < 0.9  # MH really rejects
    assert (y != x).any(dim=1).float().mean() > 0.99                            # the chains moved
    torch.testing.assert_close((y.mean(0) - mean) / std, torch.zeros(3, dtype=torch.float64), atol=0.08, rtol=0)
    torch.testing.assert_close(y.var(0) / std**2, torch.ones(3, dtype=torch.float64), atol=0.1, rtol=0)


# -- log Z of Gaussians ----------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 10])
def test_ais_log_z_of_a_gaussian_energy_matches_the_closed_form(dim):
    energy, log_z = gaussian_energy(dim)
    est = annealed_importance_log_z(lambda x: -energy(x), dim_shape=(dim,), n_chains=128, n_steps=300,
                                    proposal_mean=0.0, proposal_std=2.0, generator=torch.Generator().manual_seed(1))
    assert est.log_weights.shape == (128,) and est.log_weights.dtype == torch.float64
    assert est.acceptance.shape == (300,) and 0.4 < float(est.acceptance.mean()) < 0.8  # adapted toward 0.6
    assert 0 < est.log_z_stderr < 0.25
    assert abs(est.log_z - log_z) < 4 * est.log_z_stderr  # measured over 200 seeds: |error| / stderr ≤ 3.2
    torch.testing.assert_close(est.log_z, float(torch.logsumexp(est.log_weights, 0) - math.log(128)))
    # the final states are draws from exp(−E)/Z: mean m, variance s² = 0.25
    x = est.samples
    torch.testing.assert_close(x.mean(0), torch.linspace(-1.0, 1.0, dim, dtype=torch.float64) + 0.5, atol=0.2, rtol=0)
    assert abs(float(x.var(0).mean()) - 0.25) < 0.08


def test_temperature_scales_the_energy():
    """``p_T ∝ exp(−E/T)`` for a Gaussian energy: ``log Z_T = (D/2) log(2π s² T) − c/T``."""
    energy, _ = gaussian_energy(3)

    class Model(nn.Module):
        def energy(self, x):
            return energy(x)

    temperature, x = 2.0, torch.zeros(5, 3, dtype=torch.float64)
    out = energy_log_likelihood(Model(), x, temperature=temperature, n_chains=128, n_steps=200, proposal_std=2.0,
                                generator=torch.Generator().manual_seed(2))
    log_z = 1.5 * math.log(2 * math.pi * 0.25 * temperature) - 1.3 / temperature
    assert abs(out.log_z - log_z) < 4 * out.log_z_stderr
    torch.testing.assert_close(out.log_likelihood, -energy(x) / temperature - out.log_z)


def test_ais_beats_plain_importance_sampling_in_ten_dimensions():
    """Same budget (chains × temperatures = proposals), same mismatched proposal N(0, 2² I) for N(m, 0.5² I).
    Measured over 200 seeds: AIS error ≈ N(0, 0.1²); IS error mean −0.56, sd 1.06 (ESS of ~5 out of 38 400)."""
    energy, log_z = gaussian_energy(10)
    ais_err, is_err = [], []
    for seed in range(4):
        est = annealed_importance_log_z(lambda x: -energy(x), dim_shape=(10,), n_chains=128, n_steps=300,
                                        proposal_std=2.0, generator=torch.Generator().manual_seed(seed))
        plain = importance_log_likelihood(lambda x: -energy(x), torch.zeros(1, 10, dtype=torch.float64), sigma=0.0,
                                          n_proposal=128 * 300, proposal_std=2.0,
                                          generator=torch.Generator().manual_seed(seed))
        assert abs(est.log_z - log_z) < 4 * est.log_z_stderr
        ais_err.append(est.log_z - log_z)
        is_err.append(plain.log_z - log_z)
    ais_rms, is_rms = (math.sqrt(sum(e * e for e in errs) / 4) for errs in (ais_err, is_err))
    assert ais_rms < 0.25 and is_rms > 3 * ais_rms, (ais_err, is_err)


def test_hard_support_constraints_are_rejected_not_propagated():
    """``log f = −∞`` outside the unit square (a truncated Gaussian): moves leaving the support are rejected, the
    chains that start outside get weight 0, and ``Z = (√(2π) (Φ(0.7) − Φ(−0.3)))²``."""
    def log_f(x):
        inside = ((x > 0) & (x < 1)).all(1)
        return torch.where(inside, -0.5 * (x - 0.3).pow(2).sum(1), torch.full_like(x[:, 0], -math.inf))

    def normal_cdf(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    log_z = 2 * math.log(math.sqrt(2 * math.pi) * (normal_cdf(0.7) - normal_cdf(-0.3)))
    est = annealed_importance_log_z(log_f, dim_shape=(2,), n_chains=256, n_steps=200, proposal_mean=0.5,
                                    proposal_std=1.0, generator=torch.Generator().manual_seed(7))
    alive = torch.isfinite(est.log_weights)
    assert 0 < alive.float().mean() < 0.5 and not torch.isnan(est.log_weights).any()
    assert ((est.samples[alive] > 0) & (est.samples[alive] < 1)).all()
    assert math.isfinite(est.log_z) and abs(est.log_z - log_z) < 4 * est.log_z_stderr


# -- mixtures, energy models and DDEs --------------------------------------------------------------
def test_ais_log_z_of_a_shifted_mixture_is_the_shift():
    mixture = three_modes()
    est = annealed_importance_log_z(lambda x: mixture.log_prob(x) + 3.7, dim_shape=(2,), n_chains=128, n_steps=300,
                                    proposal_mean=0.5, proposal_std=2.0, generator=torch.Generator().manual_seed(3))
    assert abs(est.log_z - 3.7) < 4 * est.log_z_stderr and est.log_z_stderr < 0.05


def test_energy_log_likelihood_is_the_exact_log_density_for_energy_models_and_ddes():
    """``exp(−E)`` of an annealed-DSM energy and ``exp f`` of a DDE, both a mixture density × e^{3.7}: after AIS
    normalisation the held-out log-likelihoods are the mixture's exact ``log p``; float32 chains for the DDE."""
    mixture = three_modes()
    energy_model = AnnealedDSMEnergy(net=lambda data_shape: MixtureLogDensity(mixture, constant=3.7, sign=-1.0),
                                     data_shape=(2,), sigma_low=0.1, sigma_high=1.0)
    dde = DenoisingDensityEstimator(net=lambda data_shape: MixtureLogDensity(mixture, constant=3.7),
                                    data_shape=(2,), sigma=0.2)
    held_out = mixture.sample(200, generator=torch.Generator().manual_seed(4))  # (200, 2) float64
    exact = mixture.log_prob(held_out)
    for model, x in ((energy_model, held_out), (dde, held_out.float())):
        out = energy_log_likelihood(model, x, n_chains=128, n_steps=300, proposal_std=2.0,
                                    generator=torch.Generator().manual_seed(5))
        assert out.log_likelihood.shape == (200,) and out.log_likelihood.dtype == torch.float64
        assert out.ais.samples.dtype == x.dtype
        assert abs(out.log_z - 3.7) < 4 * out.log_z_stderr
        torch.testing.assert_close(out.log_likelihood, exact, atol=4 * out.log_z_stderr + 1e-5, rtol=0)


def test_runs_are_reproducible_and_report_progress():
    energy, _ = gaussian_energy(2)
    seen = []
    kwargs = dict(dim_shape=(2,), n_chains=16, n_steps=20, proposal_std=2.0)
    first = annealed_importance_log_z(lambda x: -energy(x), generator=torch.Generator().manual_seed(6),
                                      callback=seen.append, **kwargs)
    again = annealed_importance_log_z(lambda x: -energy(x), generator=torch.Generator().manual_seed(6), **kwargs)
    torch.testing.assert_close(first.log_weights, again.log_weights, rtol=0, atol=0)
    assert [step.i for step in seen] == list(range(1, 21)) and seen[-1].extras["beta"] == 1.0
    assert seen[-1].x.shape == (16, 2) and seen[-1].extras["log_weights"].shape == (16,)
    fixed = annealed_importance_log_z(lambda x: -energy(x), generator=torch.Generator().manual_seed(6),
                                      step_size=0.3, target_acceptance=None, **kwargs)
    torch.testing.assert_close(fixed.step_sizes, torch.full((20,), 0.3, dtype=torch.float64))


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(proposal_std=0.0), "proposal_std must be positive"),
    (dict(proposal_std=torch.tensor([1.0, -1.0])), "proposal_std must be positive"),
    (dict(n_steps=0), "n_steps must be at least 1"),
    (dict(n_chains=0), "n_chains must be at least 1"),
    (dict(step_size=-0.1), "step_size must be positive"),
    (dict(schedule="cosine"), "schedule must be one of"),
    (dict(target_acceptance=1.5), "target_acceptance must lie in"),
    (dict(dim_shape=()), "dim_shape must be"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = dict(dim_shape=(2,), n_chains=4, n_steps=3) | kwargs
    with pytest.raises(ValueError, match=message):
        annealed_importance_log_z(lambda x: -x.pow(2).sum(1), **args)


def test_bad_models_and_log_densities_raise_clear_errors():
    with pytest.raises(ValueError, match="log_f must map"):
        annealed_importance_log_z(lambda x: -x.pow(2), dim_shape=(2,), n_chains=4, n_steps=3)
    with pytest.raises(ValueError, match="neither energy"):
        energy_log_likelihood(nn.Linear(2, 1), torch.zeros(3, 2), n_chains=4, n_steps=3)
    with pytest.raises(ValueError, match="temperature must be positive"):
        energy_log_likelihood(DenoisingDensityEstimator(net=lambda data_shape: nn.Linear(2, 1), data_shape=(2,),
                                                        sigma=0.2), torch.zeros(3, 2), temperature=0.0)
