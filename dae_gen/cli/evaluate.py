"""``dae-gen-eval``: how close a run's samples are to its data, written to ``eval.json``.

Image data: FID and KID against cached Inception statistics of a dataset split (``split=test`` by default, held
out from training). 2-D data: sliced Wasserstein distance, MMD and mode weights against fresh exact samples
of the training distribution, next to the same numbers for two exact sets (the floor at this sample size).
Image data also gets improved precision/recall in Inception features, and FID over ``fid_seeds`` sample sets
(mean ± std). ``metric=bpd``: bits/dim of held-out images under the run's probability-flow ODE (``dae_gen.likelihood``).

Examples::

    dae-gen-eval run=outputs/my_run n_samples=10000                    # sample with the run's sampler
    dae-gen-eval run=outputs/my_run/checkpoints/ckpt_00002000.pt sampler.n_steps_each=5 split=train
    dae-gen-eval samples=outputs/my_run/samples_cli/x/samples.npz      # saved samples (their record names the run)
    dae-gen-eval run=outputs/my_run metric=bpd likelihood.n_probes=4     # bits/dim with its standard error
    dae-gen-eval run=outputs/my_run ema_length=0.1                     # post-hoc EMA weights of that length
    dae-gen-eval run=outputs/cond_run class_labels=all guidance=2        # class-conditional samples, CFG w = 2
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dae_gen.benchmark import sampler_workload
from dae_gen.checkpoint import load_checkpoint
from dae_gen.cli.checks import check_output_folder
from dae_gen.cli.common import (
    CONFIG_PATH,
    building,
    check_positive,
    check_threads,
    check_values,
    cli_sampler,
    explicit_output_dir,
    reports_user_errors,
    run_cli,
    set_threads,
)
from dae_gen.cli.conditioning import cli_conditioning
from dae_gen.conditioning import uniform_labels
from dae_gen.data.base import DataInfo
from dae_gen.distributed import resolve_device
from dae_gen.errors import ConfigError, DataError, SamplingDiverged
from dae_gen.metrics.evaluate import dataset_reference, evaluate_samples
from dae_gen.metrics.inception import InceptionFeatures, quantize, resolve_weights_path
from dae_gen.metrics.toy import compare_with_exact
from dae_gen.precision import driver_amp, resolve_amp
from dae_gen.run import load_run
from dae_gen.run_folder import RunDir
from dae_gen.samplers.batches import count_nonfinite, draw_samples
from dae_gen.samplers.nfe import CountingModel

log = logging.getLogger("dae_gen.cli")
#: Types of the top-level keys of configs/eval.yaml.
EVAL_KEYS = {"out": str | None, "n_samples": int, "batch_size": int, "seed": int, "use_ema": bool, "split": str,
             "n_reference": int | None, "kid_subset_size": int, "device": str, "metric": str, "fid_seeds": int,
             "pr_k": int, "ema_length": float | None, "max_profile_error": float, "guide_run": str | None}


def load_samples_file(path: str | Path) -> dict[str, Any]:
    """The arrays of a ``dae-gen-sample save_npz=true`` file (read without unpickling) and its ``record``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"samples={path}: no such file (expected a .npz written by dae-gen-sample save_npz=true)")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except Exception as err:  # not a zip, truncated, pickled objects
        raise DataError(f"samples={path}: not a readable .npz of arrays ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'corrupt'}); expected a file written by "
                        "dae-gen-sample save_npz=true") from err
    if "samples" not in arrays and "images_uint8" not in arrays:
        raise DataError(f"samples={path} holds neither 'samples' nor 'images_uint8' (found {sorted(arrays)}); write "
                        "it with dae-gen-sample save_npz=true")
    record = {}
    if "record" in arrays:
        try:
            record = json.loads(str(arrays["record"]))
        except ValueError as err:
            raise DataError(f"samples={path}: its 'record' is not JSON ({err})") from err
    return {**arrays, "record": record}


