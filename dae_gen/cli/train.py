"""``dae-gen-train``: train any method on any dataset; the run directory gets config, checkpoints, metrics, grids.

Examples::

    dae-gen-train                                   # NCSN score net on the 8×8 digits (CPU, minutes)
    dae-gen-train experiment=mdsm_toy               # a preset
    dae-gen-train hydra.run.dir=outputs/my_run      # same directory again: resumes from its newest checkpoint
    torchrun --standalone --nproc_per_node=2 -m dae_gen.cli.train trainer.batch_size=64
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dae_gen import distributed as D
from dae_gen.benchmark import training_workload
from dae_gen.cli.common import CONFIG_PATH
from dae_gen.threads import configure_threads
from dae_gen.viz import reference_points, sample_saver

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Build data, model, sampler and trainer from a composed config and train in ``run_dir``."""
    device = D.init_distributed(cfg.device)
    data = instantiate(cfg.dataset)
    torch.manual_seed(cfg.seed)  # the initial weights (the trainer also broadcasts rank 0's to every rank)
    model = instantiate(cfg.model, data_shape=list(data.shape))
    sampler = instantiate(cfg.sampler)
    sampler(model, 0)  # validates the sampler's settings now rather than at the first sample grid
    threads = configure_threads(cfg.get("threads"), device=device, workload=training_workload(
        model, batch_size=cfg.trainer.batch_size, device=device))
    log.info("torch threads: %s", threads)
    evaluator = instantiate(cfg.metrics)(data=data, sampler=sampler) if cfg.get("metrics") else None
    config = OmegaConf.to_container(cfg, resolve=True)
    config["data_shape"] = list(data.shape)
    config["data_info"] = data.info.as_dict()  # so that sampling never rebuilds the dataset
    run_dir = Path(run_dir)
    if D.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    make_trainer = instantiate(cfg.trainer)  # a partial; the objects below must not be re-instantiated
    trainer = make_trainer(objective=model, data=data, run_dir=run_dir, sampler=sampler,
                           save_samples=sample_saver(data.info, reference=reference_points(data)), evaluator=evaluator, seed=cfg.seed, device=device,
                           run_config=config)
    return trainer.fit()


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        result = train(cfg, HydraConfig.get().runtime.output_dir)
    finally:
        D.shutdown()
    losses = [value for key, value in result.items() if key.startswith("loss/")]
    return losses[-1] if losses else 0.0  # the value a --multirun sweeper optimises: the last phase's loss


if __name__ == "__main__":
    main()
