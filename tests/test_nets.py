"""Image networks: shapes, σ-conditioning, exact identities, parameter counts and double-backward gradients."""

from __future__ import annotations

import pytest
import torch

from dae_gen.nets.conv import ConvGenerator, ScalarConvNet, n_halvings
from dae_gen.nets.energy import ResNetEnergy
from dae_gen.nets.unet import ScoreUNet


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# -- shared helpers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(32, 32, 3), (28, 28, 2), (8, 8, 1), (64, 64, 4), (7, 7, 0), (4, 4, 0), (32, 28, 2), (6, 6, 0)],
)
def test_n_halvings(height, width, expected):
    assert n_halvings(height, width) == expected


# -- ScoreUNet -------------------------------------------------------------------------------------
UNET_CASES = [((1, 8, 8), (1, 2)), ((1, 28, 28), (1, 2, 2)), ((3, 32, 32), (1, 2, 2)), ((3, 64, 64), (1, 2, 2, 2))]


@pytest.mark.parametrize(("data_shape", "mults"), UNET_CASES)
def test_unet_shape_and_per_example_conditioning(data_shape, mults):
    torch.manual_seed(0)
    net = ScoreUNet(data_shape=data_shape, channels=8, channel_mults=mults).double()
    x = torch.randn(3, *data_shape, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 5.0], dtype=torch.float64)
    out = net(x, sigma.log())
    assert out.shape == x.shape
    # GroupNorm is per-example, so example b depends only on (x[b], σ[b]): batching changes nothing.
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], net(x[b : b + 1], sigma[b : b + 1].log()))


def test_unet_noise_label_conditioning_changes_output():
    torch.manual_seed(0)
    net = ScoreUNet(data_shape=(1, 8, 8), channels=8)
    x = torch.randn(1, 1, 8, 8).expand(4, -1, -1, -1)
    out = net(x, torch.tensor([0.01, 0.1, 1.0, 10.0]).log())
    # Same input, different noise labels: the outputs must differ pairwise by a non-negligible amount.
    for i in range(4):
        for j in range(i + 1, 4):
            assert (out[i] - out[j]).abs().max() > 1e-3 * out.abs().max()


def test_unet_is_a_raw_network_without_sigma_scaling():
    """The label enters only through the embedding: a zero embedding MLP makes the output independent of it."""
    torch.manual_seed(0)
    net = ScoreUNet(data_shape=(1, 8, 8), channels=8)
    for p in net.sigma_embed.mlp[-1].parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(1, 1, 8, 8).expand(3, -1, -1, -1)
    out = net(x, torch.tensor([-5.0, 0.0, 5.0]))
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[0], out[2])


