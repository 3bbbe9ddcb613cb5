"""The score protocol as every driver consumes it: any object with ``score``, ``sigmas`` and ``data_shape`` (no
``nn.Module``) samples on the CPU; conditioning reaches every score call untouched; steps are ``Step`` records."""

from __future__ import annotations

import pytest
import torch

from dae_gen.analytic import AnalyticGaussian
from dae_gen.density import GaussianMixture, MixtureScoreModel
from dae_gen.noise import geometric_sigmas
from dae_gen.samplers import draw_samples
from dae_gen.samplers.edm import sample_edm_stochastic, sample_heun
from dae_gen.samplers.fast import sample_dpm_solver_2m, sample_euler_ancestral
from dae_gen.samplers.langevin import sample_annealed_langevin
from dae_gen.samplers.ode import sample_probability_flow_ode
from dae_gen.samplers.pc import sample_predictor_corrector
from dae_gen.samplers.temperature import sample_temperature_langevin
from dae_gen.score import Step, protocol_device

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)
SIGMA_MIN = 0.05

#: every driver, with settings short enough for a test and accurate on a Gaussian
DRIVERS = {
    "annealed_langevin": (sample_annealed_langevin, dict(n_steps_each=50, step_lr=0.01, init="gaussian")),
    "temperature_langevin": (sample_temperature_langevin, dict(n_steps_hot=0, temp_hot=1.0, n_steps_anneal=400,
                                                               n_steps_cool=0, step_size=0.1, init_mean=0.0)),
    "heun": (sample_heun, dict(n_steps=30)),
    "edm_stochastic": (sample_edm_stochastic, dict(n_steps=40)),
    "pc": (sample_predictor_corrector, dict(n_steps=100, corrector_norm="batch")),
    "ode": (sample_probability_flow_ode, dict(rtol=1e-4, atol=1e-4)),
    "dpm_solver_2m": (sample_dpm_solver_2m, dict(n_steps=20)),
    "euler_ancestral": (sample_euler_ancestral, dict(n_steps=300)),  # first order: its variance error is ~1/N
}


def _tweedie_cov(cov: torch.Tensor, sigma: float) -> torch.Tensor:
    """Covariance of ``E[x₀ | x_σ]`` for N(m, Σ) data: Σ(Σ + σ²I)⁻¹Σ (the samplers' final denoising step)."""
    return cov @ torch.linalg.inv(cov + sigma**2 * torch.eye(len(cov), dtype=cov.dtype)) @ cov


def test_protocol_device_rule():
    gaussian = AnalyticGaussian(MEAN, COV)
    assert protocol_device(gaussian) == torch.device("cpu")  # neither a device nor parameters
    assert protocol_device(torch.nn.Linear(2, 2)) == torch.device("cpu")

    class OnMeta:
        device = torch.device("meta")

    assert protocol_device(OnMeta()) == torch.device("meta")  # an explicit device attribute wins


@pytest.mark.parametrize("name", list(DRIVERS))
def test_an_analytic_gaussian_samples_through_every_driver(name):
    model = AnalyticGaussian(MEAN, COV, sigmas=geometric_sigmas(80.0, SIGMA_MIN, 20))
    assert not isinstance(model, torch.nn.Module)
    driver, settings = DRIVERS[name]
    steps: list[Step] = []
    x = driver(model, 3000, generator=torch.Generator().manual_seed(0), callback=steps.append, **settings).double()
    assert x.shape == (3000, 2) and x.device.type == "cpu" and torch.isfinite(x).all()
    assert all(isinstance(s, Step) for s in steps) and steps[-1].i == len(steps)
    assert all(s.n == len(steps) for s in steps) or (name == "ode" and all(s.n is None for s in steps))
    # every chain ends near p_σ_min (temperature Langevin: at T = 1 on the score read at σ₀ = σ_min) and denoises
    torch.testing.assert_close(x.mean(0), MEAN, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), _tweedie_cov(COV, SIGMA_MIN), atol=0.04, rtol=0)


@pytest.mark.parametrize("name", list(DRIVERS))
def test_conditioning_reaches_every_score_call(name):
    """A two-component mixture's exact class-conditional score: label k gives component k's law."""
    mixture = GaussianMixture(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]), torch.tensor([0.3, 0.3]),
                              torch.tensor([0.5, 0.5]))
    model = MixtureScoreModel(mixture, sigmas=geometric_sigmas(80.0, SIGMA_MIN, 20), class_conditional=True)
    labels = torch.arange(400) % 2
    driver, settings = DRIVERS[name]
    seen = []

    class Recording:  # a plain object with the protocol, recording what each score call was given
        data_shape, sigmas, reference_sigma = model.data_shape, model.sigmas, model.reference_sigma

        def score(self, x, sigma, **cond):
            seen.append(cond["class_labels"] is labels)
            return model.score(x, sigma, **cond)

    x = driver(Recording(), 400, generator=torch.Generator().manual_seed(1), cond={"class_labels": labels},
               **settings).double()
    assert seen and all(seen)  # every call got the labels as they were passed
    for k, centre in ((0, -3.0), (1, 3.0)):
        assert abs(float(x[labels == k, 0].mean()) - centre) < 0.1


def test_draw_samples_hands_each_batch_its_rows_of_the_conditioning():
    mixture = GaussianMixture(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]), torch.tensor([0.3, 0.3]),
                              torch.tensor([0.5, 0.5]))
    model = MixtureScoreModel(mixture, sigmas=geometric_sigmas(80.0, SIGMA_MIN, 20), class_conditional=True)
    labels = (torch.arange(10) >= 3).long()  # 3 of class 0, then 7 of class 1: batches of 4 straddle them
    batches = []
    x = draw_samples(model, lambda m, n, **kw: sample_heun(m, n, n_steps=20, **kw), 10, batch_size=4,
                     cond={"class_labels": labels}, callback=lambda step: batches.append(step.batch))
    assert sorted(set(batches)) == [0, 1, 2]
    assert (x[:3, 0] < 0).all() and (x[3:, 0] > 0).all()
    with pytest.raises(ValueError, match="one row per sample"):
        draw_samples(model, sample_heun, 10, batch_size=4, cond={"class_labels": labels[:5]})


def test_unconditional_objectives_refuse_conditioning():
    from dae_gen.objectives.base import Objective

    with pytest.raises(TypeError, match="unconditional and takes no conditioning, got \\['class_labels'\\]"):
        Objective(data_shape=(2,)).refuse_conditioning({"class_labels": torch.zeros(2)})
    assert Objective.conditioning == ()


def test_labelled_batches_are_the_unlabelled_batches_with_their_labels():
    from dae_gen.data.base import ImageTensorData, PointData
    from dae_gen.errors import DataError

    images = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    data = ImageTensorData(images, labels=torch.arange(20) + 100, scale="unit")
    again = ImageTensorData(images, labels=torch.arange(20) + 100, scale="unit")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):  # across an epoch boundary
        x, labels = data.batch(8, generator=g1, labels=True)
        torch.testing.assert_close(x, again.batch(8, generator=g2))  # the same examples, the same draws
        index = (x[:, 0, 0, 0] * 255).round().long()
        assert torch.equal(labels, index + 100)
    with pytest.raises(DataError, match="has no labels"):
        ImageTensorData(images, scale="unit").batch(4, labels=True)
    with pytest.raises(DataError, match="unlabelled"):
        PointData(lambda n, generator=None: torch.zeros(n, 2)).batch(4, labels=True)
