import math

import pytest
import torch

from dae_gen import noise


def test_geometric_schedule_endpoints_and_constant_ratio():
    sigmas = noise.geometric_sigmas(50.0, 0.01, 232)
    assert sigmas.shape == (232,)
    assert sigmas[0].item() == pytest.approx(50.0, rel=1e-6)
    assert sigmas[-1].item() == pytest.approx(0.01, rel=1e-6)
    ratios = sigmas[:-1].double() / sigmas[1:].double()
    assert torch.allclose(ratios, torch.full_like(ratios, (50 / 0.01) ** (1 / 231)), rtol=1e-5)


def _coverage(gamma, dim):
    c = math.sqrt(2 * dim) * (gamma - 1)
    phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731
    return phi(c + 3 * gamma) - phi(c - 3 * gamma)


def test_ncsnv2_ratio_solves_technique_2():
    for dim in (5, 64, 784, 3072, 12288):
        gamma = noise.ncsnv2_ratio(dim)
        assert _coverage(gamma, dim) == pytest.approx(0.5, abs=1e-6)
        assert gamma > 1


@pytest.mark.parametrize("sigma_max, dim, published", [(50.0, 3 * 32 * 32, 232), (90.0, 3 * 64 * 64, 500)])
def test_ncsnv2_levels_against_published_counts(sigma_max, dim, published):
    # The published L (CIFAR-10 232, CelebA 64 500) has coverage ~0.57: "approximately 0.5" in the paper.
    published_gamma = (sigma_max / 0.01) ** (1 / (published - 1))
    assert 0.5 < _coverage(published_gamma, dim) < 0.6
    ours = noise.ncsnv2_num_levels(sigma_max, 0.01, dim)
    assert 0.9 * published < ours < published  # the exact root needs slightly fewer levels
    assert _coverage(noise.ncsnv2_ratio(dim), dim) == pytest.approx(0.5, abs=1e-9)


def test_ncsnv2_ratio_undefined_in_low_dimension():
    with pytest.raises(ValueError, match="no solution"):
        noise.ncsnv2_ratio(2)


def test_ncsnv2_sigma_max_is_max_pairwise_distance():
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    assert noise.ncsnv2_sigma_max(pts) == pytest.approx(5.0)


def test_batch_spaced_sigmas():
    lin = noise.batch_spaced_sigmas(128, 0.05, 1.2, spacing="linear")
    assert lin[0].item() == pytest.approx(1.2) and lin[-1].item() == pytest.approx(0.05)
    assert torch.allclose(lin[:-1] - lin[1:], torch.full((127,), (1.2 - 0.05) / 127), atol=1e-6)
    log = noise.batch_spaced_sigmas(128, 0.1, 3.0, spacing="log")
    assert log[0].item() == pytest.approx(3.0, rel=1e-5) and log[-1].item() == pytest.approx(0.1, rel=1e-5)
    r = log[:-1] / log[1:]
    assert torch.allclose(r, r[0].expand_as(r), rtol=1e-4)


def test_sample_levels_uniform_over_schedule():
    sigmas = noise.geometric_sigmas(1.0, 0.01, 4)
    drawn = noise.sample_levels(40000, sigmas, generator=torch.Generator().manual_seed(0))
    counts = torch.stack([(drawn == s).sum() for s in sigmas]).float() / 40000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.01)


@pytest.mark.parametrize("args, match", [
    ((-1.0, 0.01, 10), "positive"),
    ((0.01, 1.0, 10), "larger than sigma_min"),
    ((1.0, 0.01, 1), "at least 2"),
])
def test_bad_schedules_raise(args, match):
    with pytest.raises(ValueError, match=match):
        noise.geometric_sigmas(*args)


@pytest.mark.parametrize("sigmas, match", [
    ([1.0, 0.5, 0.7], "strictly decreasing"),
    ([1.0, -0.5], "positive"),
    ([1.0, float("nan")], "finite"),
])
def test_validate_sigmas_rejects_bad_values(sigmas, match):
    with pytest.raises(ValueError, match=match):
        noise.validate_sigmas(torch.tensor(sigmas))
