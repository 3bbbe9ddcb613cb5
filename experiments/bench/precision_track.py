"""bf16 against fp32 along a real training run: does the agreement hold as the model fits?

    python experiments/bench/precision_track.py experiment=mdsm_digits            # -> records/track_mdsm_digits.json
    python experiments/bench/precision_track.py experiment=edm_fmnist_cpu --every 250 --steps 3000
    python experiments/bench/precision_track.py experiment=mdsm_digits trainer.amp=bf16   # train in bf16 instead

Trains the preset with the real ``Trainer`` (its own precision, ``trainer.amp``; fp32 by default) and every
``--every`` steps takes a fresh held-out batch and compares, on the same noise draws: the loss and the parameter
gradient under bf16 autocast with fp32 (criterion: loss within 1%, gradient cosine >= 0.99), next to the cosine
between the fp32 gradients of two *different* batches (the minibatch noise the optimiser lives with anyway); and
the score through ``AutocastModel`` (``sampler.amp=bf16``) with fp32 at the sampler's reference σ: per-example
cosine (median, min) and the largest change of the denoised estimate ``x + σ²·score`` in data units. For the ResNet
energy, ``--bf16-input-conv`` also measures the variant whose input conv runs in bf16 (the default keeps it fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from dae_gen.cli.train import split_trainer_node
from dae_gen.nets.energy import ResNetEnergy, conv_input_grad
from dae_gen.precision import AutocastModel, autocast, bf16_support

HERE = Path(__file__).resolve().parent


def flat_grad(model, phase: str) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in model.phase_parameters(phase)])


def loss_and_grad(model, phase: str, x: torch.Tensor, amp: str, seed: int) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with autocast(amp, x.device):
        loss = model.losses(phase, x).float().mean()
    loss.backward()
    grad = flat_grad(model, phase).clone()
    model.zero_grad(set_to_none=True)
    return float(loss), grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def bf16_input_conv(enabled: bool) -> None:
    """Switch the ResNet energy's input conv to bf16 under autocast (the variant without the fp32 input conv)."""
    if enabled:
        ResNetEnergy.input_conv = lambda self, x: self.conv_in(x.contiguous(memory_format=self.memory_format))
        ResNetEnergy.input_conv_grad = lambda self, grad, dtype: conv_input_grad(grad, self.conv_in).to(dtype)
    else:
        ResNetEnergy.input_conv, ResNetEnergy.input_conv_grad = ORIGINAL


ORIGINAL = (ResNetEnergy.input_conv, ResNetEnergy.input_conv_grad)


def measure(model, data, step: int, *, batch: int, seed: int, variants: list[str]) -> dict:
    generator = torch.Generator().manual_seed(10_000 + step)
    x, other = data.batch(batch, generator=generator), data.batch(batch, generator=generator)
    row: dict = {"step": step}
    for phase, _ in model.phases:
        loss32, grad32 = loss_and_grad(model, phase, x, "none", seed + step)
        _, grad_other = loss_and_grad(model, phase, other, "none", seed + step + 1)
        entry = {"loss_fp32": loss32, "minibatch_cosine": cosine(grad32, grad_other)}
        for variant in variants:
            bf16_input_conv(variant == "bf16_input_conv")
            loss16, grad16 = loss_and_grad(model, phase, x, "bf16", seed + step)
            entry[variant] = {"loss_rel_diff": abs(loss16 - loss32) / abs(loss32),
                              "grad_cosine": cosine(grad16, grad32)}
        bf16_input_conv(False)
        row[phase] = entry
    model.eval()
    sigma = float(model.reference_sigma)
    noisy = x + sigma * torch.randn(x.shape, generator=generator)
    s = torch.full((x.shape[0],), sigma)
    with torch.inference_mode():
        ref = model.score(noisy, s)
        for variant in variants:
            bf16_input_conv(variant == "bf16_input_conv")
            ours = AutocastModel(model).score(noisy, s)
            cos = torch.nn.functional.cosine_similarity(ours.flatten(1).double(), ref.flatten(1).double(), dim=1)
            row.setdefault("score", {})[variant] = {
                "sigma": sigma, "cos_median": float(cos.median()), "cos_min": float(cos.min()),
                "denoised_max_abs_diff": float((sigma**2 * (ours - ref)).abs().max())}
        bf16_input_conv(False)
    model.train()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="dae-gen-train overrides, e.g. experiment=mdsm_digits")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64, help="held-out comparison batch")
    parser.add_argument("--bf16-input-conv", action="store_true", help="also the ResNet energy's bf16 input conv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not bf16_support("cpu")[0]:
        sys.exit(f"bf16 autocast does not run natively here ({bf16_support('cpu')[1]})")
    torch.set_num_threads(1)
    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=args.overrides)
    name = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("experiment=")), "ncsn_digits")
    out = args.out or HERE / "records" / f"track_{name}{'_bf16' if cfg.trainer.amp == 'bf16' else ''}.json"
    data = instantiate(cfg.dataset)
    held_out = instantiate({**cfg.dataset, "split": "test"}) if "split" in cfg.dataset else data
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model, data_shape=list(data.shape))
    steps = args.steps or int(cfg.trainer.steps)
    variants = ["bf16"] + (["bf16_input_conv"] if args.bf16_input_conv else [])
    record = {"command": " ".join(sys.argv), "overrides": args.overrides, "steps": steps, "train_amp": cfg.trainer.amp,
              "rows": []}
    with tempfile.TemporaryDirectory() as scratch:
        mechanics, _ = split_trainer_node(cfg.trainer)  # steps only: no hooks run here
        trainer = instantiate({**mechanics, "steps": steps})(objective=model, data=data, run_dir=scratch, seed=cfg.seed)
        for step in range(steps + 1):
            if step % args.every == 0 or step == steps:
                row = measure(model, held_out, step, batch=args.batch, seed=args.seed, variants=variants)
                record["rows"].append(row)
                print(json.dumps(row), flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(record, indent=2))
            if step < steps:
                trainer.train_step()


if __name__ == "__main__":
    main()
