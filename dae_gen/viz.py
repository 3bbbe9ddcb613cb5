"""Pictures: image grids, 2-D scatter plots, Langevin trajectory strips, score fields, training curves."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def _figure(*, figsize: tuple[float, float], dpi: int = 100):
    """A matplotlib Figure outside pyplot: drawing files never selects a backend, so a notebook's inline figures and a
    headless CLI are both left as they are."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def image_grid(images01: Tensor, *, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile ``(B, C, H, W)`` images in [0, 1] into one ``(H', W', C)`` uint8 array (C = 1 or 3)."""
    if images01.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images01.shape)}")
    b, c, h, w = images01.shape
    nrow = nrow or int(math.ceil(math.sqrt(b)))
    ncol = int(math.ceil(b / nrow))
    grid = torch.ones(c, ncol * (h + padding) + padding, nrow * (w + padding) + padding)
    for k in range(b):
        r, q = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = images01[k].float().clamp(0, 1)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_image_grid(images01: Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1) -> Path:
    """Write a PNG grid of ``(B, C, H, W)`` images in [0, 1]; ``scale`` enlarges small images (nearest)."""
    from PIL import Image

    array = image_grid(images01.detach().cpu(), nrow=nrow)
    if scale > 1:
        array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def save_scatter(points: Tensor, path: str | Path, *, reference: Tensor | None = None,
                 bounds: tuple[float, float] | None = None, title: str | None = None) -> Path:
    """Scatter plot of 2-D samples over (lightly drawn) reference data, with a legend and an optional title."""
    fig = _figure(figsize=(4, 4))
    ax = fig.subplots()
    if reference is not None:
        ref = reference.detach().cpu().numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", label=f"data ({len(ref)})")
    pts = points.detach().cpu().reshape(points.shape[0], -1).numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:blue", label=f"samples ({len(pts)})")
    if bounds is not None:
        ax.set_xlim(*bounds)
        ax.set_ylim(*bounds)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4, fontsize=7, framealpha=0.8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def reference_points(data, n: int = 2000) -> Tensor | None:
    """``n`` exact samples (seed 0) of a 2-D dataset, drawn behind its samples in scatter plots; None for images."""
    if data.kind != "points":
        return None
    return data.sample(n, generator=torch.Generator().manual_seed(0)).cpu()


