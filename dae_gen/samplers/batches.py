"""Drawing many samples in batches with a fixed seed per batch: the one loop behind ``Run.sample``,
``dae-gen-sample``, ``dae-gen-eval`` and the FID monitor, so equal settings give equal samples everywhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from dae_gen.errors import SamplingDiverged
from dae_gen.score import Callback, Cond, ScoreModel, Step, protocol_device


def count_nonfinite(samples: Tensor) -> int:
    """How many samples (rows) hold any NaN or ±inf."""
    return int((~torch.isfinite(samples)).reshape(samples.shape[0], -1).any(dim=1).sum())


def draw_samples(model: ScoreModel, sampler: Callable[..., Tensor], n: int, *, batch_size: int, seed: int = 0,
                 progress: bool = False, callback: Callback = None, desc: str = "sample",
                 require_finite: bool = False, cond: Cond | None = None) -> Tensor:
    """``n`` samples ``(n, *data_shape)`` on the CPU, in batches of ``batch_size``; batch k is seeded with ``seed + k``.

    sampler:         a driver ``(model, n, *, generator=, callback=) -> Tensor`` (a sampler config as a partial).
    progress:        two tqdm bars, images done and the sampler's steps within the current batch (fed by its callback).
    callback:        also called with the sampler's :class:`~dae_gen.score.Step`, its ``batch`` set to the batch index.
    cond:            conditioning for all ``n`` samples, keyword tensors with a leading dimension ``n``: batch k's
                     rows are passed to the sampler as its ``cond``.
    require_finite:  raise :class:`~dae_gen.errors.SamplingDiverged` with the count if any sample is NaN/inf.
    """
    from tqdm.auto import tqdm

    if int(n) < 1 or int(batch_size) < 1:
        raise ValueError(f"n_samples and batch_size must be positive, got {n} and {batch_size}")
    for key, value in (cond or {}).items():
        if value.shape[0] != int(n):
            raise ValueError(f"cond[{key!r}] must hold one row per sample ({n}), got the shape {tuple(value.shape)}")
    device = protocol_device(model)
    out = []
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as images_bar, \
            tqdm(desc="steps", unit="step", disable=not progress, leave=False, dynamic_ncols=True) as steps_bar:
        for k, start in enumerate(range(0, n, batch_size)):

            def on_step(step: Step, k: int = k) -> None:
                if progress:
                    if step.i == 1 or (step.n is not None and steps_bar.total != step.n):
                        steps_bar.reset(total=step.n)  # None (an adaptive solver): a bar without a total
                    steps_bar.update(step.i - steps_bar.n)
                if callback is not None:
                    callback(replace(step, batch=k))

            size = min(batch_size, n - start)
            generator = torch.Generator(device=device).manual_seed(seed + k)
            extra = {} if cond is None else {"cond": {key: value[start:start + size] for key, value in cond.items()}}
            out.append(sampler(model, size, generator=generator, callback=on_step, **extra).detach().cpu())
            images_bar.update(size)
    samples = torch.cat(out)
    if require_finite and (bad := count_nonfinite(samples)):
        raise SamplingDiverged(f"{bad} of {n} samples are not finite (NaN or inf): the sampler diverged. Lower "
                               "its step size (sampler.step_lr / sampler.step_size) or check the model")
    return samples


__all__ = ["count_nonfinite", "draw_samples"]
