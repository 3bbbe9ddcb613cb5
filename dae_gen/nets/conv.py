"""Convolutional scalar fields (DDEs on images) and a DCGAN-style generator (Bigdeli et al., DDE + generator)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {"softplus": nn.Softplus, "silu": nn.SiLU, "elu": nn.ELU}
_OUTPUTS = ("linear", "sigmoid", "tanh")


def image_shape(data_shape: Sequence[int], owner: str) -> tuple[int, int, int]:
    """Validate and return ``(C, H, W)``; ``owner`` names the network in the error."""
    shape = tuple(int(d) for d in data_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{owner} expects data_shape (C, H, W) of positive sizes, got {tuple(data_shape)}; "
                         f"use the MLP networks in dae_gen.nets.mlp for flat data")
    return shape


def n_halvings(height: int, width: int, min_size: int = 4) -> int:
    """How many times ``H×W`` can be halved exactly while both sides stay ≥ ``min_size``: 32→16→8→4 gives 3,
    28→14→7 gives 2, 8→4 gives 1, 7 gives 0."""
    count = 0
    while height % 2 == 0 and width % 2 == 0 and height // 2 >= min_size and width // 2 >= min_size:
        height, width, count = height // 2, width // 2, count + 1
    return count


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics and normalisation are computed in its weights' precision (fp32) also when bf16
    autocast hands it a bf16 input; the result comes back in the input's dtype, so the activation and the next
    conv stay in bf16.

    CUDA's autocast runs group_norm in fp32 (it is on its fp32 list); CPU's leaves it in the input's dtype, and
    torch's bf16 channels-last GroupNorm kernel on CPU is much slower than its fp32 one, enough to make a bf16
    U-Net slower than fp32 (measured in ``experiments/bench/README.md``).
    Same parameters and state-dict keys as ``nn.GroupNorm``; without autocast nothing changes.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups (at most 32) that leaves at least 4 channels per group (:class:`GroupNorm32`)."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return GroupNorm32(groups, channels)
    return GroupNorm32(1, channels)


def smooth_activation(name: str) -> nn.Module:
    """An activation whose derivative is continuous, so input gradients can be differentiated again: ``softplus``,
    ``silu`` (smooth) or ``elu`` (C¹ at α = 1)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


class ScalarConvNet(nn.Module):
    """Scalar field ``f(x)``: ``(B, C, H, W)`` → ``(B,)`` for denoising density estimators on images.

    A conv stack with a smooth activation (so ``∇_x f`` can be differentiated again, as the DDE loss
    ``½||x̃ + σ²∇f(x̃) − x||²`` needs). Each of the ``n_layers`` 3×3 convs halves H and W with stride 2 while
    the sides stay ≥ 4 and even (doubling the width), otherwise keeps the size; a linear layer reads out f.
    """

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        channels: int = 32,          # width of the first conv; doubles at every stride-2 conv
        n_layers: int = 3,           # 3×3 convs after the input conv
        activation: str = "softplus",  # smooth activation: softplus | silu | elu
    ):
        super().__init__()
        in_ch, height, width = image_shape(data_shape, "ScalarConvNet")
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_ch, channels, 3, padding=1), smooth_activation(activation)]
        n_down = n_halvings(height, width)
        width_now = channels
        for i in range(n_layers):
            if i < n_down:
                layers += [nn.Conv2d(width_now, 2 * width_now, 3, stride=2, padding=1), smooth_activation(activation)]
                width_now, height, width = 2 * width_now, height // 2, width // 2
            else:
                layers += [nn.Conv2d(width_now, width_now, 3, padding=1), smooth_activation(activation)]
        self.features = nn.Sequential(*layers)
        self.readout = nn.Linear(width_now * height * width, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)  # (B, width, H', W')
        return self.readout(h.flatten(1)).squeeze(1)  # (B,)


class ConvGenerator(nn.Module):
    """DCGAN-style generator ``G(z)``: ``(B, latent_dim)`` → ``(B, C, H, W)`` (Radford et al. 2016).

    A linear layer maps ``z`` to an ``(h0, w0)`` feature map, where ``(h0, w0)`` is ``(H, W)`` halved as often as
    it stays even and ≥ 4 (8→4, 28→7, 32→4, 64→4); stride-2 transposed convs with GroupNorm + ReLU double it
    back, halving the width each time (width at most ``8 * channels``); a 3×3 conv gives the C channels,
    followed by the ``output`` map (``linear``: unbounded, ``sigmoid``: (0, 1), ``tanh``: (−1, 1)).
    """

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        latent_dim: int = 64,      # dimension of z
        channels: int = 64,        # width at full resolution
        output: str = "linear",    # output range: linear | sigmoid | tanh
    ):
        super().__init__()
        in_ch, height, width = image_shape(data_shape, "ConvGenerator")
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        self.data_shape = (in_ch, height, width)
        self.latent_dim = latent_dim
        self.output = output
        n_up = n_halvings(height, width)
        widths = [channels * min(2 ** (n_up - i), 8) for i in range(n_up)] + [channels]  # per resolution
        self.start_shape = (widths[0], height >> n_up, width >> n_up)
        self.project = nn.Linear(latent_dim, widths[0] * self.start_shape[1] * self.start_shape[2])
        layers: list[nn.Module] = [group_norm(widths[0]), nn.ReLU()]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1), group_norm(w_out), nn.ReLU()]
        layers.append(nn.Conv2d(widths[-1], in_ch, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).reshape(z.shape[0], *self.start_shape)  # (B, width0, h0, w0)
        x = self.body(h)  # (B, C, H, W)
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        if self.output == "tanh":
            return torch.tanh(x)
        return x

