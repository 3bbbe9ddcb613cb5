"""Trained runs as Python objects: load a run directory or a checkpoint file, draw samples with any sampler,
save grids. No Hydra app is needed; this is what ``dae-gen-sample`` and ``dae-gen-eval`` call too::

    from dae_gen import load_run
    run = load_run("outputs/my_run")                       # newest checkpoint, EMA weights
    x = run.sample(64, seed=0)                              # the run's own sampler
    y = run.sample(64, sampler="temperature_langevin", n_steps_hot=50)   # any sampler config, with overrides
    z = run.sample(30, labels=[0] * 10 + [1] * 10 + [2] * 10, guidance=2.0)  # class-conditional run: CFG, w = 2
    run.save_grid(x, "grid.png")

Samplers are named by their config file in ``configs/sampler/`` (installed as ``dae_gen.configs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
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
from dae_gen.precision import check_amp, with_precision
from dae_gen.run_folder import RunDir, run_directory
from dae_gen.samplers.batches import draw_samples
from dae_gen.score import Callback, Cond
from dae_gen.settings import check_keywords

#: Arguments every sampler driver takes that are not settings.
_DRIVER_ARGUMENTS = ("model", "n", "generator", "callback")


# -- samplers by name --------------------------------------------------------------------------------------
def _sampler_folder():
    return resources.files("dae_gen.configs").joinpath("sampler")


def sampler_names() -> list[str]:
    """The sampler configs that ship with dae_gen (``configs/sampler/*.yaml``)."""
    return sorted(p.name.removesuffix(".yaml") for p in _sampler_folder().iterdir()
                  if p.name.endswith(".yaml") and p.name != "from_run.yaml")


def sampler_config(name: str) -> dict[str, Any]:
    """The settings of the sampler config ``name`` as a plain dict (with ``_target_`` and ``_partial_``)."""
    path = _sampler_folder().joinpath(f"{name}.yaml")
    if not path.is_file() or name == "from_run":
        raise ConfigError(f"no sampler named {name!r}; choose one of {sampler_names()}")
    with path.open(encoding="utf-8") as handle:
        return OmegaConf.to_container(OmegaConf.load(handle), resolve=True)


def build_sampler(settings: Mapping[str, Any], **overrides: Any) -> tuple[Callable[..., Tensor], dict[str, Any]]:
    """A sampler driver ``(model, n, *, generator, callback) -> Tensor`` and the exact settings it uses.

    settings:   a sampler config (``_target_`` naming a driver function, and its keyword arguments).
    overrides:  keyword arguments replacing or adding settings; each must be an argument of the driver, of its
                annotated type (a ConfigError names the first that is not).

    One setting every sampler takes besides its own: ``amp`` (``"none"`` or ``"bf16"``), the precision of the
    model's network calls during the chain (``dae_gen.precision``: bf16 autocast where the device computes in bf16,
    else fp32 with a warning; the chain's state stays fp32).
    """
    from hydra.utils import get_method, instantiate

    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    settings = {**settings, **overrides, "_partial_": True}
    target = settings.get("_target_")
    if not target:
        raise ConfigError(f"a sampler config needs a _target_ naming its driver function, got {settings}")
    try:
        driver = get_method(target)
    except Exception as err:
        raise ConfigError(f"sampler _target_ {target!r} cannot be imported ({err})") from err
    driver_settings = {k: v for k, v in settings.items() if k != "amp"}
    check_keywords(driver, driver_settings, where="sampler", noun="setting", exclude=_DRIVER_ARGUMENTS)
    amp = check_amp(settings.get("amp", "none"), where="sampler.amp")
    return with_precision(instantiate(driver_settings), amp), settings


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
    """

    path: Path
    checkpoint: Path
    config: DictConfig
    model: Objective
    step: int
    data: DataInfo
    use_ema: bool = True
    _reference: Tensor | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        from dae_gen.score import protocol_device

        return protocol_device(self.model)

    def checkpoints(self) -> list[Path]:
        """The run's step checkpoints, oldest first, then ``best.pt`` if there is one."""
        return RunDir(self.path).all_checkpoints()

    def sampler(self, sampler: str | Mapping[str, Any] | None = None, **overrides: Any
                ) -> tuple[Callable[..., Tensor], dict[str, Any]]:
        """A sampler driver and its exact settings: the run's own (``None``), a config by name, or a settings dict;
        ``overrides`` replace single settings."""
        if sampler is None:
            settings = self.config.sampler
        elif isinstance(sampler, str):
            settings = sampler_config(sampler)
        else:
            settings = sampler
        return build_sampler(settings, **overrides)

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
            from hydra.utils import instantiate

            from dae_gen.viz import reference_points

            self._reference = reference_points(instantiate(self.config.dataset), n)  # a toy law: no files to read
        return self._reference

    def data_examples(self, n: int, *, split: str = "test", seed: int = 0) -> Tensor:
        """``n`` real examples ``(n, *data_shape)`` in the model's range on the CPU (inpainting, denoising pictures).

        Images: a seeded choice from ``split`` when the dataset's config has a ``split`` (the dataset is rebuilt from
        the run's config without dequantisation; held out only if the run trained on another split), else from the
        training data. 2-D data: ``n`` fresh exact samples.
        """
        from hydra.utils import instantiate

        config = self.config.dataset
        overrides = {key: value for key, value in (("split", split), ("dequantize", False)) if key in config}
        dataset = instantiate(config, **overrides)
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


def load_run(path: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True) -> Run:
    """Load a run directory (its newest checkpoint) or a checkpoint file into a :class:`Run`.

    device:   where the model goes (``"cpu"``, ``"cuda"``, ``"auto"``).
    use_ema:  the EMA weights (True, what sample grids show) or the raw training weights.
    """
    from hydra.utils import instantiate

    from dae_gen.distributed import resolve_device

    path = Path(path)
    run_dir = RunDir.of(path)
    state, checkpoint = run_dir.load(None if path.is_dir() else path, map_location="cpu")
    config = OmegaConf.create(state["config"])
    if "model" not in config or "data_shape" not in config:
        raise CheckpointError(f"the checkpoint at {path} holds no model config; was it written by dae-gen-train?")
    if "data_info" in config:
        data = DataInfo.from_dict(OmegaConf.to_container(config.data_info))
    else:  # written before checkpoints described their data: rebuild the dataset once to learn it
        data = instantiate(config.dataset).info
    model = instantiate(config.model, data_shape=list(config.data_shape))
    weights = "ema" if use_ema else "model"
    try:
        model.load_state_dict(state[weights])
    except RuntimeError as err:
        raise CheckpointError(f"the {weights} weights in {checkpoint} do not fit the model its config describes: "
                              f"{str(err).splitlines()[0]}") from err
    model = model.to(torch.device(resolve_device(str(device)))).eval().requires_grad_(False)
    return Run(path=run_dir.path, checkpoint=checkpoint, config=config, model=model, step=int(state["step"]), data=data,
               use_ema=use_ema)


__all__ = ["Run", "build_sampler", "load_run", "run_directory", "sampler_config", "sampler_names"]
