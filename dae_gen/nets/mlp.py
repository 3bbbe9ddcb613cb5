"""Multilayer perceptrons for low-dimensional (2-D toy) data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dae_gen.nets.labels import LabelEmbedding, check_unconditional


def _mlp(in_dim: int, hidden: int, depth: int, out_dim: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), act()]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


class ScoreMLP(nn.Module):
    """Noise-conditional vector field ``F(x, c_noise)`` for flat data, the raw network of a preconditioned denoiser.

    The noise label (``ln σ`` for NCSN and DAE models, ``¼ ln σ`` for EDM's) is concatenated to the input; the
    objective's preconditioning does all σ scaling. ``x``: ``(B, *data_shape)``, ``noise_label``: ``(B,)``.
    With ``n_classes`` > 0 a learned embedding of the integer label ``(B,)`` is added to the first layer's
    pre-activation (the same as a one-hot label concatenated to the input; EDM's ``map_label``); label
    ``n_classes`` or ``class_labels=None`` is the null class (unconditional). ``n_classes=0``: the unconditional
    net exactly.
    """

    def __init__(self, *, data_shape: Sequence[int], hidden: int = 128, depth: int = 3, n_classes: int = 0):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.dim = math.prod(self.data_shape)
        self.net = _mlp(self.dim + 1, hidden, depth, self.dim, nn.SiLU)
        self.n_classes = int(n_classes)
        if self.n_classes < 0:
            raise ValueError(f"n_classes must be >= 0 (0: unconditional), got {n_classes}")
        if self.n_classes:
            self.label_embed = LabelEmbedding(self.n_classes, self.net[0].out_features)

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        h = torch.cat([flat, noise_label.reshape(-1, 1).to(flat.dtype)], dim=1)
        if not self.n_classes:
            check_unconditional(class_labels, "ScoreMLP")
            return self.net(h).reshape(x.shape)
        label_emb = self.label_embed(class_labels, batch=x.shape[0], device=x.device).to(flat.dtype)
        return self.net[1:](self.net[0](h) + label_emb).reshape(x.shape)


class ScalarMLP(nn.Module):
    """Scalar field ``f(x)`` of shape ``(B,)`` with a smooth activation, for energies and DDEs on flat data."""

    def __init__(self, *, data_shape: Sequence[int], hidden: int = 128, depth: int = 3):
        super().__init__()
        self.dim = math.prod(data_shape)
        self.net = _mlp(self.dim, hidden, depth, 1, nn.Softplus)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(x.shape[0], -1)).squeeze(1)


class GeneratorMLP(nn.Module):
    """Generator ``G(z)``: latent ``(B, latent_dim)`` → data ``(B, *data_shape)``."""

    def __init__(self, *, data_shape: Sequence[int], latent_dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.latent_dim = latent_dim
        self.net = _mlp(latent_dim, hidden, depth, math.prod(self.data_shape), nn.SiLU)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(z.shape[0], *self.data_shape)
