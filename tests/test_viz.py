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


def test_score_field_arrows_point_along_the_exact_mixture_score():
    """The arrows drawn are the score at the grid points: directions of the closed-form mixture score."""
    import matplotlib.figure

    from dae_gen.density import GaussianMixture
    from dae_gen.viz import draw_score_field

    mixture = GaussianMixture(means=[[-1.0, 0.0], [1.5, 1.0]], stds=[0.3, 0.5], weights=[0.4, 0.6])
    sigma = 0.2
    smoothed = mixture.smoothed(sigma)
    ax = matplotlib.figure.Figure().subplots()
    arrows = draw_score_field(ax, lambda x, s: smoothed.score(x), sigma, bounds=(-2, 2), n_grid=5)
    axis = torch.linspace(-2, 2, 5)
    points = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    assert np.allclose(arrows.get_offsets(), points.numpy())
    exact = smoothed.score(points)
    direction = exact / exact.norm(dim=1, keepdim=True)
    assert np.allclose(np.stack([arrows.U, arrows.V], axis=1), direction.numpy(), atol=1e-6)
    to_scale = draw_score_field(ax, lambda x, s: smoothed.score(x), sigma, bounds=(-2, 2), n_grid=5, normalise=False)
    assert np.allclose(np.stack([to_scale.U, to_scale.V], axis=1), exact.numpy(), rtol=1e-5)


def test_training_curves_plot_the_logged_values_and_an_evaluation_panel(tmp_path):
    import json

    from dae_gen.viz import plot_training_curves, training_curves_figure

    rows = [{"step": s, "loss/model": 10.0 / s} for s in (1, 2, 3, 4)] + [{"step": 4, "eval/fid": 42.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    fig = training_curves_figure(tmp_path)
    loss_ax, eval_ax = fig.axes
    (loss,) = loss_ax.get_lines()
    assert list(loss.get_xdata()) == [1, 2, 3, 4] and np.allclose(loss.get_ydata(), [10.0, 5.0, 10 / 3, 2.5])
    assert loss_ax.get_yscale() == "log" and loss_ax.get_xlabel() == "step" and loss_ax.get_ylabel() == "loss"
    (fid,) = eval_ax.get_lines()
    assert fid.get_label() == "eval/fid" and list(fid.get_ydata()) == [42.0]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:4]))
    assert len(training_curves_figure(tmp_path).axes) == 1  # no evaluations logged: one panel
    assert plot_training_curves(tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drawing_files_leaves_the_session_backend_alone(tmp_path):
    """A notebook's inline backend survives the file-writing helpers (they never touch pyplot's backend)."""
    import matplotlib
    import matplotlib.pyplot as plt

    from dae_gen.viz import plot_score_field, save_scatter

    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        save_scatter(torch.zeros(3, 2), tmp_path / "s.png")
        plot_score_field(lambda x, s: -x, 1.0, tmp_path / "f.png", n_grid=4)
        assert matplotlib.get_backend() == "svg"
    finally:
        plt.switch_backend(before)


def test_inpainting_rows_are_masked_input_completions_and_original():
    from dae_gen.viz import inpainting_rows

    images = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1).expand(2, 1, 1, 2)  # (2, 1, 1, 2) in [-1, 1] below
    mask = torch.tensor([True, False]).reshape(1, 1, 2)  # the second pixel is missing
    samples = torch.full((2, 3, 1, 1, 2), -1.0)
    rows = inpainting_rows(images, mask, samples, to_unit=lambda x: (x + 1) / 2, fill=0.25)
    assert rows.shape == (2, 5, 1, 1, 2)
    assert rows[:, 0].flatten().tolist() == [0.5, 0.25, 1.0, 0.25]  # known pixel | fill
    assert (rows[:, 1:4] == 0).all() and rows[:, 4].flatten().tolist() == [0.5, 0.5, 1.0, 1.0]
