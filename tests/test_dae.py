"""Denoising autoencoder objective: the linear optimum for Gaussian data, the score identity, the NCSN
weighting identity, and a trained MLP's score against the exact smoothed-mixture score."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from conftest import fit_on_mixture, score_errors
from dae_gen.density import GaussianMixture
from dae_gen.nets.mlp import ScoreMLP
from dae_gen.noise import as_sigma_schedule, geometric_sigmas, sample_levels
from dae_gen.objectives.dae import DenoisingAutoencoder
from dae_gen.objectives.denoising import dsm_losses


class LinearDenoiser(nn.Module):
    """``net(x, σ) = W x + b`` (σ ignored): the family that contains the optimal DAE of Gaussian data."""

    def __init__(self, *, data_shape, weight=None, bias=None):
        super().__init__()
        dim = math.prod(data_shape)
        self.weight = nn.Parameter(torch.zeros(dim, dim) if weight is None else weight.clone())
        self.bias = nn.Parameter(torch.zeros(dim) if bias is None else bias.clone())

    def forward(self, x, sigma):
        return x @ self.weight.T + self.bias


def three_modes() -> GaussianMixture:
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    return GaussianMixture(1.5 * torch.stack([angles.cos(), angles.sin()], 1), [0.3] * 3, [0.5, 0.3, 0.2])


def test_sigma_schedule_accepts_scalars_lists_and_tensors():
    assert as_sigma_schedule(0.5).tolist() == [0.5]
    assert as_sigma_schedule([1.0, 0.1]).tolist() == pytest.approx([1.0, 0.1])
    assert as_sigma_schedule(torch.tensor([2.0, 1.0])).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="decreasing"):
        as_sigma_schedule([0.1, 1.0])
    with pytest.raises(ValueError, match="weighting"):
        DenoisingAutoencoder(net=LinearDenoiser, data_shape=(2,), sigmas=[0.1], weighting="snr")
    with pytest.raises(ValueError, match="divide_by_sigma"):  # the net no longer scales its own output
        DenoisingAutoencoder(net=functools.partial(ScoreMLP, divide_by_sigma=True), data_shape=(2,), sigmas=[0.1])


@pytest.mark.parametrize(("residual", "scale_residual"), [(True, True), (True, False), (False, False)])
def test_linear_dae_on_gaussian_data_learns_the_posterior_mean(residual, scale_residual):
    """For x ~ N(μ, s²I), r*(x̃) = μ + c(x̃ − μ) with c = s²/(s² + σ²) (Gaussian posterior mean)."""
    torch.manual_seed(0)
    mu, s, sigma = torch.tensor([1.0, -0.5, 0.3]), 0.8, 0.5
    c = s**2 / (s**2 + sigma**2)
    model = DenoisingAutoencoder(net=LinearDenoiser, data_shape=(3,), sigmas=[sigma], residual=residual,
                                 scale_residual=scale_residual)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400, eta_min=1e-4)
    for _ in range(400):
        x = mu + s * torch.randn(2048, 3)
        loss = model.losses("model", x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    scale = sigma if residual and scale_residual else 1.0  # r(x̃) = [I] + scale·(W x̃ + b)
    weight = scale * model.net.weight.detach() + (torch.eye(3) if residual else 0)
    torch.testing.assert_close(weight, c * torch.eye(3), atol=0.02, rtol=0)
    torch.testing.assert_close(scale * model.net.bias.detach(), (1 - c) * mu, atol=0.02, rtol=0)


def test_score_of_the_optimal_dae_is_the_smoothed_gaussian_score():
    """(r*(x) − x)/σ² = −(x − μ)/(s² + σ²) = ∇log N(μ, (s² + σ²)I) exactly, at every σ of the schedule."""
    mu, s = torch.tensor([0.4, -1.0], dtype=torch.float64), 0.7
    x = torch.randn(64, 2, dtype=torch.float64)
    for sigma, scale_residual in [(0.05, True), (0.5, True), (2.0, True), (0.5, False)]:
        c, scale = s**2 / (s**2 + sigma**2), sigma if scale_residual else 1.0
        net = functools.partial(LinearDenoiser, weight=(c - 1) / scale * torch.eye(2, dtype=torch.float64),
                                bias=(1 - c) / scale * mu)
        model = DenoisingAutoencoder(net=net, data_shape=(2,), sigmas=[sigma], scale_residual=scale_residual)
        sigma_b = torch.full((64,), sigma, dtype=torch.float64)
        torch.testing.assert_close(model.score(x, sigma_b), -(x - mu) / (s**2 + sigma**2))


def test_sigma2_weighting_is_twice_the_ncsn_loss_and_none_is_the_reconstruction_error():
    """‖r − x‖²/σ² = σ²‖s(x̃) + (x̃ − x)/σ²‖² = 2 × NCSN's ½σ²‖·‖², for the same σ and noise draws."""
    torch.manual_seed(0)
    net = functools.partial(ScoreMLP, hidden=16, depth=1)
    model = DenoisingAutoencoder(net=net, data_shape=(2,), sigmas=[2.0, 0.5, 0.1]).double()
    x = torch.randn(32, 2, dtype=torch.float64)

    torch.manual_seed(1)
    weighted = model.losses("model", x)
    torch.manual_seed(1)
    sigma = sample_levels(32, model.sigma_levels).double()
    noise = torch.randn_like(x)
    ncsn = dsm_losses(model.score, x, sigma, noise=noise)
    torch.testing.assert_close(weighted, 2 * ncsn)

    model.weighting = "none"
    torch.manual_seed(1)
    plain = model.losses("model", x)
    recon = model.denoise(x + sigma[:, None] * noise, sigma)
    torch.testing.assert_close(plain, (recon - x).pow(2).sum(1))
    torch.testing.assert_close(plain, weighted * sigma**2)
    assert len(set(sigma.tolist())) == 3  # every level was exercised


