"""Annealed Langevin dynamics driven by analytic scores (NCSN Alg. 1)."""

import pytest
import torch

from dae_gen.density import GaussianMixture
from dae_gen.noise import geometric_sigmas
from dae_gen.samplers.langevin import annealed_langevin, denoise_step

WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]], dtype=torch.float64)
STD = 0.4


def mixture_score(sigma_levels):
    mixture = GaussianMixture(means=MEANS, stds=torch.full((3,), STD, dtype=torch.float64), weights=WEIGHTS)

    def score(x, sigma):
        # every chain sits at one level at a time; use its sigma for the smoothed mixture
        return mixture.smoothed(float(sigma[0])).score(x.double()).to(x.dtype)

    return mixture, score


def test_annealed_langevin_recovers_mode_weights_and_spread():
    sigmas = geometric_sigmas(6.0, 0.05, 12)
    mixture, score = mixture_score(sigmas)
    gen = torch.Generator().manual_seed(0)
    x0 = 6.0 * torch.randn(3000, 2, generator=gen)
    x = annealed_langevin(score, x0, sigmas, n_steps_each=60, step_lr=2e-4, denoise=False, generator=gen)
    nearest = torch.cdist(x.double(), MEANS).argmin(dim=1)
    weights = torch.bincount(nearest, minlength=3).double() / len(x)
    assert torch.allclose(weights, WEIGHTS, atol=0.05), weights  # 3000 chains: standard error <= 0.01
    # per-mode spread: p_{sigma_L} has per-coordinate std sqrt(0.4^2 + 0.05^2) = 0.403
    target = (STD**2 + 0.05**2) ** 0.5
    for k in range(3):
        spread = (x[nearest == k].double() - MEANS[k]).std(dim=0)
        assert torch.allclose(spread, torch.full((2,), target, dtype=torch.float64), rtol=0.12), (k, spread)


def test_denoise_moves_samples_by_exactly_sigma_squared_times_score():
    sigmas = geometric_sigmas(1.0, 0.1, 3)
    _, score = mixture_score(sigmas)
    x = torch.randn(64, 2, dtype=torch.float64)
    sigma_last = sigmas[-1].double()
    out = denoise_step(score, x, sigma_last)
    assert torch.equal(out, x + sigma_last**2 * score(x, sigma_last.expand(64)))
    # and the sampler's final step is exactly that step applied to the undenoised chain
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x0 = torch.randn(64, 2, dtype=torch.float64)
    raw = annealed_langevin(score, x0, sigmas, n_steps_each=4, step_lr=1e-3, denoise=False, generator=g1)
    den = annealed_langevin(score, x0, sigmas, n_steps_each=4, step_lr=1e-3, denoise=True, generator=g2)
    assert torch.allclose(den, denoise_step(score, raw, sigmas[-1]), atol=1e-12)


def test_step_rule_is_alpha_sigma_squared_over_sigma_L_squared():
    # with a zero score, the chain is a random walk with variance sum_i T * alpha_i
    sigmas = torch.tensor([2.0, 1.0, 0.5])
    zero = lambda x, s: torch.zeros_like(x)  # noqa: E731
    x = annealed_langevin(zero, torch.zeros(20000, 1), sigmas, n_steps_each=3, step_lr=0.01, denoise=False,
                          generator=torch.Generator().manual_seed(0))
    expected = 3 * 0.01 * (sigmas**2 / 0.25).sum().item()
    assert x.var().item() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_steps_each": 0, "step_lr": 1e-3}, "n_steps_each"),
    ({"n_steps_each": 2, "step_lr": -1.0}, "step_lr"),
])
def test_bad_sampler_arguments(kwargs, match):
    zero = lambda x, s: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match=match):
        annealed_langevin(zero, torch.zeros(2, 2), torch.tensor([1.0, 0.1]), **kwargs)


def test_unordered_sigmas_rejected_by_sampler():
    zero = lambda x, s: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="strictly decreasing"):
        annealed_langevin(zero, torch.zeros(2, 2), torch.tensor([0.1, 1.0]), n_steps_each=1, step_lr=1e-3)
