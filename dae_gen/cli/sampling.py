"""The sampler a ``dae-gen-sample`` / ``dae-gen-eval`` command line asks for, and its short name for titles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dae_gen.run import Run


def cli_sampler(run: Run, sampler_cfg: DictConfig | None) -> tuple[Any, dict]:
    """The sampler of a ``dae-gen-sample`` / ``dae-gen-eval`` command line and its exact settings.

    A full sampler preset (``sampler=NAME``, has ``_target_``) is used as given; otherwise the run's own sampler
    with the command line's settings (``sampler.KEY=VALUE``) put over it.
    """
    settings = OmegaConf.to_container(sampler_cfg, resolve=True) if sampler_cfg is not None else {}
    if "_target_" in settings:
        return run.sampler(settings)
    return run.sampler(None, **settings)


def sampler_label(settings: Mapping[str, Any]) -> str:
    """A sampler's short name for titles: ``...langevin.sample_annealed_langevin`` → ``annealed_langevin``."""
    return str(settings.get("_target_", "sampler")).rsplit(".", 1)[-1].removeprefix("sample_")


__all__ = ["cli_sampler", "sampler_label"]
