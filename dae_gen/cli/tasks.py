"""``dae-gen-sample task=...``: the image tasks of ``dae_gen.samplers.tasks`` on a trained run, written as pictures
and an ``.npz`` into the sample folder. The sampler is the command line's (the run's own by default)::

    dae-gen-sample run=outputs/my_run task=inpaint inpaint.mask=centre
    dae-gen-sample run=outputs/my_run task=interpolate interpolate.n_rows=4 ++sampler.n_steps_each=20
    dae-gen-sample run=outputs/my_run task=trajectory trajectory.n_frames=12
    dae-gen-sample run=outputs/my_run task=denoise denoise.sigmas=[0.1,0.5,1.0]
    dae-gen-sample run=outputs/cond_run task=inpaint class_labels=[3] guidance=1   # class-conditional fills

With ``class_labels`` (a class-conditional run) the classes go round the task's groups: image i of inpainting or
denoising, row r of interpolation, chain k of a trajectory gets ``classes[i % len(classes)]``, and every chain of
that group is conditioned on it (interpolation within a class); ``guidance``/``guide_run`` guide every score call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dae_gen.cli.checks import check_choice, check_number
from dae_gen.errors import ConfigError
from dae_gen.metrics.inception import quantize
from dae_gen.run import Run
from dae_gen.samplers.tasks import (
    ENDPOINTS,
    KNOWN_NOISE,
    MASK_KINDS,
    denoise_at_levels,
    inpaint,
    inpainting_mask,
    interpolate,
    record_trajectory,
)

TASKS = ("sample", "inpaint", "interpolate", "trajectory", "denoise")


def _steps(key: str, value) -> list | None:
    """A list setting of the task node (``trajectory.steps``, ``denoise.sigmas``) as a plain list, or None."""
    if value is None:
        return None
    value = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list, e.g. [1,10,100], or null; got {value!r}")
    return value


def check_task(cfg: DictConfig) -> None:
    """Check the settings of ``cfg.task`` before any work, naming the key (``inpaint.mask: must be one of ...``)."""
    task = cfg.get("task", "sample")
    check_choice("task", task, TASKS)
    if task == "inpaint":
        options = cfg.inpaint
        check_choice("inpaint.mask", options.mask, MASK_KINDS)
        check_number("inpaint.missing_fraction", options.missing_fraction, minimum=0, maximum=1)
        check_number("inpaint.n_images", options.n_images, minimum=1, integer=True)
        check_number("inpaint.n_per_image", options.n_per_image, minimum=1, integer=True)
        check_choice("inpaint.known_noise", options.known_noise, (None, *KNOWN_NOISE))
        if options.get("resample") is not None:
            check_number("inpaint.resample", options.resample, minimum=1, integer=True)
    elif task == "interpolate":
        options = cfg.interpolate
        check_number("interpolate.n_rows", options.n_rows, minimum=1, integer=True)
        check_number("interpolate.n_interpolations", options.n_interpolations, minimum=2, integer=True)
        check_choice("interpolate.endpoints", options.endpoints, ENDPOINTS)
    elif task == "trajectory":
        options = cfg.trajectory
        check_number("trajectory.n_chains", options.n_chains, minimum=1, integer=True)
        check_number("trajectory.n_frames", options.n_frames, minimum=1, integer=True)
        for step in _steps("trajectory.steps", options.steps) or []:
            check_number("trajectory.steps", step, minimum=1, integer=True)
    elif task == "denoise":
        options = cfg.denoise
        check_number("denoise.n_images", options.n_images, minimum=1, integer=True)
        check_number("denoise.n_sigmas", options.n_sigmas, minimum=1, integer=True)
        for sigma in _steps("denoise.sigmas", options.sigmas) or []:
            check_number("denoise.sigmas", sigma, minimum=0, strict=True)


def _scale(run: Run) -> int:
    """Enlarge small images to about 64 pixels a side, as sample grids do."""
    return max(1, 64 // run.data.shape[-1])


def _need_images(run: Run, task: str) -> None:
    if run.data.kind != "image":
        raise ConfigError(f"task={task} makes image pictures, but this run's data ({run.data.name}) is "
                          f"{run.data.kind!r}: use task=sample, interpolate or trajectory")


def _save_npz(run: Run, path: Path, **arrays) -> None:
    """Raw tensors, the checkpoint's step, and for images a uint8 copy of ``samples`` as a PNG would hold it."""
    payload = {key: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
               for key, value in arrays.items()}
    if run.data.kind == "image" and "samples" in arrays:
        payload["samples_uint8"] = quantize(run.to_unit(arrays["samples"].detach().cpu())).numpy()
    np.savez_compressed(path, step=np.int64(run.step), **payload)


def group_labels(classes: list[int] | None, n_groups: int, group_size: int) -> Tensor | None:
    """Labels ``(n_groups·group_size,)``, group-major: group g's chains all get ``classes[g % len(classes)]``."""
    if classes is None:
        return None
    chosen = torch.as_tensor(classes, dtype=torch.long)[torch.arange(int(n_groups)) % len(classes)]
    return chosen.repeat_interleave(int(group_size))