def test_unet_invalid_sizes_raise():
    with pytest.raises(ValueError, match="divisible by 8"):
        ScoreUNet(data_shape=(1, 28, 28), channel_mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ScoreUNet(data_shape=(64,))
    net = ScoreUNet(data_shape=(1, 8, 8), channels=8)
    with pytest.raises(ValueError, match="data_shape"):
        net(torch.randn(2, 1, 16, 16), torch.ones(2))


# -- ResNetEnergy ----------------------------------------------------------------------------------
def _energy_param_count(in_ch: int, channels: int, per_stage: list[int], final_hw: int) -> int:
    """Closed-form count: input conv, blocks (bias-free conv1, conv2, 1×1 shortcut), three linear heads."""
    total = in_ch * channels * 9 + channels
    width = channels
    for stage, count in enumerate(per_stage):
        for i in range(count):
            out = channels * 2 ** (stage + 1) if i == 0 else width
            total += width * width * 9 + (width * out * 9 + out) + (width * out + out)
            width = out
    return total + 3 * (width * final_hw + 1)


@pytest.mark.parametrize(
    ("data_shape", "n_blocks", "channels", "per_stage", "expected"),
    [
        ((1, 32, 32), 12, 64, [2, 2, 2], 9_060_483),  # Fashion-MNIST (padded to 32×32), "ResNet-12"
        ((3, 32, 32), 18, 128, [3, 3, 3], 62_339_075),  # CIFAR-10, "ResNet-18"
    ],
)
def test_energy_published_parameter_counts(data_shape, n_blocks, channels, per_stage, expected):
    assert _energy_param_count(data_shape[0], channels, per_stage, 4 * 4) == expected
    with torch.device("meta"):
        net = ResNetEnergy(data_shape=data_shape, n_blocks=n_blocks, channels=channels)
    assert _n_params(net) == expected
    assert [b.downsample for b in net.blocks] == [i == 0 for n in per_stage for i in range(n)]
    assert net.l1.in_features == 8 * channels * 4 * 4  # 32→16→8→4, width 2·4·8 = 8× channels


@pytest.mark.parametrize(
    ("data_shape", "n_blocks", "per_stage", "final_hw"),
    [((1, 8, 8), 6, [3], 16), ((1, 28, 28), 6, [1, 2], 49), ((3, 32, 32), 8, [1, 1, 2], 16), ((1, 7, 7), 2, [1], 49)],
)
def test_energy_small_sizes(data_shape, n_blocks, per_stage, final_hw):
    torch.manual_seed(0)
    net = ResNetEnergy(data_shape=data_shape, n_blocks=n_blocks, channels=4)
    assert _n_params(net) == _energy_param_count(data_shape[0], 4, per_stage, final_hw)
    x = torch.randn(3, *data_shape)
    energy = net(x)
    assert energy.shape == (3,)
    torch.testing.assert_close(energy[1:2], net(x[1:2]), rtol=1e-5, atol=1e-6)  # no batch coupling


def test_energy_invalid_sizes_raise():
    with pytest.raises(ValueError, match="even n_blocks"):
        ResNetEnergy(data_shape=(1, 32, 32), n_blocks=3, channels=4)
    with pytest.raises(ValueError, match="3 stages"):
        ResNetEnergy(data_shape=(1, 32, 32), n_blocks=4, channels=4)  # 2 residual blocks < 3 stages


def test_energy_double_backward_reaches_parameters():
    torch.manual_seed(0)
    net = ResNetEnergy(data_shape=(1, 8, 8), n_blocks=4, channels=4)
    x = torch.randn(5, 1, 8, 8, requires_grad=True)
    (grad_x,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
    grad_x.square().sum().backward()
    for name, param in net.named_parameters():
        if name == "lq.bias":
            # ∇_x E does not depend on the constant of the quadratic head: exactly no gradient.
            assert param.grad is None
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_energy_gradcheck_float64():
    torch.manual_seed(0)
    net = ResNetEnergy(data_shape=(1, 8, 8), n_blocks=2, channels=2).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,))
    assert torch.autograd.gradgradcheck(net, (x,))


# -- ScalarConvNet and ConvGenerator ---------------------------------------------------------------
@pytest.mark.parametrize("data_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 7, 7)])
def test_scalar_conv_shape(data_shape):
    net = ScalarConvNet(data_shape=data_shape, channels=4, n_layers=3)
    assert net(torch.randn(2, *data_shape)).shape == (2,)


def test_scalar_conv_gradcheck_float64():
    torch.manual_seed(0)
    for act in ("softplus", "silu", "elu"):
        net = ScalarConvNet(data_shape=(1, 8, 8), channels=2, n_layers=2, activation=act).double()
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(net, (x,))
        assert torch.autograd.gradgradcheck(net, (x,))


@pytest.mark.parametrize("data_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_generator_shapes_and_output_maps(data_shape):
    z = torch.randn(3, 16)
    outs = {}
    for output in ("linear", "sigmoid", "tanh"):
        torch.manual_seed(0)
        gen = ConvGenerator(data_shape=data_shape, latent_dim=16, channels=8, output=output)
        assert gen.latent_dim == 16
        outs[output] = gen(z)
        assert outs[output].shape == (3, *data_shape)
    torch.testing.assert_close(outs["sigmoid"], torch.sigmoid(outs["linear"]))
    torch.testing.assert_close(outs["tanh"], torch.tanh(outs["linear"]))


def test_conv_invalid_arguments_raise():
    with pytest.raises(ValueError, match="output must be one of"):
        ConvGenerator(data_shape=(1, 8, 8), output="relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        ScalarConvNet(data_shape=(1, 8, 8), activation="relu")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ScalarConvNet(data_shape=(2,))
