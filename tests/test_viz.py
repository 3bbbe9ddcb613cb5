"""Pictures put every pixel where it belongs."""

import numpy as np
import torch
from PIL import Image

from dae_gen.viz import image_grid, save_image_grid, save_trajectory_strip


def test_image_grid_places_each_image_and_padding_exactly():
    images = torch.stack([torch.full((1, 2, 3), v) for v in (0.0, 0.2, 0.6, 1.0, 0.4)])  # (5, 1, 2, 3)
    grid = image_grid(images, nrow=3, padding=1)  # 2 rows of 3 slots
    assert grid.shape == (2 * (2 + 1) + 1, 3 * (3 + 1) + 1, 1) and grid.dtype == np.uint8
    for k, value in enumerate((0, 51, 153, 255, 102)):
        r, q = divmod(k, 3)
        top, left = 1 + r * 3, 1 + q * 4
        assert (grid[top:top + 2, left:left + 3, 0] == value).all()
    assert (grid[0, :, 0] == 255).all() and (grid[:, 0, 0] == 255).all()  # white padding
    assert (grid[4:6, 9:12, 0] == 255).all()  # the empty sixth slot stays white


def test_saved_grid_round_trips_and_scales(tmp_path):
    images = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    path = save_image_grid(images, tmp_path / "g.png", nrow=2, scale=3)
    saved = np.asarray(Image.open(path))
    expected = image_grid(images, nrow=2).repeat(3, axis=0).repeat(3, axis=1)
    assert np.array_equal(saved, expected)


def test_trajectory_strip_rows_are_chains_and_columns_are_time(tmp_path):
    frames = [torch.full((2, 1, 1, 1), t / 3) + torch.tensor([0.0, 0.5]).reshape(2, 1, 1, 1) for t in range(3)]
    path = save_trajectory_strip(frames, tmp_path / "t.png", to_unit=lambda x: x.clamp(0, 1))
    strip = np.asarray(Image.open(path))
    values = [[strip[1 + 2 * chain, 1 + 2 * t] for t in range(3)] for chain in range(2)]
    expected = np.round(np.clip([[t / 3 + c for t in range(3)] for c in (0.0, 0.5)], 0, 1) * 255)
    assert np.abs(np.array(values, dtype=float) - expected).max() <= 1  # float32 rounding at .5
