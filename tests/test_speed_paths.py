"""The CPU speed paths compute exactly what the plain paths compute: the ResNet energy's written-out input
gradient against autograd (values, and the parameter gradients of a loss containing it, i.e. the double
backward), channels_last against the default layout, and the samplers in inference mode."""

from functools import partial

import pytest
import torch

from dae_gen.nets.energy import ResNetEnergy
from dae_gen.objectives.mdsm import AnnealedDSMEnergy
from dae_gen.samplers.temperature import sample_temperature_langevin
from dae_gen.score import input_gradient


def autograd_input_gradient(net, x, create_graph):
    """The generic path of dae_gen.score.input_gradient (a lambda hides the network's own method)."""
    return input_gradient(lambda y: net(y), x, create_graph=create_graph)


@pytest.mark.parametrize("shape, n_blocks, channels_last", [((1, 32, 32), 12, True), ((3, 8, 8), 4, False),
                                                             ((1, 7, 7), 2, True)])
def test_written_out_input_gradient_is_autograds(shape, n_blocks, channels_last):
    torch.manual_seed(0)
    net = ResNetEnergy(data_shape=shape, n_blocks=n_blocks, channels=4, channels_last=channels_last).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    energy, grad = net.value_and_input_grad(x, create_graph=True)
    energy_ref, grad_ref = autograd_input_gradient(net, x, create_graph=True)
    assert torch.equal(energy, energy_ref)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-15)
    params = list(net.parameters())

    def loss_grads(g):  # a loss containing ∇E, like annealed DSM's: differentiated w.r.t. the weights
        loss = (g.pow(2) + g * x.sin()).sum()
        return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)

    for ours, ref in zip(loss_grads(grad), loss_grads(grad_ref)):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)
    with torch.inference_mode():  # the sampler's context: no graph at all
        _, grad_inference = net.value_and_input_grad(x, create_graph=False)
    torch.testing.assert_close(grad_inference, grad_ref, rtol=1e-12, atol=1e-15)
    assert grad_inference.is_contiguous() and not grad_inference.requires_grad


def test_channels_last_changes_layout_not_values():
    torch.manual_seed(0)
    cl = ResNetEnergy(data_shape=(3, 16, 16), n_blocks=4, channels=4, channels_last=True).double()
    torch.manual_seed(0)
    plain = ResNetEnergy(data_shape=(3, 16, 16), n_blocks=4, channels=4, channels_last=False).double()
    assert cl.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.conv_in.weight.is_contiguous()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(cl(x), plain(x), rtol=1e-12, atol=0)
    plain.load_state_dict(cl.state_dict())  # checkpoints move between layouts
    torch.testing.assert_close(plain(x), cl(x), rtol=1e-12, atol=0)


def test_annealed_dsm_loss_and_its_gradients_are_unchanged(monkeypatch):
    """The MDSM objective through input_gradient: written-out path against the generic autograd path."""
    torch.manual_seed(1)
    model = AnnealedDSMEnergy(net=partial(ResNetEnergy, n_blocks=6, channels=4), data_shape=(1, 32, 32),
                              sigma_low=0.1, sigma_high=3.0).double()
    x = torch.rand(6, 1, 32, 32, dtype=torch.float64)

    def loss_and_grads():
        torch.manual_seed(2)  # the same noise for both paths
        loss = model.losses("model", x).mean()
        return loss, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, materialize_grads=True)

    loss, grads = loss_and_grads()
    monkeypatch.delattr(ResNetEnergy, "value_and_input_grad")  # input_gradient falls back to autograd
    loss_ref, grads_ref = loss_and_grads()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
    for ours, ref in zip(grads, grads_ref):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)


def test_temperature_sampler_chain_is_unchanged():
    """A short temperature-annealed chain on the energy model, written-out gradient in inference mode, against the
    same chain (same noise) driven by autograd's gradient."""
    torch.manual_seed(3)
    model = AnnealedDSMEnergy(net=partial(ResNetEnergy, n_blocks=6, channels=4), data_shape=(1, 32, 32),
                              sigma_low=0.1, sigma_high=3.0)  # float32, as the sampler draws its start

    class Autograd:  # the same model, its score through autograd
        data_shape, reference_sigma = model.data_shape, model.reference_sigma
        parameters, buffers = model.parameters, model.buffers

        @staticmethod
        def score(x, sigma):
            return -(model.sigma0**2 / sigma.reshape(-1, 1, 1, 1) ** 2) * autograd_input_gradient(
                model.net, x, create_graph=False)[1]

    settings = dict(n_steps_hot=3, n_steps_anneal=4, n_steps_cool=3, step_size=0.05)
    ours = sample_temperature_langevin(model, 5, generator=torch.Generator().manual_seed(0), **settings)
    ref = sample_temperature_langevin(Autograd(), 5, generator=torch.Generator().manual_seed(0), **settings)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)  # float32 rounding only


def test_score_unet_channels_last_changes_layout_not_values():
    from dae_gen.nets.unet import ScoreUNet

    torch.manual_seed(0)
    cl = ScoreUNet(data_shape=(3, 16, 16), channels=8, channel_mults=(1, 2)).double()
    torch.manual_seed(0)
    plain = ScoreUNet(data_shape=(3, 16, 16), channels=8, channel_mults=(1, 2), channels_last=False).double()
    assert cl.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, sigma = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    out = cl(x, sigma)
    torch.testing.assert_close(out, plain(x, sigma), rtol=1e-12, atol=1e-14)
    assert out.is_contiguous()  # the default layout outside the network


def test_trainer_compile_on_the_cpu_backend_trains_the_same(tmp_path):
    """The GPU path `trainer.compile=true`, exercised with inductor's CPU backend: the same losses as eager."""
    from dae_gen.data.toy import mixture
    from dae_gen.nets.mlp import ScoreMLP
    from dae_gen.noise import geometric_sigmas
    from dae_gen.objectives.dsm import DenoisingScoreMatching
    from dae_gen.trainer import Trainer

    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = DenoisingScoreMatching(net=partial(ScoreMLP, hidden=32, depth=2), data_shape=(2,),
                                       sigmas=geometric_sigmas(2.0, 0.1, 4))
        trainer = Trainer(objective=model, data=mixture(), run_dir=tmp_path / str(compiled), steps=3, batch_size=64,
                          optimizer=partial(torch.optim.Adam, lr=1e-3), compile=compiled)
        losses[compiled] = [trainer.train_step()["loss/model"].item() for _ in range(3)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
