"""FLOPs of one training step and one sampler step for each published preset, and a GPU-time estimate.

    python experiments/presets/flops.py [--tflops 100]

No GPU is lent to this task, so the presets' GPU times are *estimates*: FLOPs counted exactly with
``torch.utils.flop_counter`` on the preset's real network and loss (batch 2, scaled linearly to the preset's
batch), divided by an assumed sustained throughput (``--tflops``, default 100 TFLOP/s ≈ 10% of an H100's dense
bf16 peak, conservative for small conv nets; fp32/TF32 presets such as MDSM run slower). Writes flops.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

REPO = Path(__file__).resolve().parents[2]
PRESETS = {  # preset: data shape
    "ncsn_cifar10": (3, 32, 32), "ncsnv2_cifar10": (3, 32, 32), "ncsnv2_celeba64": (3, 64, 64),
    "mdsm_fmnist": (1, 32, 32), "mdsm_cifar10": (3, 32, 32), "ddegen_celeba32": (3, 32, 32),
    "dae_fmnist": (1, 28, 28),
}


class _CountFlops(TorchDispatchMode):
    """Sum torch's registered FLOP formulas over every dispatched op (works through autograd.grad, unlike
    FlopCounterMode's module hooks, which the double-backward losses trip)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count(fn) -> int:
    with _CountFlops() as counter:
        fn()
    return counter.total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tflops", type=float, default=100.0)
    args = parser.parse_args()
    rows = {}
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        for preset, shape in PRESETS.items():
            cfg = compose("train", overrides=[f"experiment={preset}"])
            model = instantiate(cfg.model, data_shape=list(shape))
            x = torch.rand(2, *shape)
            train = 0
            for phase, repeats in model.phases:
                train += repeats * count(lambda: model.losses(phase, x).mean().backward())
            sigma = model.sigmas[:1].expand(2)
            sample = count(lambda: model.score(x, sigma)) if cfg.sampler._target_.endswith("langevin") else \
                count(lambda: model.generate(2))
            batch, steps = cfg.trainer.batch_size, cfg.trainer.steps
            if "n_levels" in cfg.model.get("sigmas", {}):
                chain = cfg.model.sigmas.n_levels * cfg.sampler.n_steps_each
            elif "n_steps_hot" in cfg.sampler:
                chain = cfg.sampler.n_steps_hot + cfg.sampler.n_steps_anneal + cfg.sampler.n_steps_cool
            else:
                chain = 1
            train_flops = train / 2 * batch
            rows[preset] = {
                "params": sum(p.numel() for p in model.parameters()),
                "train_step_gflop": train_flops / 1e9, "steps": steps, "batch": batch,
                "train_hours_est": train_flops * steps / (args.tflops * 1e12) / 3600,
                "sampler_steps": chain,
                "sample_10k_hours_est": sample / 2 * 10_000 * chain / (args.tflops * 1e12) / 3600,
            }
            print(preset, json.dumps(rows[preset]), flush=True)
    Path(__file__).with_name("flops.json").write_text(json.dumps({"assumed_tflops": args.tflops, "presets": rows},
                                                                  indent=2))


if __name__ == "__main__":
    main()
