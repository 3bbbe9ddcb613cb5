"""``dae-gen-sample``: draw samples from a trained run; write a grid, a record of the exact settings, and
optionally an ``.npz``.

Examples::

    dae-gen-sample run=outputs/2026-11-24/12-00-00 n_samples=64
    dae-gen-sample run=outputs/my_run/checkpoints/ckpt_00002000.pt sampler.n_steps_each=20 save_npz=true
    dae-gen-sample run=outputs/my_run sampler=temperature_langevin sampler.n_steps_hot=50   # another sampler
    dae-gen-sample run=outputs/my_run ema_length=0.1   # post-hoc EMA weights (trainer.posthoc_ema snapshots)
    dae-gen-sample run=outputs/my_run task=inpaint inpaint.mask=centre   # image tasks: see dae_gen.cli.tasks
    dae-gen-sample run=outputs/cond_run class_labels=all per_class=8 guidance=2   # one row per class, CFG w = 2
    dae-gen-sample run=outputs/cond_run class_labels=[3] guidance=1 \\
        guide_run=outputs/cond_run/checkpoints/ckpt_00001000.pt          # autoguidance by an earlier checkpoint

Nothing is written until every sample is drawn and finite; the folder (``out``, default
``<run>/samples_cli/<date_time>``) then gets ``samples.png``, ``sample.json`` and, with ``save_npz=true``,
``samples.npz`` holding the same record under the key ``record`` (a JSON string).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from dae_gen.benchmark import sampler_workload
from dae_gen.cli.checks import check_output_folder
from dae_gen.cli.common import (
    CONFIG_PATH,
    check_positive,
    check_threads,
    check_values,
    cli_sampler,
    command_line,
    explicit_output_dir,
    reports_user_errors,
    run_cli,
    sampler_label,
    set_threads,
)
from dae_gen.cli.conditioning import cli_conditioning
from dae_gen.metrics.inception import quantize
from dae_gen.precision import resolve_amp
from dae_gen.run import Run, load_run
from dae_gen.run_folder import RunDir
from dae_gen.samplers.batches import draw_samples
from dae_gen.samplers.nfe import CountingModel

log = logging.getLogger("dae_gen.cli")
RECORD_FILE = "sample.json"
#: Types of the top-level keys of configs/sample.yaml.
SAMPLE_KEYS = {"out": str | None, "n_samples": int, "batch_size": int, "seed": int, "use_ema": bool,
               "save_npz": bool, "device": str, "task": str, "ema_length": float | None, "max_profile_error": float,
               "per_class": int, "guide_run": str | None}


def sampling_record(run: Run, settings: dict[str, Any], *, seed: int, n_samples: int, batch_size: int,
                    nfe_per_image: float | None = None, command: str | None = None) -> dict[str, Any]:
    """What a set of samples came from, enough to draw it again: run, checkpoint, step, weights, sampler, seeds;
    the precision its network calls ran at (``amp``: ``bf16`` or ``none``, after the device's fall-back; the
    sampler's ``amp`` setting is what was asked); the post-hoc EMA the weights are (``ema_length``, snapshots,
    profile error; None: the checkpoint's own); and what they cost (network calls per image)."""
    from dae_gen import __version__

    posthoc = run.posthoc_ema
    return {"run": str(run.path), "checkpoint": str(run.checkpoint), "step": run.step, "use_ema": run.use_ema,
            "ema_length": None if posthoc is None else posthoc["ema_length"], "posthoc_ema": posthoc,
            "sampler": {k: v for k, v in settings.items() if k != "_partial_"}, "seed": seed,
            "n_samples": n_samples, "batch_size": batch_size, "seeding": "batch k uses seed + k",
            "amp": resolve_amp(settings.get("amp", "none"), run.device, warn=False),
            "nfe_per_image": nfe_per_image,
            "data": run.data.as_dict(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
            "dae_gen": __version__}


def sample(cfg: DictConfig, out_dir: str | Path | None = None) -> Path:
    """Draw ``cfg.n_samples`` from ``cfg.run``; write them into ``out_dir`` (default: beside the run); return it."""
    check_values(cfg, SAMPLE_KEYS)
    check_positive(cfg, "n_samples", "batch_size", "per_class")
    check_threads(cfg.get("threads"))
    check_output_folder("out", out_dir if out_dir is not None else cfg.get("out"))
    if cfg.get("task", "sample") != "sample":
        from dae_gen.cli.tasks import check_task

        check_task(cfg)
    run = load_run(str(cfg.run), device=cfg.device, use_ema=cfg.use_ema, ema_length=cfg.get("ema_length"),
                   max_profile_error=cfg.get("max_profile_error", 0.1))
    conditioning = cli_conditioning(cfg, run)
    sampler, settings = cli_sampler(run, cfg.get("sampler"))
    n_samples = int(cfg.n_samples)
    labels = None
    from dae_gen.viz import class_grid_labels, save_class_grid

    if conditioning.classes is not None and cfg.get("task", "sample") == "sample":  # one row of per_class per class
        labels = class_grid_labels(conditioning.classes, int(cfg.get("per_class", 8)))
        n_samples = len(labels)
    model, cond = conditioning.model(run, labels)
    if cfg.get("task", "sample") == "inpaint":
        from dae_gen.samplers.inpainting import inpainting_method

        inpainting_method(sampler.name)  # refuses the samplers that cannot inpaint, before any work
    else:
        sampler.check_model(model)
    set_threads(cfg.get("threads"), device=run.device, workload=sampler_workload(
        sampler, model, batch=min(int(cfg.batch_size), n_samples)))
    if cfg.get("task", "sample") != "sample":  # inpaint | interpolate | trajectory | denoise
        from dae_gen.cli.tasks import run_task

        out_dir = Path(out_dir) if out_dir is not None else RunDir(run.path).output_folder("samples_cli")
        picture = run_task(run, cfg, sampler, out_dir, conditioning=conditioning)
        log.info("task=%s of %s (step %d, %s) written to %s", cfg.task, run.checkpoint, run.step,
                 sampler_label(settings), picture)
        return picture
    counted = CountingModel(model)
    samples = draw_samples(counted, sampler, n_samples, batch_size=cfg.batch_size, seed=cfg.seed,
                           progress=True, require_finite=True, cond=cond)
    record = sampling_record(run, settings, seed=cfg.seed, n_samples=n_samples, batch_size=cfg.batch_size,
                             nfe_per_image=counted.nfe_per_image(n_samples),
                             command=command_line("dae-gen-sample"))
    record["conditioning"] = conditioning.record(labels, per_class=None if labels is None else int(cfg.per_class))
    out_dir = Path(out_dir) if out_dir is not None else RunDir(run.path).output_folder("samples_cli")
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{type(run.model).__name__} · {sampler_label(settings)} · step {run.step}"
    if labels is not None and run.data.kind == "image":
        written = [save_class_grid(samples, out_dir / "samples.png", per_class=int(cfg.per_class),
                                   to_unit=run.to_unit, scale=max(1, 64 // run.data.shape[-1]))]
    else:
        written = [run.save_grid(samples, out_dir / "samples.png", title=title)]
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    written.append(out_dir / RECORD_FILE)
    if cfg.save_npz:
        payload = {"samples": samples.numpy(), "step": np.int64(run.step), "seed": np.int64(cfg.seed),
                   **({} if labels is None else {"class_labels": labels.numpy()}),
                   "nfe_per_image": np.float64(record["nfe_per_image"]),
                   "record": np.array(json.dumps(record, default=str))}
        if run.data.kind == "image":
            payload["images_uint8"] = quantize(run.to_unit(samples)).numpy()
        np.savez_compressed(out_dir / "samples.npz", **payload)
        written.append(out_dir / "samples.npz")
    log.info("%d samples of %s (step %d, %s weights, %s, seed %d) written to %s: %s", n_samples,
             run.checkpoint, run.step, _weights_label(run), sampler_label(settings), cfg.seed, out_dir,
             ", ".join(p.name for p in written))
    return out_dir


def _weights_label(run: Run) -> str:
    """``EMA``, ``raw`` or ``post-hoc EMA 0.1 (profile error 0.002)``."""
    if run.posthoc_ema is not None:
        return (f"post-hoc EMA {run.posthoc_ema['ema_length']:g} (profile at step {run.posthoc_ema['step']}, error "
                f"{run.posthoc_ema['profile_error']:.2g})")
    return "EMA" if run.use_ema else "raw"


@hydra.main(config_path=CONFIG_PATH, config_name="sample", version_base="1.3")
@reports_user_errors
def app(cfg: DictConfig) -> None:
    sample(cfg, explicit_output_dir(cfg))


def main() -> None:
    run_cli(app, "dae-gen-sample")


if __name__ == "__main__":
    main()
