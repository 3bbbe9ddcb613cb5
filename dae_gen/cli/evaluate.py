"""``dae-gen-eval``: FID and KID of a trained run, or of saved samples, written to ``eval.json``.

Examples::

    dae-gen-eval run=outputs/my_run n_samples=10000                    # sample with the run's sampler
    dae-gen-eval run=outputs/my_run ++sampler.n_steps_each=5 split=train
    dae-gen-eval samples=outputs/my_run/samples_cli/x/samples.npz run=outputs/my_run
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dae_gen.benchmark import sampler_workload
from dae_gen.checkpoint import load_checkpoint
from dae_gen.cli.common import CONFIG_PATH, cli_sampler
from dae_gen.distributed import resolve_device
from dae_gen.metrics.evaluate import dataset_reference, evaluate_samples
from dae_gen.metrics.inception import InceptionFeatures, quantize
from dae_gen.run import load_run
from dae_gen.samplers.batches import draw_samples
from dae_gen.threads import configure_threads

log = logging.getLogger(__name__)


def _load_npz_images(path: str | Path) -> tuple[torch.Tensor, int | None]:
    """uint8 images ``(N, C, H, W)`` and the checkpoint step from a ``dae-gen-sample save_npz=true`` file."""
    with np.load(path, allow_pickle=False) as stored:
        if "images_uint8" not in stored:
            raise ValueError(f"{path} holds no 'images_uint8' array (found {sorted(stored.files)}); write it with "
                             "dae-gen-sample save_npz=true from an image model")
        return torch.from_numpy(stored["images_uint8"]), (int(stored["step"]) if "step" in stored else None)


def evaluate(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Draw (or load) samples, compare them with the reference split, write and return the metrics."""
    if cfg.run is None and cfg.samples is None:
        raise ValueError("give run=<run dir or checkpoint> (to sample) and/or samples=<file.npz> (to evaluate)")
    device = torch.device(resolve_device(cfg.device))
    started = time.perf_counter()
    run, run_cfg, step, sampler_cfg = None, None, None, None
    if cfg.samples is None:
        run = load_run(cfg.run, device=device, use_ema=cfg.use_ema)
        run_cfg, step = run.config, run.step
    elif cfg.run is not None:  # saved samples: the run only names the reference data
        run_cfg = OmegaConf.create(load_checkpoint(cfg.run)["config"])
    dataset_cfg = cfg.dataset if cfg.dataset is not None else (run_cfg.dataset if run_cfg is not None else None)
    if dataset_cfg is None:
        raise ValueError("evaluating an .npz without a run needs the reference data: pass dataset={_target_: ...} "
                         "or run=<the run that made the samples>")
    try:
        data = instantiate({**OmegaConf.to_container(dataset_cfg, resolve=True), "split": cfg.split})
    except Exception as err:  # point data takes no split
        if "split" in str(err):
            raise ValueError(f"FID needs an image dataset with splits; {dataset_cfg._target_} has none "
                             "(use dae_gen.metrics.toy for 2-D data)") from err
        raise
    if data.kind != "image":
        raise ValueError(f"FID needs image data; {getattr(data, 'name', 'this dataset')} is {data.kind!r} "
                         "(use dae_gen.metrics.toy for 2-D data)")
    if cfg.samples is not None:
        configure_threads(cfg.get("threads"), device=device)  # nothing to probe: threads=K, else 1 thread
        images, step = _load_npz_images(cfg.samples)
    else:
        sampler, sampler_cfg = cli_sampler(run, cfg.get("sampler"))
        threads = configure_threads(cfg.get("threads"), device=device, workload=sampler_workload(
            sampler, run.model, batch=min(int(cfg.batch_size), int(cfg.n_samples))))
        log.info("torch threads: %s", threads)
        samples = draw_samples(run.model, sampler, cfg.n_samples, batch_size=cfg.batch_size, seed=cfg.seed,
                               progress=True)
        images = quantize(data.to_unit(samples))
    if tuple(images.shape[1:]) != tuple(data.shape):
        raise ValueError(f"samples have shape {tuple(images.shape[1:])} but the reference images {tuple(data.shape)}")
    extractor = InceptionFeatures(cfg.weights_path, device=device)
    reference = dataset_reference(data, split=cfg.split, n_reference=cfg.n_reference, seed=cfg.seed,
                                  cache_dir=cfg.cache_dir, extractor=extractor)
    metrics = evaluate_samples(images, reference=reference, extractor=extractor,
                               kid_subset_size=min(cfg.kid_subset_size, len(images), reference.n), seed=cfg.seed)
    result = {**metrics, "n_reference": reference.n, "reference": reference.key, "step": step, "run": cfg.run,
              "samples": cfg.samples, "sampler": sampler_cfg, "seconds": time.perf_counter() - started}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=str))
    return result


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = evaluate(cfg, HydraConfig.get().runtime.output_dir)
    print(json.dumps({k: result[k] for k in ("fid", "kid_mean", "kid_std", "n", "step")}))


if __name__ == "__main__":
    main()