def test_trained_mlp_dae_score_matches_the_smoothed_mixture_score():
    """A single-σ MLP DAE on a 3-mode mixture: relative squared error of (r − x)/σ² vs ∇log p_σ below 0.15
    (measured ≈ 0.02) on points drawn from p_σ."""
    torch.manual_seed(0)
    mixture, sigma = three_modes(), 0.3
    net = functools.partial(ScoreMLP, hidden=64, depth=2)
    model = DenoisingAutoencoder(net=net, data_shape=(2,), sigmas=[sigma])
    gen = fit_on_mixture(model, mixture, steps=1000, lr=5e-3, eta_min=2.5e-4)
    rel_error, _ = score_errors(model, mixture, sigma, gen)
    assert rel_error < 0.15, f"relative score error {rel_error:.3f}"


def test_trained_multi_level_dae_score_matches_at_every_level():
    """Noise-conditional MLP DAE over 5 geometric levels 1 → 0.05 (σ-scaled residual, λ = 1/σ²): relative
    squared score error below 0.2 at every level (measured 0.01–0.12; 0.02–0.31 without the σ output scale)."""
    torch.manual_seed(0)
    mixture, sigmas = three_modes(), geometric_sigmas(1.0, 0.05, 5)
    net = functools.partial(ScoreMLP, hidden=64, depth=2)
    model = DenoisingAutoencoder(net=net, data_shape=(2,), sigmas=sigmas)
    gen = fit_on_mixture(model, mixture, steps=1500, lr=5e-3, eta_min=2.5e-4)
    for sigma in sigmas.tolist():
        rel_error, _ = score_errors(model, mixture, sigma, gen)
        assert rel_error < 0.2, f"σ={sigma:.3f}: relative score error {rel_error:.3f}"


def test_per_example_losses_on_images_are_finite_and_reach_the_net():
    torch.manual_seed(0)
    net = functools.partial(ScoreMLP, hidden=16, depth=1)
    model = DenoisingAutoencoder(net=net, data_shape=(1, 8, 8), sigmas=[1.0, 0.1])
    x = torch.rand(5, 1, 8, 8)
    losses = model.losses("model", x)
    assert losses.shape == (5,) and torch.isfinite(losses).all() and (losses > 0).all()
    losses.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.phase_parameters("model"))
    assert model.score(x, torch.full((5,), 0.1)).shape == x.shape
    assert model.sigmas.tolist() == pytest.approx([1.0, 0.1])
