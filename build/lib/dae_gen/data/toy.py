"""2-D toy distributions with exact samplers (and, for the mixture, an exact density and score)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dae_gen.data.base import PointData


def _gaussian_mixture(n_modes: int, radius: float, std: float):
    from dae_gen.density import GaussianMixture

    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means=means, stds=torch.full((n_modes,), std, dtype=torch.float64),
                           weights=torch.full((n_modes,), 1.0 / n_modes, dtype=torch.float64))


def mixture(*, n_modes: int = 8, radius: float = 2.0, std: float = 0.1) -> PointData:
    """Equal-weight Gaussian mixture with ``n_modes`` modes on a circle of ``radius``."""
    if n_modes < 1 or radius < 0 or std <= 0:
        raise ValueError(f"need n_modes >= 1, radius >= 0, std > 0; got {n_modes}, {radius}, {std}")
    gm = _gaussian_mixture(n_modes, radius, std)
    data = PointData(lambda n, generator=None: gm.sample(n, generator=generator).float(), shape=(2,),
                     name=f"mixture{n_modes}", log_prob=gm.log_prob, bounds=(-radius - 1.5, radius + 1.5))
    data.mixture = gm
    return data


def rings(*, n_rings: int = 2, radius: float = 1.0, std: float = 0.05) -> PointData:
    """Concentric rings of radii ``radius·k`` (k = 1…n_rings), points spread evenly by arc length."""
    radii = radius * torch.arange(1, n_rings + 1, dtype=torch.float32)

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        ring = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
        theta = 2 * math.pi * torch.rand(n, generator=generator)
        points = radii[ring, None] * torch.stack([theta.cos(), theta.sin()], dim=1)
        return points + std * torch.randn(n, 2, generator=generator)

    return PointData(sample, shape=(2,), name="rings", bounds=(-radius * n_rings - 1, radius * n_rings + 1))


def two_moons(*, std: float = 0.05) -> PointData:
    """The two interleaved half circles of scikit-learn's ``make_moons``, centred."""

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        upper = torch.rand(n, generator=generator) < 0.5
        theta = math.pi * torch.rand(n, generator=generator)
        x = torch.where(upper, theta.cos(), 1 - theta.cos())
        y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
        points = torch.stack([x - 0.5, y - 0.25], dim=1)
        return points + std * torch.randn(n, 2, generator=generator)

    return PointData(sample, shape=(2,), name="two_moons", bounds=(-2.0, 2.0))


def checkerboard(*, n_cells: int = 4, size: float = 4.0) -> PointData:
    """Uniform on the black cells of an ``n_cells × n_cells`` checkerboard of side ``size``, centred at 0."""
    if n_cells < 2 or n_cells % 2:
        raise ValueError(f"n_cells must be an even number >= 2, got {n_cells}")
    cell = size / n_cells

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        i = torch.randint(n_cells, (n,), generator=generator)
        j = torch.randint(n_cells // 2, (n,), generator=generator) * 2 + (i % 2)  # black cells: i + j even
        u = torch.rand(n, 2, generator=generator)
        return torch.stack([(i + u[:, 0]) * cell, (j + u[:, 1]) * cell], dim=1) - size / 2

    return PointData(sample, shape=(2,), name="checkerboard", bounds=(-size / 2 - 0.5, size / 2 + 0.5))
