"""Trained runs as Python objects: load a run directory or a checkpoint file, draw samples with any sampler,
save grids. No Hydra app is needed; this is what ``dae-gen-sample`` and ``dae-gen-eval`` call too::

    from dae_gen import load_run
    run = load_run("outputs/my_run")                       # newest checkpoint, EMA weights
    run = load_run("outputs/my_run", ema_length=0.1)       # a post-hoc EMA of that length (dae_gen.posthoc_ema)
    x = run.sample(64, seed=0)                              # the run's own sampler
    y = run.sample(64, sampler="temperature_langevin", n_steps_hot=50)   # any sampler config, with overrides
    z = run.sample(30, labels=[0] * 10 + [1] * 10 + [2] * 10, guidance=2.0)  # class-conditional run: CFG, w = 2
    run.save_grid(x, "grid.png")

Samplers are named by their config file in ``configs/sampler/`` (installed as ``dae_gen.configs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dae_gen.conditioning import as_labels, check_guidance, conditioned, n_classes_of
from dae_gen.data.base import DataInfo
from dae_gen.errors import CheckpointError, ConfigError
from dae_gen.objectives.base import Objective
from dae_gen.run_folder import RunDir, run_directory
from dae_gen.samplers import registry
from dae_gen.samplers.batches import draw_samples
from dae_gen.samplers.registry import Sampler
from dae_gen.score import Callback, Cond


# -- the one place run configs are read (OmegaConf, Hydra's instantiate) -------------------------------------
def _plain(node: Any) -> Any:
    """A config node as plain dicts and lists (resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _config(stored: Mapping[str, Any]) -> DictConfig:
    """A checkpoint's stored config as the node ``Run.config`` holds."""
    return OmegaConf.create(stored)


def _instantiate(node: Any, **kwargs: Any) -> Any:
    """The object a config node (``_target_`` ...) describes, with ``kwargs`` put over its arguments."""
    from hydra.utils import instantiate

    return instantiate(node, **kwargs)


# -- samplers by name --------------------------------------------------------------------------------------
def sampler_names() -> list[str]:
    """The registered samplers (each with its config ``configs/sampler/<name>.yaml``)."""
    return registry.sampler_names()


def sampler_config(name: str) -> dict[str, Any]:
    """The settings of the sampler config ``name`` as a plain dict (with ``_target_`` and ``_partial_``)."""
    return registry.sampler_config(name)


def build_sampler(settings: Mapping[str, Any] | str, **overrides: Any) -> tuple[Sampler, dict[str, Any]]:
    """A :class:`~dae_gen.samplers.registry.Sampler` ``(model, n, *, generator, callback, cond) -> Tensor`` and the
    exact settings it uses (its config: ``_target_``, the settings given, ``_partial_``).

    settings:   a sampler config (``_target_`` naming a registered driver, and its keyword arguments) or a name.
    overrides:  settings replacing or adding to those; each is checked by the registry (name, type and range: a
                ConfigError names the first that is not right).

    One setting every sampler takes besides its own: ``amp`` (``"none"`` or ``"bf16"``), the precision of the
    model's network calls during the chain (``dae_gen.precision``: bf16 autocast where the device computes in bf16,
    else fp32 with a warning; the chain's state stays fp32).
    """
    sampler = registry.build_sampler(_plain(settings), **overrides)
    return sampler, dict(sampler.config)


# -- runs ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained model with what it was trained on and with.

    path:        the run directory (where sample and evaluation folders go).
    checkpoint:  the checkpoint file the weights came from.
    config:      the run's resolved training config.
    model:       the objective, in eval mode, holding the EMA weights (or the raw ones with ``use_ema=False``).
    step:        the training step of the checkpoint.
    data:        the data's description (kind, shape, pixel range or plot bounds), from the checkpoint.
    use_ema:     whether ``model`` holds the EMA weights.
    posthoc_ema: the post-hoc EMA ``model`` holds (``ema_length``, the ``step`` of its profile, the ``snapshots``
                 combined, the ``profile_error``), or None for the checkpoint's own weights.
    """

    path: Path
    checkpoint: Path
    config: DictConfig
    model: Objective
    step: int
    data: DataInfo
    use_ema: bool = True
    posthoc_ema: dict[str, Any] | None = None
    _reference: Tensor | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        from dae_gen.score import protocol_device

        return protocol_device(self.model)

    def checkpoints(self) -> list[Path]:
        """The run's step checkpoints, oldest first, then ``best.pt`` if there is one."""
        return RunDir(self.path).all_checkpoints()

    def sampler(self, sampler: str | Mapping[str, Any] | None = None, **overrides: Any
                ) -> tuple[Sampler, dict[str, Any]]:
        """A sampler driver and its exact settings: the run's own (``None``), a config by name, or a settings dict;
        ``overrides`` replace single settings."""
        return build_sampler(self.config.sampler if sampler is None else sampler, **overrides)

    @property
    def n_classes(self) -> int:
        """The number of classes the model is conditional on (0: unconditional)."""
        return n_classes_of(self.model)

    def guided(self, *, labels: Any = None, n: int | None = None, guidance: float = 0.0,
               guide: Run | Any | None = None) -> tuple[Any, Cond | None]:
        """The score model and ``cond`` for ``n`` samples with ``labels`` and guidance (``dae_gen.conditioning``):
        ``labels`` an int or ``n`` integers (None: unconditional), ``guide`` another run or score model."""
        guide_model = guide.model if isinstance(guide, Run) else guide
        check_guidance(self.model, guidance=guidance, guide=guide_model)
        if labels is not None:
            labels = as_labels(labels, int(n), n_classes=self.n_classes).to(self.device)
        return conditioned(self.model, labels=labels, guidance=guidance, guide=guide_model)

    def sample(self, n: int, *, sampler: str | Mapping[str, Any] | None = None, seed: int = 0,
               batch_size: int = 256, progress: bool = False, callback: Callback = None, labels: Any = None,
               guidance: float = 0.0, guide: Run | Any | None = None, **overrides: Any) -> Tensor:
        """``n`` samples ``(n, *data_shape)`` on the CPU in the model's range; batch k is seeded with ``seed + k``.

        sampler:    ``None`` (the run's own), a sampler config name (``"temperature_langevin"``), or settings.
        labels:     class-conditional runs: an int (all ``n`` of that class) or ``n`` integer classes; None:
                    unconditional (the null class).
        guidance:   w ≥ 0, ``s = (1 + w)·s(x | c) − w·s_guide`` (``dae_gen.guidance.Guided``); 0: no guidance.
        guide:      None: classifier-free guidance by the null class; another :class:`Run` (or score model) of the
                    same data and classes, e.g. an earlier checkpoint: autoguidance.
        overrides:  single sampler settings, e.g. ``n_steps_each=5``, or ``amp="bf16"`` (the network calls in bf16
                    where the device computes in bf16; ``dae_gen.precision``).
        """
        driver, _ = self.sampler(sampler, **overrides)
        model, cond = self.guided(labels=labels, n=n, guidance=guidance, guide=guide)
        return draw_samples(model, driver, n, batch_size=batch_size, seed=seed, progress=progress,
                            callback=callback, cond=cond)

    def to_unit(self, x: Tensor) -> Tensor:
        """Images: model range → [0, 1]."""
        return self.data.to_unit(x)

    def reference_points(self, n: int = 2000) -> Tensor | None:
        """2-D data: ``n`` exact samples of the training distribution (drawn once, seed 0); images: None."""
        if self.data.kind != "points":
            return None
        if self._reference is None:
            from dae_gen.viz import reference_points

            self._reference = reference_points(_instantiate(self.config.dataset), n)  # a toy law: no files to read
        return self._reference

    def data_examples(self, n: int, *, split: str = "test", seed: int = 0) -> Tensor:
        """``n`` real examples ``(n, *data_shape)`` in the model's range on the CPU (inpainting, denoising pictures).

        Images: a seeded choice from ``split`` when the dataset's config has a ``split`` (the dataset is rebuilt from
        the run's config without dequantisation; held out only if the run trained on another split), else from the
        training data. 2-D data: ``n`` fresh exact samples.
        """
        config = self.config.dataset
        overrides = {key: value for key, value in (("split", split), ("dequantize", False)) if key in config}
        dataset = _instantiate(config, **overrides)
        generator = torch.Generator().manual_seed(seed)
        if self.data.kind == "points":
            return dataset.sample(int(n), generator=generator).cpu()
        index = torch.randperm(len(dataset), generator=generator)[:int(n)].sort().values
        images = dataset.images  # uint8 (N, C, H, W): a tensor, or a numpy memmap for large datasets
        rows = images[index.to(images.device)] if isinstance(images, Tensor) else torch.from_numpy(
            np.ascontiguousarray(images[index.numpy()]))
        return dataset.scale_uint8(rows).cpu()

    def log_likelihood(self, x: Tensor, **settings: Any):
        """``log p_{σ_min}(x)`` of ``x (N, *data_shape)`` (model range) under the probability-flow ODE, an
        ``ODELikelihood``; ``settings``: those of ``dae_gen.likelihood.model_log_likelihood`` (``divergence``,
        ``n_probes``, ``sigma_min``, ...). Bits/dim of uint8 images: ``dae_gen.likelihood.model_bits_per_dim``."""
        from dae_gen.likelihood import model_log_likelihood

        return model_log_likelihood(self.model, x, **settings)

    def save_grid(self, samples: Tensor, path: str | Path, *, title: str | None = None) -> Path:
        """An image grid, or for 2-D data a scatter plot over the data, written to ``path`` (PNG)."""
        from dae_gen.viz import sample_saver

        return sample_saver(self.data, reference=self.reference_points(), title=title)(samples, Path(path))


def load_run(path: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True,
             ema_length: float | None = None, max_profile_error: float = 0.1) -> Run:
    """Load a run directory (its newest checkpoint) or a checkpoint file into a :class:`Run`.

    device:      where the model goes (``"cpu"``, ``"cuda"``, ``"auto"``).
    use_ema:     the EMA weights (True, what sample grids show) or the raw training weights.
    ema_length:  instead, the post-hoc EMA of this relative length σ_rel (EDM2), reconstructed from the run's
                 snapshots up to the checkpoint's step (trained with ``trainer.posthoc_ema.snapshot_every``).
    max_profile_error: refuse a length whose averaging profile the snapshots match worse than this (relative L2).
    """
    from dae_gen.distributed import resolve_device

    path = Path(path)
    run_dir = RunDir.of(path)
    if ema_length is not None:
        _check_ema_length(ema_length, max_profile_error=max_profile_error, use_ema=use_ema)
    state, checkpoint = run_dir.load(None if path.is_dir() else path, map_location="cpu")
    config = _config(state["config"])
    if "model" not in config or "data_shape" not in config:
        raise CheckpointError(f"the checkpoint at {path} holds no model config; was it written by dae-gen-train?")
    step = int(state["step"])
    if "data_info" in config:
        data = DataInfo.from_dict(_plain(config.data_info))
    else:  # written before checkpoints described their data: rebuild the dataset once to learn it
        data = _instantiate(config.dataset).info
    model = _instantiate(config.model, data_shape=list(config.data_shape))
    posthoc = None
    if ema_length is None:
        name = "ema" if use_ema else "model"
        weights, source = state[name], f"the {name} weights in {checkpoint}"
    else:
        weights, posthoc = posthoc_ema_weights(run_dir, ema_length, upto_step=step,
                                               max_profile_error=max_profile_error)
        source = f"the post-hoc EMA weights from {run_dir.posthoc_ema_folder}"
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{source} do not fit the model its config describes: "
                              f"{str(err).splitlines()[0]}") from err
    model = model.to(torch.device(resolve_device(str(device)))).eval().requires_grad_(False)
    return Run(path=run_dir.path, checkpoint=checkpoint, config=config, model=model, step=step, data=data,
               use_ema=use_ema, posthoc_ema=posthoc)


