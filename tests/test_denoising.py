"""The one denoising objective: preconditionings against closed forms (EDM's unit-variance design, the Gaussian
optimum), the same score from every preconditioning, the σ distributions, and the old NCSN/DAE models pinned
by losses and scores recorded with the code before preconditioning moved out of the networks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from dae_gen.noise import LogNormalSigma, UniformLevels, geometric_sigmas
from dae_gen.objectives.denoising import DenoisingObjective, dsm_losses
from dae_gen.objectives.preconditioning import (
    EDMPreconditioning,
    NCSNPreconditioning,
    ResidualPreconditioning,
    loss_weight,
)

LEGACY = Path(__file__).parent / "data" / "legacy_denoisers.pt"
PRECONDITIONINGS = {
    "edm": EDMPreconditioning(sigma_data=0.5),
    "edm_wide": EDMPreconditioning(sigma_data=1.3),
    "ncsnv2": NCSNPreconditioning(divide_by_sigma=True),
    "ncsn": NCSNPreconditioning(divide_by_sigma=False),
    "residual": ResidualPreconditioning(residual=True, scale_residual=True),
    "residual_unscaled": ResidualPreconditioning(residual=True, scale_residual=False),
    "direct": ResidualPreconditioning(residual=False),
}


def _label_to_sigma(preconditioning, label: torch.Tensor) -> torch.Tensor:
    """Invert c_noise: ¼ ln σ for EDM, ln σ otherwise (a test-side helper for the analytic optimal networks)."""
    return (4 * label).exp() if isinstance(preconditioning, EDMPreconditioning) else label.exp()


class OptimalGaussianNet(nn.Module):
    """The network F* that makes ``D`` the posterior mean of N(μ, s²I) data under a given preconditioning:
    ``F* = (D*(x̃) − c_skip·x̃)/c_out`` with ``D*(x̃) = μ + s²/(s² + σ²)·(x̃ − μ)`` and ``x̃ = input/c_in``."""

    def __init__(self, *, data_shape, preconditioning, mean, std):
        super().__init__()
        self.preconditioning, self.mean, self.std = preconditioning, mean, std

    def forward(self, y, label):
        sigma = _label_to_sigma(self.preconditioning, label.double())
        c = self.preconditioning.coefficients(sigma)
        x_noisy = y.double() / c.c_in[:, None]
        shrink = (self.std**2 / (self.std**2 + sigma**2))[:, None]
        optimal = self.mean + shrink * (x_noisy - self.mean)
        return ((optimal - c.c_skip[:, None] * x_noisy) / c.c_out[:, None]).to(y.dtype)


# -- the preconditionings ---------------------------------------------------------------------------
def test_edm_coefficients_give_unit_variance_input_and_target_and_lambda_is_one_over_c_out_squared():
    """Karras et al. 2022, App. B.6: for data of std σ_d, Var(c_in·x̃) = 1, the effective target
    (x − c_skip·x̃)/c_out has variance 1, and λ = (σ² + σ_d²)/(σσ_d)² = 1/c_out²."""
    sigma_d = 0.5
    sigma = torch.tensor([0.002, 0.05, 0.5, 2.0, 80.0], dtype=torch.float64)
    c = EDMPreconditioning(sigma_data=sigma_d).coefficients(sigma)
    torch.testing.assert_close(c.c_in**2 * (sigma_d**2 + sigma**2), torch.ones_like(sigma))
    target_var = ((1 - c.c_skip) ** 2 * sigma_d**2 + c.c_skip**2 * sigma**2) / c.c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(sigma))
    torch.testing.assert_close(loss_weight("edm", sigma, c), (sigma**2 + sigma_d**2) / (sigma * sigma_d) ** 2)
    torch.testing.assert_close(c.c_noise, sigma.log() / 4)
    # and by Monte Carlo: with F ≡ 0 the EDM loss per dimension is E‖target‖²/D = 1 at every σ
    model = DenoisingObjective(net=lambda data_shape: _Zero(), data_shape=(8,),
                               preconditioning=EDMPreconditioning(sigma_data=sigma_d), sigmas=[1.0],
                               training_sigma=LogNormalSigma(), weighting="edm")
    torch.manual_seed(0)
    losses = model.losses("model", sigma_d * torch.randn(100_000, 8)) / 8
    assert losses.mean().item() == pytest.approx(1.0, abs=4 * losses.std().item() / math.sqrt(len(losses)))


class _Zero(nn.Module):
    def forward(self, y, label):
        return torch.zeros_like(y)


@pytest.mark.parametrize("name", sorted(PRECONDITIONINGS))
def test_every_preconditioning_gives_the_exact_score_and_the_loss_floor_at_the_optimum(name):
    """The optimal denoiser of N(μ, s²I) data, expressed through each preconditioning, has score
    −(x − μ)/(s² + σ²) (the smoothed Gaussian's) and loss λ(σ)·D·s²σ²/(s² + σ²) (the posterior variance)."""
    preconditioning = PRECONDITIONINGS[name]
    mean, std, dim = torch.tensor([0.4, -1.0, 0.2], dtype=torch.float64), 0.7, 3
    model = DenoisingObjective(net=lambda data_shape: OptimalGaussianNet(
        data_shape=data_shape, preconditioning=preconditioning, mean=mean, std=std), data_shape=(dim,),
        preconditioning=preconditioning, sigmas=[0.5], training_sigma=LogNormalSigma(), weighting="sigma2")
    torch.manual_seed(0)
    x = torch.randn(256, dim, dtype=torch.float64) * 3
    for sigma_value in (0.002, 0.05, 0.5, 3.0, 80.0):
        sigma = torch.full((256,), sigma_value, dtype=torch.float64)
        exact = -(x - mean) / (std**2 + sigma_value**2)
        torch.testing.assert_close(model.score(x, sigma), exact, rtol=1e-9, atol=1e-9 / sigma_value**2)
        torch.testing.assert_close(model.denoise(x, sigma), x + sigma_value**2 * exact)
    data = mean + std * torch.randn(200_000, dim, dtype=torch.float64)
    losses = model.losses("model", data)  # σ log-normal, λ = 1/σ²: each loss estimates D s²/(s² + σ²)
    torch.manual_seed(0)
    sigma = LogNormalSigma().sample(200_000, model.sigma_levels.double())
    expected = (dim * std**2 / (std**2 + sigma**2)).mean().item()
    assert losses.mean().item() == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name", sorted(PRECONDITIONINGS))
def test_ncsn_weighting_equals_the_ncsn_loss_of_the_models_own_score(name):
    """‖D(x̃) − x‖²/(2σ²) = ½σ²‖s(x̃) + ε/σ‖² for s = (D − x)/σ², with the same σ and noise draws."""
    torch.manual_seed(0)
    net = lambda data_shape: nn.Sequential(nn.Flatten(), nn.Linear(4, 4)).double()  # noqa: E731

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net(None)

        def forward(self, y, label):
            return self.inner(y) * (1 + label[:, None])

    model = DenoisingObjective(net=lambda data_shape: Net(), data_shape=(4,), preconditioning=PRECONDITIONINGS[name],
                               sigmas=geometric_sigmas(3.0, 0.01, 6), weighting="ncsn").double()
    x = torch.randn(64, 4, dtype=torch.float64)
    torch.manual_seed(1)
    losses = model.losses("model", x)
    torch.manual_seed(1)
    sigma = UniformLevels().sample(64, model.sigma_levels).double()
    torch.testing.assert_close(losses, dsm_losses(model.score, x, sigma, noise=torch.randn_like(x)))


class PerLevelLinear(nn.Module):
    """``F(y, c_noise) = a_k·y + b_k`` with one scalar a_k and one vector b_k per noise level k (found by its label):
    the family holding the optimal EDM network of Gaussian data at every level."""

    def __init__(self, *, data_shape, labels):
        super().__init__()
        self.register_buffer("labels", labels)
        self.a = nn.Parameter(torch.zeros(len(labels)))
        self.b = nn.Parameter(torch.zeros(len(labels), data_shape[0]))

    def forward(self, y, label):
        k = (label[:, None] - self.labels[None]).abs().argmin(dim=1)  # (B,) level index
        return self.a[k, None] * y + self.b[k]


def fit_gaussian(model, mean, std, *, steps, lr, batch):
    """Adam with a cosine schedule down to 1e-4 on fresh N(mean, std² I) batches (the same draws as before)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    for _ in range(steps):
        loss = model.losses("model", mean + std * torch.randn(batch, len(mean))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_trained_linear_edm_denoiser_matches_the_closed_form_optimum():
    """EDM preconditioning + EDM weighting on N(μ, s²I) data: the trained denoiser at each level matches
    D*(x̃) = μ + s²/(s² + σ²)·(x̃ − μ), i.e. slope s²/(s² + σ²) and offset σ²/(s² + σ²)·μ."""
    torch.manual_seed(0)
    mean, std = torch.tensor([1.0, -0.5, 0.3]), 0.8
    sigmas = torch.tensor([5.0, 1.0, 0.3, 0.05])
    precond = EDMPreconditioning(sigma_data=0.5)
    labels = precond.coefficients(sigmas).c_noise.float()
    model = DenoisingObjective(net=lambda data_shape: PerLevelLinear(data_shape=data_shape, labels=labels),
                               data_shape=(3,), preconditioning=precond, sigmas=sigmas, weighting="edm")
    fit_gaussian(model, mean, std, steps=600, lr=0.05, batch=4096)
    probe = torch.randn(2, 3) * 2
    with torch.no_grad():
        for sigma in sigmas.tolist():
            sigma_b = torch.full((2,), sigma)
            denoised = model.denoise(probe, sigma_b)
            slope = std**2 / (std**2 + sigma**2)
            expected = mean + slope * (probe - mean)
            torch.testing.assert_close(denoised, expected, atol=0.02, rtol=0)


class LabelConditionedLinear(nn.Module):
    """``F(y, c_noise) = a(c_noise)·y + b(c_noise)`` with small MLPs a, b: continuous in σ."""

    def __init__(self, *, data_shape):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(1, 32), nn.SiLU(), nn.Linear(32, 1))
        self.b = nn.Sequential(nn.Linear(1, 32), nn.SiLU(), nn.Linear(32, data_shape[0]))

    def forward(self, y, label):
        label = label[:, None]
        return self.a(label) * y + self.b(label)


def test_edm_objective_with_log_normal_sigma_learns_the_gaussian_optimum_across_sigma():
    """EDM's full recipe (preconditioning, ln σ ~ N(−1.2, 1.2²), λ = 1/c_out²) on N(μ, s²I) data with s = σ_d:
    across the bulk of the training σ the trained denoiser is within 0.1 posterior standard deviations of the
    exact posterior mean μ + s²/(s² + σ²)·(x̃ − μ) (measured 0.02–0.06; with s = σ_d this is also the error on
    F's unit-variance target)."""
    torch.manual_seed(0)
    mean, std = torch.tensor([0.6, -0.4]), 0.5
    model = DenoisingObjective(net=LabelConditionedLinear, data_shape=(2,),
                               preconditioning=EDMPreconditioning(sigma_data=0.5),
                               sigmas=geometric_sigmas(80.0, 0.002, 10), training_sigma=LogNormalSigma(),
                               weighting="edm")
    fit_gaussian(model, mean, std, steps=1500, lr=1e-2, batch=1024)
    with torch.no_grad():
        for sigma in (0.05, 0.15, 0.3, 1.0, 3.0):
            x = mean + math.sqrt(std**2 + sigma**2) * torch.randn(4000, 2)  # x̃ ~ p_σ
            denoised = model.denoise(x, torch.full((4000,), sigma))
            exact = mean + std**2 / (std**2 + sigma**2) * (x - mean)
            posterior_std = std * sigma / math.sqrt(std**2 + sigma**2)
            error = (denoised - exact).pow(2).mean().sqrt().item() / posterior_std
            assert error < 0.1, f"σ={sigma}: denoiser error {error:.3f} posterior standard deviations"


def test_training_sigma_distributions():
    levels = geometric_sigmas(2.0, 0.1, 4)
    drawn = UniformLevels().sample(20_000, levels, generator=torch.Generator().manual_seed(0))
    counts = torch.stack([(drawn == level).sum() for level in levels]).double() / len(drawn)
    torch.testing.assert_close(counts, torch.full((4,), 0.25, dtype=torch.float64), atol=0.015, rtol=0)
    log_sigma = LogNormalSigma(p_mean=-1.2, p_std=1.2).sample(200_000, levels,
                                                              generator=torch.Generator().manual_seed(0)).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)
    with pytest.raises(ValueError, match="p_std"):
        LogNormalSigma(p_std=0.0)
    with pytest.raises(ValueError, match="weighting"):
        DenoisingObjective(net=lambda data_shape: _Zero(), data_shape=(2,), preconditioning=EDMPreconditioning(),
                           sigmas=[1.0], weighting="snr")
    with pytest.raises(TypeError, match="Preconditioning"):
        DenoisingObjective(net=lambda data_shape: _Zero(), data_shape=(2,), preconditioning="edm", sigmas=[1.0])


# -- the presets before and after: same weights, same losses, same scores -------------------------------
LEGACY_TO_TODAY = {  # fixture case: (model config today, overrides today)
    "ncsn_unet": ("ncsn_unet", ["model.net.channels=4"]),
    "ncsn_mlp": ("ncsn_mlp", ["model.net.hidden=16", "model.net.depth=2"]),
    "ncsn_mlp_raw": ("ncsn_mlp", ["model.net.hidden=16", "model.net.depth=2",
                                  "model.preconditioning.divide_by_sigma=false"]),
    "dae": ("dae", ["model.net.channels=4"]),
    "dae_mlp": ("dae_mlp", ["model.net.hidden=16", "model.net.depth=2"]),
    "dae_mlp_unscaled": ("dae_mlp", ["model.net.hidden=16", "model.net.depth=2",
                                     "model.preconditioning.scale_residual=false", "model.weighting=none"]),
    "dae_mlp_direct": ("dae_mlp", ["model.net.hidden=16", "model.net.depth=2", "model.preconditioning.residual=false"]),
    "dae_single": ("dae_single", ["model.net.hidden=16", "model.net.depth=2"]),
}


@pytest.fixture(scope="module")
def legacy():
    return torch.load(LEGACY, weights_only=True)


def _check_same_as_recorded(model, case):
    model.load_state_dict(case["state_dict"])  # the state-dict keys did not change
    with torch.no_grad():
        score = model.score(case["x"], case["sigma"])
        torch.manual_seed(2)  # the seed the losses were recorded with: σ draws, then noise, as before
        losses = model.losses("model", case["x"])
    scale = case["score"].abs().max()
    torch.testing.assert_close(score, case["score"], rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(losses, case["losses"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", sorted(LEGACY_TO_TODAY))
def test_checkpoint_configs_written_before_the_change_load_and_give_the_same_losses_and_scores(legacy, name):
    """An old checkpoint's model config (DenoisingScoreMatching / DenoisingAutoencoder with ``divide_by_sigma`` in
    the net) is instantiated as ``load_run`` does and reproduces the recorded losses and scores."""
    case = legacy[name]
    model = instantiate(OmegaConf.create(case["config"]), data_shape=case["data_shape"])
    _check_same_as_recorded(model, case)


@pytest.mark.parametrize("name", sorted(LEGACY_TO_TODAY))
def test_todays_model_configs_reproduce_the_recorded_losses_and_scores(compose_train, legacy, name):
    """Today's configs (one DenoisingObjective with an explicit preconditioning) are the same models."""
    config, overrides = LEGACY_TO_TODAY[name]
    cfg = compose_train(f"model={config}", *overrides)
    model = instantiate(cfg.model, data_shape=legacy[name]["data_shape"])
    assert type(model) is DenoisingObjective
    _check_same_as_recorded(model, legacy[name])
