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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
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
    plt.close(fig)
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


def plot_score_field(score: Callable[[Tensor, Tensor], Tensor], sigma: float, path: str | Path, *,
                     bounds: tuple[float, float] = (-3, 3), n_grid: int = 20,
                     device: torch.device | str = "cpu") -> Path:
    """Quiver plot of a 2-D score field at noise level ``sigma`` (evaluated on ``device``)."""
    plt = _pyplot()
    axis = torch.linspace(bounds[0], bounds[1], n_grid, device=device)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    with torch.enable_grad():
        field = score(grid, torch.full((grid.shape[0],), float(sigma), device=device)).detach().cpu()
    grid = grid.cpu()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.quiver(grid[:, 0], grid[:, 1], field[:, 0], field[:, 1], angles="xy")
    ax.set_aspect("equal")
    ax.set_title(f"score at sigma={sigma:g}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_training_curves(run_dir: str | Path, path: str | Path | None = None, *, prefix: str = "loss/") -> Path:
    """Plot every ``loss/*`` series of a run's ``metrics.jsonl``."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = sorted({k for row in rows for k in row if k.startswith(prefix)})
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    for key in keys:
        pts = [(row["step"], row[key]) for row in rows if key in row]
        ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    path = Path(path or run_dir / "curves.png")
    fig.savefig(path)
    plt.close(fig)
    return path


def save_image_rows(rows: Tensor, path: str | Path, *, to_unit: Callable[[Tensor], Tensor], scale: int = 1) -> Path:
    """Images in rows: ``rows`` ``(R, K, C, H, W)`` in the model's range → an R × K grid (interpolation rows,
    denoising at each σ, inpainting rows)."""
    r, k = rows.shape[:2]
    return save_image_grid(to_unit(rows.detach().cpu()).reshape(r * k, *rows.shape[2:]), path, nrow=k, scale=scale)


def save_inpainting_rows(images: Tensor, mask: Tensor, samples: Tensor, path: str | Path, *,
                         to_unit: Callable[[Tensor], Tensor], scale: int = 1, fill: float = 0.5) -> Path:
    """One row per image: the masked input (missing pixels grey, ``fill`` in [0, 1]) | its completions | the original.

    images: ``(N, C, H, W)``; mask: True where known, broadcastable to ``images``; samples: ``(N, K, C, H, W)``.
    """
    images01, samples01 = to_unit(images.detach().cpu()), to_unit(samples.detach().cpu())
    masked = torch.where(torch.as_tensor(mask, dtype=torch.bool).cpu(), images01, torch.full_like(images01, fill))
    rows = torch.cat([masked.unsqueeze(1), samples01, images01.unsqueeze(1)], dim=1)  # (N, K + 2, C, H, W)
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
