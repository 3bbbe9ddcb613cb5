"""What the Hydra entry points share: where configs live, loading a trained run, drawing samples in batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dae_gen import distributed as D
from dae_gen.checkpoint import load_checkpoint

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def resolve_device(device: str) -> torch.device:
    return torch.device(D.resolve_device(device))


def load_run(path: str | Path, *, device: torch.device | str = "cpu", use_ema: bool = True
             ) -> tuple[DictConfig, torch.nn.Module, int]:
    """Rebuild a trained model from a run directory (newest checkpoint) or a checkpoint file.

    Returns ``(run_config, model, step)``; the model holds the EMA weights unless ``use_ema=False``.
    """
    state = load_checkpoint(path, map_location="cpu")
    cfg = OmegaConf.create(state["config"])
    if "model" not in cfg or "data_shape" not in cfg:
        raise ValueError(f"the checkpoint at {path} holds no model config; was it written by dae-gen-train?")
    model = instantiate(cfg.model, data_shape=list(cfg.data_shape))
    model.load_state_dict(state["ema" if use_ema else "model"])
    return cfg, model.to(device).eval(), int(state["step"])


def draw_samples(model: torch.nn.Module, sampler: Any, n: int, *, batch_size: int, seed: int,
                 device: torch.device, progress: bool = True) -> torch.Tensor:
    """``n`` samples in batches of ``batch_size``; batch k is seeded with ``seed + k``.

    Two progress bars: images done, and the sampler's steps within the current batch (fed by its callback).
    """
    from tqdm.auto import tqdm

    if n < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be positive, got {n} and {batch_size}")
    out = []
    with tqdm(total=n, desc="sample", unit="img", disable=not progress, dynamic_ncols=True) as images_bar, \
            tqdm(desc="steps", unit="step", disable=not progress, leave=False, dynamic_ncols=True) as steps_bar:

        def on_step(info: dict) -> None:
            if steps_bar.total != info["n"]:
                steps_bar.reset(total=info["n"])
            steps_bar.update(info["i"] - steps_bar.n)

        for k, start in enumerate(range(0, n, batch_size)):
            size = min(batch_size, n - start)
            generator = torch.Generator(device=device).manual_seed(seed + k)
            out.append(sampler(model, size, generator=generator, callback=on_step).detach().cpu())
            images_bar.update(size)
    return torch.cat(out)


def run_sampler(run_cfg: DictConfig, sampler_cfg: DictConfig | None) -> tuple[Any, dict]:
    """The sampler to draw with, and its settings as a plain dict (for records such as ``eval.json``).

    A full sampler preset (has ``_target_``) is used as given; otherwise the run's own sampler with the
    given overrides merged on.
    """
    if sampler_cfg is None or "_target_" not in sampler_cfg:
        sampler_cfg = OmegaConf.merge(run_cfg.sampler, sampler_cfg or {})
    return instantiate(sampler_cfg), OmegaConf.to_container(sampler_cfg, resolve=True)