def _check_ema_length(ema_length: Any, *, max_profile_error: Any, use_ema: bool) -> None:
    """``ema_length`` a number in (0, SIGMA_REL_MAX), ``max_profile_error`` positive, EMA weights asked for."""
    from dae_gen.posthoc_ema import SIGMA_REL_MAX

    if isinstance(ema_length, bool) or not isinstance(ema_length, (int, float)) or not 0 < ema_length < SIGMA_REL_MAX:
        raise ConfigError(f"ema_length: expected a relative EMA length in (0, {SIGMA_REL_MAX:.4f}) such as 0.1, "
                          f"got {ema_length!r}")
    if (isinstance(max_profile_error, bool) or not isinstance(max_profile_error, (int, float))
            or not max_profile_error > 0):
        raise ConfigError(f"max_profile_error: expected a positive number, got {max_profile_error!r}")
    if not use_ema:
        raise ConfigError(f"ema_length={ema_length} gives post-hoc EMA weights, use_ema=false the raw ones: drop "
                          "one of them")


def posthoc_ema_weights(run_dir: RunDir, ema_length: float, *, upto_step: int, max_profile_error: float = 0.1
                        ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The post-hoc EMA state dict of length ``ema_length`` from ``run_dir``'s snapshots of steps <= ``upto_step``
    (:func:`dae_gen.posthoc_ema.posthoc_weights`, the profile at the newest of them), and its record."""
    from dae_gen.posthoc_ema import load_snapshots, posthoc_weights, profile_error

    folder = run_dir.posthoc_ema_folder
    files = sorted(folder.glob("ema-*.pt")) if folder.is_dir() else []
    if not files:
        raise ConfigError(f"ema_length={ema_length}: {run_dir.path} has no post-hoc EMA snapshots ({folder}/ema-*.pt); "
                          "train with trainer.posthoc_ema.snapshot_every=N to keep them (use_ema=true gives the "
                          "run's own EMA)")
    snapshots = [(f, s) for f, s in zip(files, load_snapshots(files)) if int(s["step"]) <= upto_step]
    if not snapshots:
        raise ConfigError(f"ema_length={ema_length}: {folder} holds no snapshot at or before the checkpoint's step "
                          f"{upto_step}; load a later checkpoint")
    dicts = [s for _, s in snapshots]
    weights = posthoc_weights(dicts, ema_length, max_profile_error=max_profile_error)
    record = {"ema_length": float(ema_length), "step": max(int(s["step"]) for s in dicts),
              "profile_error": profile_error(dicts, ema_length),
              "snapshots": [str(f.relative_to(run_dir.path)) for f, _ in snapshots]}
    return weights, record


__all__ = ["Run", "build_sampler", "load_run", "posthoc_ema_weights", "run_directory", "sampler_config",
           "sampler_names"]