def evaluate(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """Draw (or load) samples, compare them with the data, write ``eval.json`` into ``out_dir`` (default: beside
    the run) and return the result."""
    check_values(cfg, EVAL_KEYS)
    check_positive(cfg, "n_samples", "batch_size", "kid_subset_size", "fid_seeds", "pr_k")
    check_threads(cfg.get("threads"))
    if cfg.metric not in ("fid", "bpd"):
        raise ConfigError(f"metric must be fid (sample quality) or bpd (bits/dim by the probability-flow ODE), got "
                          f"{cfg.metric!r}")
    if cfg.metric == "bpd":
        return evaluate_bits_per_dim(cfg, out_dir)
    if cfg.run is None and cfg.samples is None:
        raise ConfigError("give run=<run dir or checkpoint> (to sample) and/or samples=<file.npz> (to evaluate)")
    check_output_folder("out", out_dir if out_dir is not None else cfg.get("out"))
    device = torch.device(resolve_device(cfg.device))
    started = time.perf_counter()
    run, stored, sampler_settings = None, None, None
    if cfg.samples is not None:
        stored = load_samples_file(cfg.samples)
    source = cfg.run if cfg.run is not None else stored["record"].get("checkpoint")  # the run behind the samples
    if cfg.samples is not None and cfg.get("ema_length") is not None:
        raise ConfigError(f"ema_length={cfg.ema_length} chooses the weights to sample with; the samples in "
                          f"{cfg.samples} are drawn already: drop ema_length or samples=")
    if cfg.samples is None:
        run = load_run(str(cfg.run), device=device, use_ema=cfg.use_ema, ema_length=cfg.get("ema_length"),
                       max_profile_error=cfg.get("max_profile_error", 0.1))
        run_config, step, info = run.config, run.step, run.data
    elif source is not None:
        run_config = OmegaConf.create(load_checkpoint(source)["config"])
        step = stored["record"].get("step", int(stored["step"]) if "step" in stored else None)
        info = DataInfo.from_dict(OmegaConf.to_container(run_config.data_info)) if "data_info" in run_config else None
    else:
        run_config, step, info = None, int(stored["step"]) if "step" in stored else None, None
    dataset_cfg = cfg.dataset if cfg.dataset is not None else (run_config.dataset if run_config is not None else None)
    if dataset_cfg is None:
        raise ConfigError("evaluating an .npz without a run needs the reference data: pass dataset={_target_: ...} "
                          "or run=<the run that made the samples>")
    dataset_cfg = OmegaConf.to_container(dataset_cfg, resolve=True)
    if info is None or cfg.dataset is not None:  # learn the kind of data the samples are
        with building("dataset"):
            info = instantiate(dataset_cfg).info
    conditioning_record = None
    if run is not None:
        conditioning = cli_conditioning(cfg, run)
        sampler, sampler_settings = cli_sampler(run, cfg.get("sampler"))
        n_batches = -(-int(cfg.n_samples) // int(cfg.batch_size))  # set j seeds its batches from seed + j·n_batches

        def labels_of(j: int) -> torch.Tensor | None:  # set j's labels: uniform over the classes, seeded as its batches
            if conditioning.classes is None:
                return None
            return uniform_labels(cfg.n_samples, conditioning.classes, seed=cfg.seed + j * n_batches)

        model, cond = conditioning.model(run, labels_of(0))
        sampler.check_model(model)
        set_threads(cfg.get("threads"), device=device, workload=sampler_workload(
            sampler, model, batch=min(int(cfg.batch_size), int(cfg.n_samples))))
        counted = CountingModel(model)
        samples = draw_samples(counted, sampler, cfg.n_samples, batch_size=cfg.batch_size, seed=cfg.seed,
                               progress=True, require_finite=True, cond=cond)
        nfe = counted.nfe_per_image(cfg.n_samples)
        amp = resolve_amp(driver_amp(sampler), device, warn=False)
        conditioning_record = conditioning.record(
            labels_of(0), label_draw="uniform over class_labels, seeded by seed + j·n_batches for sample set j")
        extra_sets = []
        for j in range(1, int(cfg.fid_seeds) if info.kind == "image" else 1):
            model_j, cond_j = conditioning.model(run, labels_of(j))
            extra_sets.append(draw_samples(model_j, sampler, cfg.n_samples, batch_size=cfg.batch_size,
                                           seed=cfg.seed + j * n_batches, progress=True, require_finite=True,
                                           cond=cond_j))
    else:
        set_threads(cfg.get("threads"), device=device)  # nothing to probe: threads=K, else 1 thread
        samples = torch.from_numpy(stored["samples"]) if "samples" in stored else None
        if samples is not None and (bad := count_nonfinite(samples)):
            raise SamplingDiverged(f"{bad} of {len(samples)} samples in {cfg.samples} are not finite (NaN or inf)")
        sampler_settings = stored["record"].get("sampler")
        nfe = stored["record"].get("nfe_per_image")
        amp = stored["record"].get("amp")
        extra_sets = []
    if info.kind == "points":
        if samples is None:
            raise DataError(f"samples={cfg.samples} holds no 'samples' array for the 2-D data {info.name}")
        if tuple(samples.shape[1:]) != tuple(info.shape):
            raise DataError(f"samples={cfg.samples} holds samples of shape {tuple(samples.shape[1:])}, but the data "
                            f"{info.name} are points of shape {tuple(info.shape)}; evaluate the samples of this run")
        with building("dataset"):
            data = instantiate(dataset_cfg)
        metrics = {"metric": "toy", **compare_with_exact(samples, data, n_reference=cfg.n_reference, seed=cfg.seed)}
        reference = f"{metrics['n_reference']} exact samples of {info.name}"
    else:
        metrics, reference = image_metrics(cfg, dataset_cfg, samples, stored, device, extra_sets=extra_sets)
    result = {**metrics, "step": step, "run": None if source is None else str(source), "samples": cfg.samples,
              "sampler": sampler_settings, "amp": amp, "nfe_per_image": nfe, "seed": cfg.seed,
              "use_ema": cfg.use_ema if run is not None else None,
              "ema_length": None if run is None or run.posthoc_ema is None else run.posthoc_ema["ema_length"],
              "posthoc_ema": None if run is None else run.posthoc_ema, "conditioning": conditioning_record,
              "seconds": time.perf_counter() - started}
    if out_dir is None:
        beside = RunDir.of(str(source)) if source is not None else RunDir(Path(str(cfg.samples)).parent)
        out_dir = beside.output_folder("eval")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    log.info("%s -> %s", summary(result, reference), out_dir / "eval.json")
    return result


def image_metrics(cfg: DictConfig, dataset_cfg: dict, samples: torch.Tensor | None, stored: dict | None,
                  device: torch.device, extra_sets: list[torch.Tensor] = ()) -> tuple[dict, str]:
    """FID, KID and precision/recall of image samples against the Inception features of the reference split; with
    ``extra_sets`` (more sample sets, other seeds) also ``fid_mean``/``fid_std`` over all the sets."""
    try:
        resolve_weights_path(cfg.weights_path)
    except FileNotFoundError as err:
        raise ConfigError(f"weights_path: {err}") from err
    with building("dataset"):
        try:
            data = instantiate({**dataset_cfg, "split": cfg.split})
        except TypeError as err:
            raise ConfigError(f"split={cfg.split}: {dataset_cfg['_target_']} takes no split ({err})") from err
    if samples is not None:
        images = quantize(data.to_unit(samples))
    elif "images_uint8" in stored:
        images = torch.from_numpy(stored["images_uint8"])
    else:
        raise DataError(f"samples={cfg.samples} holds no 'images_uint8' array; write it with dae-gen-sample "
                        "save_npz=true from an image model")
    if tuple(images.shape[1:]) != tuple(data.shape):
        raise DataError(f"samples have shape {tuple(images.shape[1:])} but the reference images {tuple(data.shape)}")
    extractor = InceptionFeatures(cfg.weights_path, device=device, progress=True)
    reference = dataset_reference(data, split=cfg.split, n_reference=cfg.n_reference, seed=cfg.seed,
                                  cache_dir=cfg.cache_dir, extractor=extractor)
    metrics = evaluate_samples(images, reference=reference, extractor=extractor,
                               kid_subset_size=min(cfg.kid_subset_size, len(images), reference.n), seed=cfg.seed,
                               precision_recall_k=cfg.pr_k)
    fids = [metrics["fid"]] + [evaluate_samples(quantize(data.to_unit(x)), reference=reference, extractor=extractor,
                                                kid_subset_size=2, kid_subsets=1)["fid"] for x in extra_sets]
    metrics.update(fid_per_seed=fids, fid_mean=float(np.mean(fids)),
                   fid_std=float(np.std(fids, ddof=1)) if len(fids) > 1 else None)
    return ({"metric": "fid", **metrics, "n_reference": reference.n, "reference": reference.key, "split": cfg.split},
            f"{reference.n} images of {data.name}")


def evaluate_bits_per_dim(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """``metric=bpd``: bits/dim of ``likelihood.n_examples`` images of ``split`` (a seeded subset) under the run's
    probability-flow ODE, uniformly dequantised (``dae_gen.likelihood``); writes ``eval.json`` beside the run."""
    from dae_gen.likelihood import likelihood_sigma_range, model_bits_per_dim

    settings = OmegaConf.to_container(cfg.likelihood, resolve=True)
    if cfg.run is None or cfg.samples is not None:
        raise ConfigError("metric=bpd scores held-out data under a model: give run=<run dir or checkpoint> and no "
                          "samples=")
    device = torch.device(resolve_device(cfg.device))
    started = time.perf_counter()
    run = load_run(str(cfg.run), device=device, use_ema=cfg.use_ema)
    if run.data.kind != "image":
        raise ConfigError(f"metric=bpd needs 8-bit image data, but {run.data.name} is {run.data.kind!r} data; use "
                          "dae_gen.likelihood.model_log_likelihood for log-likelihoods of points")
    n_examples = settings.pop("n_examples")
    if n_examples is not None and int(n_examples) < 1:
        raise ConfigError(f"likelihood.n_examples must be positive or null (all of split), got {n_examples}")
    try:
        sigma_min, sigma_max = likelihood_sigma_range(run.model, settings.pop("sigma_min"), settings.pop("sigma_max"))
    except ValueError as err:
        raise ConfigError(f"likelihood.sigma_min/sigma_max: {err}") from err
    overrides = {key: value for key, value in (("split", cfg.split), ("dequantize", False))
                 if key in run.config.dataset}
    with building("dataset"):
        data = instantiate(run.config.dataset, **overrides)
    n = len(data) if n_examples is None else min(int(n_examples), len(data))
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:n].sort().values
    images = torch.as_tensor(np.asarray(data.images[chosen.numpy()] if isinstance(data.images, np.ndarray)
                                        else data.images[chosen.to(data.images.device)].cpu()))
    set_threads(cfg.get("threads"), device=device)
    try:
        bpd = model_bits_per_dim(run.model, images, data_range=run.data.data_range, seed=cfg.seed,
                                 sigma_min=sigma_min, sigma_max=sigma_max, batch_size=cfg.batch_size, progress=True,
                                 **settings)
    except ValueError as err:
        raise ConfigError(f"likelihood: {err}") from err
    result = {"metric": "bpd", **bpd.as_dict(), "sigma_min": sigma_min, "sigma_max": sigma_max,
              "likelihood": OmegaConf.to_container(cfg.likelihood, resolve=True), "split": cfg.split,
              "examples": f"randperm(seed={cfg.seed})[:{n}] of {data.name}", "step": run.step, "run": str(cfg.run),
              "seed": cfg.seed, "use_ema": cfg.use_ema, "seconds": time.perf_counter() - started}
    out_dir = Path(out_dir) if out_dir is not None else RunDir.of(str(cfg.run)).output_folder("eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    log.info("%.4f ± %.4f bits/dim (%d images of %s, NFE %.0f per solve; %s) -> %s", bpd.bits_per_dim, bpd.stderr,
             n, data.name, bpd.nfe, bpd.convention, out_dir / "eval.json")
    return result


def summary(result: dict, reference: str) -> str:
    if result["metric"] == "fid":
        fid = f"FID {result['fid']:.3f}" if result["fid_std"] is None else \
            f"FID {result['fid_mean']:.3f} ± {result['fid_std']:.3f} over {len(result['fid_per_seed'])} seeds"
        return (f"{fid}, KID {result['kid_mean']:.5f} ± {result['kid_std']:.5f}, precision {result['precision']:.3f}, "
                f"recall {result['recall']:.3f} ({result['n']} samples vs {reference}; compare FIDs at equal N only)")
    text = (f"sliced W2 {result['sliced_wasserstein']:.4f} (exact vs exact: "
            f"{result['baseline']['sliced_wasserstein']:.4f}), MMD² {result['mmd']:.5f} (exact vs exact: "
            f"{result['baseline']['mmd']:.5f})")
    if "mode_weights" in result:
        text += f", mode weights {result['mode_weights']}, outliers {result['outliers']:.3f}"
    return f"{text} ({result['n']} samples vs {reference})"


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
@reports_user_errors
def app(cfg: DictConfig) -> None:
    evaluate(cfg, explicit_output_dir(cfg))


def main() -> None:
    run_cli(app, "dae-gen-eval")


if __name__ == "__main__":
    main()
