"""bf16 autocast against fp32 on the published networks: losses, parameter gradients and scores on a fixed batch.

    python experiments/bench/precision.py                          # every case below -> records/precision.json
    python experiments/bench/precision.py --only mdsm_fmnist ncsn_digits
    python experiments/bench/precision.py --only ncsn_digits --run outputs/my_run   # trained weights of a run
    python experiments/bench/precision.py --table                  # the README's table from the record
    python experiments/bench/precision.py --heldout RUN_FP32 RUN_BF16  # held-out loss (fp32) of two trained runs

For each case the preset's objective is built exactly as ``dae-gen-train`` builds it (same config), with the
weights of ``--run`` or fresh seeded ones, and one fixed batch of its data (fake images in the data's range where
the data cannot be had offline). Training: every phase's per-example losses and the parameter gradients of their
mean, once in fp32 and once under the trainer's bf16 autocast, on the same noise draws: the relative difference
of the mean loss and the cosine between the two gradient vectors (criterion: within 1% and >= 0.99). Sampling: the
score through ``AutocastModel`` (what ``sampler.amp=bf16`` runs) against fp32 at the sampler's noise levels, on
noised data: its cosine over the batch, for the median and the worst example, and the largest change of the
denoised estimate ``x + sigma^2 score`` (what the last step of every sampler returns) in data units; the criterion
is cosine >= 0.999 over the batch and for the median example (single examples with a much smaller score than the
rest have a lower cosine: the error is of the same absolute size).
Nothing here is timed: the numbers are the same on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from dae_gen.cli.bench import bench_data
from dae_gen.precision import AutocastModel, autocast, bf16_support, native_cpu_bf16
from dae_gen.run import load_run

HERE = Path(__file__).resolve().parent
RECORD = HERE / "records" / "precision.json"

#: name: (dae-gen-train overrides, sampler noise levels to check: "sigma0" / "levels" / "heun").
CASES = {
    "mdsm_fmnist": (["experiment=mdsm_fmnist"], "sigma0"),
    "mdsm_digits": (["experiment=mdsm_digits"], "sigma0"),
    "ddegen_celeba32": (["experiment=ddegen_celeba32"], "sigma0"),
    "dde_digits": (["experiment=dde_digits"], "sigma0"),
    "ncsn_digits": (["experiment=ncsn_digits"], "levels"),  # the default composition (no preset)
    "edm_fmnist_cpu": (["experiment=edm_fmnist_cpu"], "heun"),
    "ncsn_fmnist_cpu": (["experiment=ncsn_fmnist_cpu"], "levels"),
    "dae_fmnist": (["experiment=dae_fmnist"], "levels"),
}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def phase_numbers(model, phase: str, x: torch.Tensor, *, seed: int) -> dict:
    """Mean loss and parameter gradient of ``phase`` in fp32 and under bf16 autocast, on the same noise."""
    params = model.phase_parameters(phase)
    out = {}
    for amp in ("none", "bf16"):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        with autocast(amp, x.device):
            losses = model.losses(phase, x)
        loss = losses.float().mean()
        loss.backward()
        grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        out[amp] = (float(loss), grads.clone(), str(losses.dtype))
    model.zero_grad(set_to_none=True)
    (l32, g32, _), (l16, g16, dtype16) = out["none"], out["bf16"]
    return {"loss_fp32": l32, "loss_bf16": l16, "loss_rel_diff": abs(l16 - l32) / abs(l32),
            "grad_cosine": cosine(g16, g32), "grad_norm_ratio": float(g16.norm() / g32.norm()),
            "per_example_loss_dtype_under_bf16": dtype16}


def check_sigmas(model, kind: str, sampler_cfg) -> list[float]:
    if kind == "sigma0":
        return [float(model.reference_sigma)]
    if kind == "heun":
        from dae_gen.noise import karras_sigmas

        levels = karras_sigmas(int(sampler_cfg.n_steps), float(model.sigmas[-1]), float(model.sigmas[0]), 7.0)
        return [float(s) for s in levels[:-1]]
    return [float(s) for s in model.sigmas]


def score_numbers(model, x: torch.Tensor, sigmas: list[float], *, seed: int) -> dict:
    """Per σ: the bf16 score's cosine with fp32 over the whole batch, for the median example and the worst one, and
    the largest change of the denoised estimate ``x + σ²·score`` in data units (pixel range 1 or 2)."""
    fast = AutocastModel(model)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    with torch.inference_mode():
        for sigma in sigmas:
            noisy = x + sigma * torch.randn(x.shape, generator=generator)
            s = torch.full((x.shape[0],), sigma)
            ref, ours = model.score(noisy, s), fast.score(noisy, s)
            assert ours.dtype == ref.dtype
            cos = torch.nn.functional.cosine_similarity(ours.flatten(1).double(), ref.flatten(1).double(), dim=1)
            rows.append({"sigma": sigma, "cos_batch": cosine(ours, ref), "cos_median": float(cos.median()),
                         "cos_min": float(cos.min()),
                         "denoised_max_abs_diff": float((sigma**2 * (ours - ref)).abs().max())})
    return {"per_sigma": rows, **{key: min(r[key] for r in rows) for key in ("cos_batch", "cos_median", "cos_min")},
            "denoised_max_abs_diff": max(r["denoised_max_abs_diff"] for r in rows)}


def run_case(name: str, overrides: list[str], kind: str, *, run: str | None, batch: int | None,
             sample_batch: int, seed: int) -> dict:
    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        data, data_record = bench_data(cfg.dataset, mode="auto", scratch=Path(scratch))
        if run is not None:
            model = load_run(run, use_ema=False).model.requires_grad_(True).train()
            weights = f"trained ({run})"
        else:
            torch.manual_seed(cfg.seed)
            model = instantiate(cfg.model, data_shape=list(data.shape))
            weights = f"fresh (seed {cfg.seed})"
        batch = int(batch or cfg.trainer.batch_size)
        x = data.batch(batch, generator=torch.Generator().manual_seed(seed))
        record = {"case": name, "overrides": overrides, "weights": weights, "data": data_record["source"],
                  "data_shape": list(data.shape), "train_batch": batch,
                  "parameters": sum(p.numel() for p in model.parameters()), "phases": {}}
        for phase, _ in model.phases:
            record["phases"][phase] = phase_numbers(model, phase, x, seed=seed)
            print(f"{name} {phase}: {json.dumps(record['phases'][phase])}", flush=True)
        model.eval()
        sigmas = check_sigmas(model, kind, cfg.sampler)
        record["score"] = score_numbers(model, x[:sample_batch], sigmas, seed=seed)
        record["score"]["sample_batch"] = min(sample_batch, batch)
        print(f"{name} score: {json.dumps({k: v for k, v in record['score'].items() if k != 'per_sigma'})}",
              flush=True)
    return record


def score_cells(score: dict) -> tuple[str, str]:
    """The score columns of one case. Records written before the batch cosine and the absolute change of the
    denoised estimate were added hold, per σ, the per-example cosine (median, min) and the median example's relative
    error ``‖D16 − D32‖ / ‖D32‖``: those are shown as recorded, never converted ("–" where not measured)."""
    if "cos_batch" in score:
        return (f"{score['cos_batch']:.5f} / {score['cos_median']:.5f} / {score['cos_min']:.5f}",
                f"{score['denoised_max_abs_diff']:.1e} (max abs.)")
    cos_median = min(row["cos_median"] for row in score["per_sigma"])
    return (f"– / {cos_median:.5f} / {score['cos_min']:.5f}",
            f"{score['denoised_rel_err_max']:.1e} (relative, median example)")


def table(records: dict) -> str:
    rows = ["| network (preset) | weights | phase | loss fp32 → bf16 (rel. diff) | param-grad cosine | score cosine: "
            "batch / median example / worst example (min over σ) | denoised estimate `x + σ²s`: change, max over σ |",
            "|---|---|---|---|---|---|---|"]
    for name, rec in records["cases"].items():
        cosines, denoised = score_cells(rec["score"])
        for i, (phase, p) in enumerate(rec["phases"].items()):
            first = i == 0
            cells = [f"`{name}`" if first else "", rec["weights"].split(" (")[0] if first else "", phase,
                     f"{p['loss_fp32']:.5g} → {p['loss_bf16']:.5g} ({100 * p['loss_rel_diff']:.3f}%)",
                     f"{p['grad_cosine']:.5f}", cosines if first else "", denoised if first else ""]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def heldout_loss(run: str, *, n_batches: int, batch: int, seed: int) -> dict:
    """The run's training loss on its data's test split (fixed batches and noise), in fp32, with its raw and EMA
    weights: how well a model trained in one precision fits held-out data, whatever precision it was trained in."""
    out = {}
    for use_ema in (False, True):
        loaded = load_run(run, use_ema=use_ema)
        config = dict(loaded.config.dataset)
        if "split" in config:
            config["split"] = "test"
        data = instantiate(config)
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        with torch.no_grad():
            losses = [loaded.model.losses(phase, data.batch(batch, generator=generator)).mean().item()
                      for _ in range(n_batches) for phase, _ in loaded.model.phases]
        out["ema" if use_ema else "raw"] = sum(losses) / len(losses)
    return {"run": run, "step": loaded.step, "train_amp": str(loaded.config.trainer.amp), "heldout_loss": out,
            "n_examples": n_batches * batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help=f"cases among {list(CASES)}")
    parser.add_argument("--run", default=None, help="take the weights of this run (directory or checkpoint)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's)")
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RECORD)
    parser.add_argument("--table", action="store_true", help="print the README table from --out")
    parser.add_argument("--heldout", nargs="*", default=None,
                        help="runs: their loss on held-out data in fp32 (e.g. one trained in fp32, one in bf16)")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    if args.heldout:
        for run in args.heldout:
            print(json.dumps(heldout_loss(run, n_batches=20, batch=128, seed=args.seed)), flush=True)
        return
    supported, why = bf16_support("cpu")
    if not supported:
        sys.exit(f"bf16 autocast does not run natively here ({why}): nothing to compare")
    torch.set_num_threads(1)
    records = json.loads(args.out.read_text()) if args.out.is_file() else {"cases": {}}
    records.update({"torch": torch.__version__, "cpu_bf16": native_cpu_bf16(), "command": " ".join(sys.argv)})
    for name in args.only or CASES:
        overrides, kind = CASES[name]
        key = name if args.run is None else f"{name} (trained)"
        records["cases"][key] = run_case(name, overrides, kind, run=args.run, batch=args.batch,
                                         sample_batch=args.sample_batch, seed=args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=2))
    print(table(records))
    assert all(math.isfinite(p["loss_bf16"]) for r in records["cases"].values() for p in r["phases"].values())


if __name__ == "__main__":
    main()
