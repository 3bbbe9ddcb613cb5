"""What the Hydra entry points share: where the configs live, and the sampler a command line asks for."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from dae_gen.run import Run

#: Hydra's config path: the configs installed with the package (``configs/`` in the source tree).
CONFIG_PATH = "pkg://dae_gen.configs"


def cli_sampler(run: Run, sampler_cfg: DictConfig | None) -> tuple[Any, dict]:
    """The sampler of a ``dae-gen-sample`` / ``dae-gen-eval`` command line and its exact settings.

    A full sampler preset (``sampler=NAME``, has ``_target_``) is used as given; otherwise the run's own sampler
    with the command line's settings (``sampler.KEY=VALUE``) put over it.
    """
    settings = OmegaConf.to_container(sampler_cfg, resolve=True) if sampler_cfg is not None else {}
    if "_target_" in settings:
        return run.sampler(settings)
    return run.sampler(None, **settings)