def run_task(run: Run, cfg: DictConfig, sampler, out_dir: Path, *, conditioning=None) -> Path:
    """Run ``cfg.task`` with the sampler driver ``sampler``; write ``<task>.png`` and ``<task>.npz`` (a trajectory
    also ``trajectory.gif``) into ``out_dir``; return the picture's path. ``conditioning``: the command line's
    classes and guidance (``dae_gen.cli.conditioning.Conditioning``), None: unconditional."""
    check_task(cfg)
    task = cfg.task
    classes = None if conditioning is None else conditioning.classes
    groups = {"inpaint": lambda o: (o.n_images, o.n_per_image), "interpolate": lambda o: (o.n_rows, o.n_interpolations),
              "trajectory": lambda o: (o.n_chains, 1), "denoise": lambda o: (o.n_images, 1)}
    labels = group_labels(classes, *groups[task](cfg[task])) if task in groups else None
    model, cond = (run.model, None) if conditioning is None else conditioning.model(run, labels)
    extra = {} if labels is None else {"class_labels": labels}
    generator = torch.Generator(device=run.device).manual_seed(int(cfg.seed))
    picture = out_dir / f"{task}.png"
    if task == "inpaint":
        _need_images(run, task)
        options = cfg.inpaint
        images = run.data_examples(options.n_images, seed=cfg.seed)
        mask = inpainting_mask(options.mask, run.data.shape, missing_fraction=options.missing_fraction,
                               generator=torch.Generator().manual_seed(int(cfg.seed)))
        samples = inpaint(model, images, mask, n_per_image=options.n_per_image, sampler=sampler,
                          known_noise=options.known_noise, resample=options.get("resample"),
                          generator=generator, cond=cond).cpu()
        out_dir.mkdir(parents=True, exist_ok=True)
        from dae_gen.viz import save_inpainting_rows

        save_inpainting_rows(images, mask, samples, picture, to_unit=run.to_unit, scale=_scale(run))
        _save_npz(run, out_dir / "inpaint.npz", images=images, mask=mask, samples=samples, **extra)
    elif task == "interpolate":
        options = cfg.interpolate
        rows = interpolate(model, options.n_rows, n_interpolations=options.n_interpolations, sampler=sampler,
                           endpoints=options.endpoints, generator=generator, cond=cond).cpu()
        out_dir.mkdir(parents=True, exist_ok=True)
        if run.data.kind == "image":
            from dae_gen.viz import save_image_rows

            save_image_rows(rows, picture, to_unit=run.to_unit, scale=_scale(run))
        else:
            run.save_grid(rows.flatten(0, 1), picture, title="interpolation rows")
        _save_npz(run, out_dir / "interpolate.npz", samples=rows, **extra)
    elif task == "trajectory":
        options = cfg.trajectory
        steps = _steps("trajectory.steps", options.steps)
        try:
            trajectory = record_trajectory(model, options.n_chains, sampler=sampler, steps=steps,
                                           n_frames=options.n_frames, generator=generator, cond=cond)
        except ValueError as err:
            if steps is None or "cannot record step" not in str(err):
                raise
            raise ConfigError(f"trajectory.steps: {err}; give steps within the sampler's run") from err
        out_dir.mkdir(parents=True, exist_ok=True)
        frames = [*trajectory.frames, trajectory.samples.cpu()]  # the recorded steps, then the output
        if run.data.kind == "image":
            from dae_gen.viz import save_gif, save_trajectory_strip

            save_trajectory_strip(frames, picture, to_unit=run.to_unit, scale=_scale(run))
            if options.gif:
                save_gif(frames, out_dir / "trajectory.gif", to_unit=run.to_unit, scale=_scale(run))
        else:
            run.save_grid(trajectory.samples.cpu(), picture, title="trajectory: final states")
        _save_npz(run, out_dir / "trajectory.npz", steps=np.asarray(trajectory.steps, dtype=np.int64),
                  frames=trajectory.frames, samples=trajectory.samples, **extra)
    elif task == "denoise":
        _need_images(run, task)
        options = cfg.denoise
        images = run.data_examples(options.n_images, seed=cfg.seed)
        sigmas = _steps("denoise.sigmas", options.sigmas)
        result = denoise_at_levels(model, images, sigmas=sigmas, n_sigmas=options.n_sigmas, generator=generator,
                                   cond=cond)
        out_dir.mkdir(parents=True, exist_ok=True)
        noisy, denoised = result.noisy.cpu(), result.denoised.cpu()
        # one row per image: clean | noisy and denoised at σ_1 | … | at σ_S
        pairs = torch.stack([noisy, denoised], dim=1).flatten(0, 1).transpose(0, 1)  # (N, 2S, ...)
        from dae_gen.viz import save_image_rows

        save_image_rows(torch.cat([images.unsqueeze(1), pairs], dim=1), picture, to_unit=run.to_unit,
                        scale=_scale(run))
        _save_npz(run, out_dir / "denoise.npz", images=images, sigmas=result.sigmas, noisy=noisy, samples=denoised,
                  **extra)
    else:
        raise ConfigError("task=sample draws samples; dae_gen.cli.sample handles it")
    return picture
