"""Guidance against closed forms: classifier-free guidance of exact Gaussian scores is the score of the tilted
Gaussian ``p(x | c)^{1+w} p(x)^{−w}``, class-conditional sampling of a mixture recovers its component only,
autoguidance with the model itself as guide changes nothing, and guided scores are counted as two evaluations."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from dae_gen.analytic import AnalyticGaussian
from dae_gen.data.toy import mixture as toy_mixture
from dae_gen.density import MixtureScoreModel
from dae_gen.guidance import Guided
from dae_gen.noise import geometric_sigmas, karras_sigmas
from dae_gen.samplers.edm import edm_sampler, sample_edm_stochastic, sample_heun
from dae_gen.samplers.langevin import annealed_langevin, sample_annealed_langevin
from dae_gen.samplers.nfe import CountingModel
from dae_gen.samplers.ode import sample_probability_flow_ode
from dae_gen.samplers.pc import sample_predictor_corrector


class GaussianClasses(torch.nn.Module):
    """Exact σ-smoothed scores ``−(S_k + σ²I)⁻¹(x − m_k)`` of Gaussian classes k < K; label K (or none): N(m_K, S_K)."""

    def __init__(self, means: torch.Tensor, covs: torch.Tensor, *, sigmas: torch.Tensor):
        super().__init__()
        self.means, self.covs = means.double(), covs.double()  # (K + 1, D), (K + 1, D, D)
        self.classes = [AnalyticGaussian(m, c, sigmas=sigmas) for m, c in zip(self.means, self.covs)]
        self.n_classes = means.shape[0] - 1
        self.data_shape = (means.shape[1],)
        self.sigmas = sigmas
        self.reference_sigma = float(sigmas[-1])

    def precision(self, label: int, sigma: float) -> torch.Tensor:
        return torch.linalg.inv(self.covs[label] + sigma**2 * torch.eye(self.data_shape[0], dtype=torch.float64))

    def score(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = torch.full((x.shape[0],), self.n_classes) if class_labels is None else class_labels
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(x)
        for label in labels.unique().tolist():  # each example scored by its own class's exact Gaussian
            rows = labels == label
            out[rows] = self.classes[label].score(x[rows], sigma[rows])
        return out


def two_classes_and_a_marginal(sigmas: torch.Tensor) -> GaussianClasses:
    means = torch.tensor([[1.0, -0.5], [-1.0, 0.8], [0.0, 0.0]])
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.6]], [[2.0, 0.5], [0.5, 1.5]]])
    return GaussianClasses(means, covs, sigmas=sigmas)


def tilted_gaussian(model: GaussianClasses, label: int, w: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, precision) of N(m_c, S_c + σ²)^{1+w} N(m_u, S_u + σ²)^{−w} ∝ a Gaussian: precision
    P = (1 + w)A_c − w·A_u, mean P⁻¹((1 + w)A_c m_c − w·A_u m_u), A = (S + σ²I)⁻¹."""
    a_c, a_u = model.precision(label, sigma), model.precision(model.n_classes, sigma)
    precision = (1 + w) * a_c - w * a_u
    mean = torch.linalg.solve(precision, (1 + w) * a_c @ model.means[label] - w * a_u @ model.means[-1])
    return mean, precision


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_cfg_of_exact_gaussian_scores_is_the_score_of_the_tilted_gaussian_at_every_sigma(w):
    model = two_classes_and_a_marginal(torch.tensor([1.0, 0.1]))
    guided = Guided(model, guidance=w)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    for sigma in (0.01, 0.3, 1.0, 5.0):
        sig = torch.full((6,), sigma, dtype=torch.float64)
        got = guided.score(x, sig, class_labels=labels)
        for label in (0, 1):
            mean, precision = tilted_gaussian(model, label, w, sigma)
            rows = labels == label
            torch.testing.assert_close(got[rows], -(x[rows] - mean) @ precision.T, rtol=1e-12, atol=1e-12)
        # the same combination of denoisers D = x + σ²s: D_c + w·(D_c − D_u)
        d_c = x + sigma**2 * model.score(x, sig, class_labels=labels)
        d_u = x + sigma**2 * model.score(x, sig)
        torch.testing.assert_close(x + sigma**2 * got, d_c + w * (d_c - d_u), rtol=1e-12, atol=1e-12)


def test_cfg_with_annealed_langevin_samples_the_tilted_gaussian():
    """p(x | c)^{1+w} p(x)^{−w} at the data level (σ → 0): N(μ₀, P₀⁻¹), P₀ = (1 + w)S_c⁻¹ − w·S_u⁻¹."""
    w, label, n = 1.5, 0, 4000
    sigmas = geometric_sigmas(2.0, 0.03, 8)
    model = two_classes_and_a_marginal(sigmas)
    gen = torch.Generator().manual_seed(1)
    x0 = 2.0 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    labels = torch.full((n,), label)
    samples = annealed_langevin(partial(Guided(model, guidance=w).score, class_labels=labels), x0, sigmas,
                                n_steps_each=150, step_lr=2e-3, denoise=False, generator=gen)
    mean, precision = tilted_gaussian(model, label, w, 0.0)
    cov = torch.linalg.inv(precision)
    # the guided law is much narrower than the class: a real test of the tilt, not of the class alone
    assert cov.diagonal().max() < 0.6 * model.covs[label].diagonal().min()
    # standard errors with 4000 draws: mean ≈ 0.008, covariance entries ≈ 0.005; measured errors ≤ 0.008, ≤ 0.007
    torch.testing.assert_close(samples.mean(0), mean, atol=0.025, rtol=0)
    torch.testing.assert_close(samples.T.cov(), cov, atol=0.015, rtol=0)


