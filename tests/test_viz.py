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


def test_scatter_plots_carry_a_title_with_the_step_and_a_legend(tmp_path, monkeypatch):
    """2-D pictures name method, sampler and step (from step= or the trainer's samples_<step>.png) and say which
    points are data and which are samples."""
    import matplotlib.figure

    from dae_gen.data.base import DataInfo
    from dae_gen.viz import sample_saver

    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *args, **kwargs: (figures.append(fig), save(fig, *args, **kwargs)))
    info = DataInfo(name="mixture8", kind="points", shape=(2,), bounds=(-3.0, 3.0))
    saver = sample_saver(info, reference=torch.zeros(5, 2), title="DSM · annealed_langevin · step {step}")
    saver(torch.ones(3, 2), tmp_path / "samples_00001500.png")
    saver(torch.ones(3, 2), tmp_path / "grid.png", step=7)
    saver(torch.ones(3, 2), tmp_path / "grid.png")
    titles = [fig.axes[0].get_title() for fig in figures]
    assert titles == ["DSM · annealed_langevin · step 1500", "DSM · annealed_langevin · step 7",
                      "DSM · annealed_langevin"]
    legend = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["data (5)", "samples (3)"]
    assert Image.open(tmp_path / "samples_00001500.png").size == (400, 400)