def sample_saver(info, *, reference: Tensor | None = None, title: str | None = None
                 ) -> Callable[..., Path]:
    """The right picture for a dataset: ``save(samples, path, step=None)`` writes an image grid (model range →
    [0, 1]) or a 2-D scatter plot.

    info:       a ``DataInfo`` (``kind``, ``shape``, ``to_unit``, ``bounds``).
    reference:  points drawn lightly behind 2-D samples (e.g. 2000 exact data samples).
    title:      scatter plots only, e.g. ``"DenoisingScoreMatching · annealed_langevin · step {step}"``; ``{step}``
                is ``step=``, else the number ending the file name (the trainer's ``samples_<step>.png``).
    """
    if info.kind == "image":
        size = info.shape[-1]

        def save_grid(x: Tensor, path: str | Path, *, step: int | None = None) -> Path:
            return save_image_grid(info.to_unit(x), path, scale=max(1, 64 // size))

        return save_grid
    if info.kind == "points":

        def save_points(x: Tensor, path: str | Path, *, step: int | None = None) -> Path:
            if step is None and (found := re.search(r"_(\d+)$", Path(path).stem)):
                step = int(found[1])
            text = title
            if text and "{step}" in text:
                text = text.format(step=step) if step is not None else text.replace(" · step {step}", "")
            return save_scatter(x, path, reference=reference, bounds=info.bounds, title=text)

        return save_points
    raise ValueError(f"no picture for data of kind {info.kind!r}")


def save_trajectory_strip(frames: Sequence[Tensor], path: str | Path, *, to_unit: Callable[[Tensor], Tensor],
                          scale: int = 1) -> Path:
    """Langevin trajectory: rows are chains, columns are snapshots. frames: list of ``(B, C, H, W)``."""
    stacked = torch.stack([to_unit(f.detach().cpu()) for f in frames], dim=1)  # (B, T, C, H, W)
    b, t = stacked.shape[:2]
    return save_image_grid(stacked.reshape(b * t, *stacked.shape[2:]), path, nrow=t, scale=scale)


def score_field(score: Callable[[Tensor, Tensor], Tensor], sigma: float, *, bounds: tuple[float, float] = (-3, 3),
                n_grid: int = 20, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """A 2-D score ``score(x, σ)`` on an ``n_grid × n_grid`` grid of points over ``bounds``: ``(points, vectors)``, both
    ``(n_grid², 2)`` on the CPU (points row by row, x fastest)."""
    axis = torch.linspace(bounds[0], bounds[1], n_grid, device=device)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    with torch.enable_grad():  # energy and DDE scores are input gradients
        field = score(grid, torch.full((grid.shape[0],), float(sigma), device=device))
    return grid.cpu(), field.detach().cpu().to(grid.dtype)


def draw_score_field(ax, score: Callable[[Tensor, Tensor], Tensor], sigma: float, *,
                     bounds: tuple[float, float] = (-3, 3), n_grid: int = 20, normalise: bool = True,
                     device: torch.device | str = "cpu", **quiver):
    """Arrows of a 2-D score field at noise level ``sigma`` on a matplotlib axes; returns the quiver.

    normalise:  arrows of equal length showing the direction only (a score's size spans orders of magnitude
                between the modes and the far field); False draws ``∇log p_σ`` to scale.
    quiver:     passed to ``ax.quiver`` (``color``, ``width``, ...).
    """
    points, field = score_field(score, sigma, bounds=bounds, n_grid=n_grid, device=device)
    if normalise:
        field = field / field.norm(dim=1, keepdim=True).clamp(min=1e-12)
    arrows = ax.quiver(points[:, 0].numpy(), points[:, 1].numpy(), field[:, 0].numpy(), field[:, 1].numpy(),
                       angles="xy", **({"pivot": "mid"} | quiver))
    ax.set_xlim(*bounds)
    ax.set_ylim(*bounds)
    ax.set_aspect("equal")
    return arrows


def plot_score_field(score: Callable[[Tensor, Tensor], Tensor], sigma: float, path: str | Path, *,
                     bounds: tuple[float, float] = (-3, 3), n_grid: int = 20,
                     device: torch.device | str = "cpu") -> Path:
    """Quiver plot of a 2-D score field at noise level ``sigma`` (evaluated on ``device``), to scale."""
    fig = _figure(figsize=(4, 4))
    ax = fig.subplots()
    draw_score_field(ax, score, sigma, bounds=bounds, n_grid=n_grid, normalise=False, device=device, pivot="tail")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(f"score at sigma={sigma:g}")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def training_curves_figure(run_dir: str | Path, *, prefix: str = "loss/", eval_prefix: str = "eval/",
                           title: str | None = None):
    """A matplotlib Figure of a run's ``metrics.jsonl``: every ``loss/*`` series against the step (log scale) and,
    when the run logged evaluations (``eval/fid``, ``eval/kid``, ...), a second panel with those."""
    run_dir = Path(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    panels = [(prefix, "loss", True)]
    if eval_prefix and any(key.startswith(eval_prefix) for row in rows for key in row):
        panels.append((eval_prefix, "evaluation", False))
    fig = _figure(figsize=(5 * len(panels), 3))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (start, label, log_scale) in zip(axes, panels):
        for key in sorted({k for row in rows for k in row if k.startswith(start)}):
            points = [(row["step"], row[key]) for row in rows if key in row]
            ax.plot(*zip(*points), label=key, marker="o" if len(points) < 20 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(title or f"training curves of {run_dir.name}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_training_curves(run_dir: str | Path, path: str | Path | None = None, *, prefix: str = "loss/",
                         eval_prefix: str = "eval/") -> Path:
    """Plot every ``loss/*`` series of a run's ``metrics.jsonl`` (and its ``eval/*`` metrics, when logged) to
    ``path`` (default ``<run>/curves.png``)."""
    fig = training_curves_figure(run_dir, prefix=prefix, eval_prefix=eval_prefix)
    path = Path(path or Path(run_dir) / "curves.png")
    fig.savefig(path)
    return path


def save_image_rows(rows: Tensor, path: str | Path, *, to_unit: Callable[[Tensor], Tensor], scale: int = 1) -> Path:
    """Images in rows: ``rows`` ``(R, K, C, H, W)`` in the model's range → an R × K grid (interpolation rows,
    denoising at each σ, inpainting rows)."""
    r, k = rows.shape[:2]
    return save_image_grid(to_unit(rows.detach().cpu()).reshape(r * k, *rows.shape[2:]), path, nrow=k, scale=scale)


def class_grid_labels(classes: int | Sequence[int], per_class: int, *,
                      device: torch.device | str | None = None) -> Tensor:
    """Labels for a class-conditional grid, one row per class: each of ``classes`` (an int n: 0 … n − 1) repeated
    ``per_class`` times, ``(n_rows·per_class,)`` int64; draw samples with them and pass those to ``save_class_grid``."""
    classes = torch.arange(classes) if isinstance(classes, int) else torch.as_tensor(list(classes))
    if classes.numel() < 1 or int(per_class) < 1:
        raise ValueError(f"need at least one class and per_class >= 1, got {classes.tolist()} and {per_class}")
    return classes.long().repeat_interleave(int(per_class)).to(device)


def save_class_grid(samples: Tensor, path: str | Path, *, per_class: int, to_unit: Callable[[Tensor], Tensor],
                    scale: int = 1) -> Path:
    """Samples ``(n_rows·per_class, C, H, W)`` drawn with ``class_grid_labels`` as a grid with one row per class."""
    if samples.shape[0] % int(per_class):
        raise ValueError(f"expected a multiple of per_class={per_class} samples (one row per class), got "
                         f"{samples.shape[0]}; draw them with class_grid_labels(classes, per_class)")
    return save_image_rows(samples.reshape(-1, int(per_class), *samples.shape[1:]), path, to_unit=to_unit,
                           scale=scale)


def inpainting_rows(images: Tensor, mask: Tensor, samples: Tensor, *, to_unit: Callable[[Tensor], Tensor],
                    fill: float = 0.5) -> Tensor:
    """One row per image, in [0, 1]: the masked input (missing pixels at ``fill``) | its completions | the original.

    images: ``(N, C, H, W)``; mask: True where known, broadcastable to ``images``; samples: ``(N, K, C, H, W)``.
    Returns ``(N, K + 2, C, H, W)``.
    """
    images01, samples01 = to_unit(images.detach().cpu()), to_unit(samples.detach().cpu())
    masked = torch.where(torch.as_tensor(mask, dtype=torch.bool).cpu(), images01, torch.full_like(images01, fill))
    return torch.cat([masked.unsqueeze(1), samples01, images01.unsqueeze(1)], dim=1)


def save_inpainting_rows(images: Tensor, mask: Tensor, samples: Tensor, path: str | Path, *,
                         to_unit: Callable[[Tensor], Tensor], scale: int = 1, fill: float = 0.5) -> Path:
    """``inpainting_rows`` as a PNG grid: masked input | completions | original, one row per image."""
    rows = inpainting_rows(images, mask, samples, to_unit=to_unit, fill=fill)
    return save_image_rows(rows, path, to_unit=lambda x: x, scale=scale)


def save_gif(frames: Sequence[Tensor] | Tensor, path: str | Path, *, to_unit: Callable[[Tensor], Tensor],
             nrow: int | None = None, scale: int = 1, duration_ms: int = 200, hold_last_ms: int = 1000) -> Path:
    """An animated GIF, one image grid per frame (each frame ``(B, C, H, W)``, e.g. a recorded trajectory); the
    last frame is held for ``hold_last_ms``. Written with PIL, looping forever."""
    from PIL import Image

    images = []
    for frame in frames:
        array = image_grid(to_unit(frame.detach().cpu()), nrow=nrow)
        if scale > 1:
            array = array.repeat(scale, axis=0).repeat(scale, axis=1)
        images.append(Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array))
    if not images:
        raise ValueError("a GIF needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [duration_ms] * (len(images) - 1) + [max(duration_ms, hold_last_ms)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path