def test_conditional_mixture_sampling_recovers_only_the_labelled_component():
    """Class = component of the 8-mode toy mixture: every sample lands in its own mode, at its mean and spread;
    with guidance too; the null label visits all modes."""
    gm = toy_mixture(n_modes=8, radius=2.0, std=0.1).mixture
    model = MixtureScoreModel(gm, sigmas=geometric_sigmas(20.0, 0.002, 10), class_conditional=True)
    n, gen = 4000, torch.Generator().manual_seed(2)
    labels = torch.arange(n) % 8
    sigmas = karras_sigmas(40, 0.002, 20.0)
    for w in (0.0, 1.0):
        x0 = 20.0 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        x = edm_sampler(partial(Guided(model, guidance=w).score, class_labels=labels), x0, sigmas)
        nearest = (x[:, None] - gm.means[None]).norm(dim=-1).argmin(1)
        assert (nearest == labels).all()
        if w:  # guided ODE chains overshoot away from the other modes (~0.09 here), still inside their own
            continue
        for k in range(8):
            mine = x[labels == k]
            assert (mine.mean(0) - gm.means[k]).abs().max() < 0.02
            assert abs(mine.std(0).mean().item() - 0.1) < 0.01  # the component's own std
    x0 = 20.0 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x = edm_sampler(partial(model.score, class_labels=torch.full((n,), 8)), x0, sigmas)
    counts = torch.bincount((x[:, None] - gm.means[None]).norm(dim=-1).argmin(1), minlength=8)
    assert (counts - n / 8).abs().max() < 4 * (n / 8 * 7 / 8) ** 0.5  # multinomial, 4 standard deviations


DRIVERS = {
    "heun": partial(sample_heun, n_steps=10),
    "edm_stochastic": partial(sample_edm_stochastic, n_steps=10),
    "pc": partial(sample_predictor_corrector, n_steps=10),
    "ode": partial(sample_probability_flow_ode, rtol=1e-4, atol=1e-4),
    "annealed_langevin": partial(sample_annealed_langevin, n_steps_each=5, step_lr=1e-3, init="gaussian"),
}


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_every_sampler_runs_on_a_guided_model_and_autoguidance_by_the_model_itself_changes_nothing(name):
    """D_main + w·(D_main − D_main) = D_main: the same samples as the main model's, from the same seed."""
    model = two_classes_and_a_marginal(geometric_sigmas(5.0, 0.01, 6))
    guided = Guided(model, guidance=3.0, guide=model)
    assert guided.sigmas is model.sigmas and guided.data_shape == model.data_shape
    assert guided.reference_sigma == model.reference_sigma
    draw = DRIVERS[name]
    plain = draw(model, 64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(draw(guided, 64, generator=torch.Generator().manual_seed(3)), plain,
                               rtol=1e-9, atol=1e-9)


def test_autoguidance_extrapolates_from_the_guide_to_the_main_model():
    model = two_classes_and_a_marginal(torch.tensor([1.0, 0.1]))
    worse = GaussianClasses(model.means + 0.3, model.covs * 1.5, sigmas=model.sigmas)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    sigma, labels = torch.full((5,), 0.4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 2])
    main, bad = model.score(x, sigma, class_labels=labels), worse.score(x, sigma, class_labels=labels)
    torch.testing.assert_close(Guided(model, guidance=0.7, guide=worse).score(x, sigma, class_labels=labels),
                               main + 0.7 * (main - bad), rtol=1e-12, atol=1e-12)


def test_guided_scores_count_two_network_evaluations_per_example():
    model = MixtureScoreModel(toy_mixture().mixture, sigmas=geometric_sigmas(20.0, 0.01, 10), class_conditional=True)
    n_steps, n = 7, 12
    for w, per_score in ((2.0, 2), (0.0, 1)):
        outside = CountingModel(Guided(model, guidance=w))
        sample_heun(outside, n, n_steps=n_steps, generator=torch.Generator().manual_seed(5))
        assert outside.nfe_per_image(n) == per_score * (2 * n_steps - 1)
        inside = CountingModel(model)  # counting the network itself gives the same number
        sample_heun(Guided(inside, guidance=w), n, n_steps=n_steps, generator=torch.Generator().manual_seed(5))
        assert inside.nfe_per_image(n) == per_score * (2 * n_steps - 1)


def test_guidance_refuses_what_it_cannot_do():
    unconditional = MixtureScoreModel(toy_mixture().mixture, sigmas=1.0)
    with pytest.raises(ValueError, match="classifier-free guidance needs a class-conditional model"):
        Guided(unconditional, guidance=1.0)
    with pytest.raises(ValueError, match="guidance must be a number >= 0"):
        Guided(MixtureScoreModel(toy_mixture().mixture, sigmas=1.0, class_conditional=True), guidance=-1.0)
    other = GaussianClasses(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3), sigmas=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="same data"):
        Guided(unconditional, guidance=1.0, guide=other)
    with pytest.raises(ValueError, match="must have the same classes: n_classes=0 expected, got 8"):
        Guided(unconditional, guidance=1.0, guide=MixtureScoreModel(toy_mixture().mixture, sigmas=1.0,
                                                                     class_conditional=True))
