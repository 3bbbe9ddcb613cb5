"""``dae-gen-sample``: draw samples from a trained run and write a grid (and optionally an ``.npz``).

Examples::

    dae-gen-sample run=outputs/2026-11-24/12-00-00 n_samples=64
    dae-gen-sample run=outputs/my_run ++sampler.n_steps_each=20 save_npz=true
    dae-gen-sample run=outputs/my_run sampler=temperature_langevin      # another sampler preset
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dae_gen.benchmark import sampler_workload
from dae_gen.cli.common import CONFIG_PATH, cli_sampler
from dae_gen.metrics.inception import quantize
from dae_gen.run import load_run
from dae_gen.samplers.batches import draw_samples
from dae_gen.threads import configure_threads

log = logging.getLogger(__name__)


def sample(cfg: DictConfig, out_dir: str | Path) -> Path:
    run = load_run(cfg.run, device=cfg.device, use_ema=cfg.use_ema)
    sampler, _ = cli_sampler(run, cfg.get("sampler"))
    threads = configure_threads(cfg.get("threads"), device=run.device, workload=sampler_workload(
        sampler, run.model, batch=min(int(cfg.batch_size), int(cfg.n_samples))))
    log.info("torch threads: %s", threads)
    samples = draw_samples(run.model, sampler, cfg.n_samples, batch_size=cfg.batch_size, seed=cfg.seed,
                           progress=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = run.save_grid(samples, out_dir / "samples.png")
    if cfg.save_npz:
        payload = {"samples": samples.numpy(), "step": np.int64(run.step)}
        if run.data.kind == "image":
            payload["images_uint8"] = quantize(run.to_unit(samples)).numpy()
        np.savez_compressed(out_dir / "samples.npz", **payload)
    return grid


@hydra.main(config_path=CONFIG_PATH, config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sample(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
