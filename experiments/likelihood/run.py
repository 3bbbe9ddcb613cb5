"""Three likelihood routes on the same models and the same held-out images (experiments/likelihood/README.md).

For an annealed-DSM energy model: bits/dim by the probability-flow ODE (dae_gen.likelihood) beside AIS
(dae_gen.ais) of exp(−E); for a DDE: the ODE beside importance sampling (dae_gen.density) and AIS of exp f; and the
ODE bits/dim of an EDM and an NCSN run. Every number is bits/dim of the same uniformly dequantised test images
(one draw of u, seed 0), so the routes differ only in how they get log p.

    python experiments/likelihood/run.py --runs /tmp/lik_full --out experiments/likelihood/results.json
    python experiments/likelihood/run.py --dataset fmnist --runs /tmp/lik_fmnist \
        --out experiments/likelihood/results_fmnist.json

``--runs`` holds one run directory per experiment, named as in ``EXPERIMENTS`` (the README gives the training
commands).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from dae_gen import load_run
from dae_gen.ais import energy_log_likelihood
from dae_gen.density import importance_log_likelihood
from dae_gen.likelihood import dequantized_bits_per_dim, model_log_likelihood

# Per dataset: run-directory name → which routes it gets (energy: ODE + AIS of exp(−E); dde: ODE + importance
# sampling + AIS of exp f; noise_conditional: the ODE at its own σ_min and at the energy model's σ₀).
EXPERIMENTS = {
    "digits": {"mdsm_digits": "energy", "dde_digits": "dde", "edm_digits": "noise_conditional",
               "ncsn_digits": "noise_conditional"},
    "fmnist": {"mdsm_fmnist_cpu": "energy", "dde_fmnist": "dde", "edm_fmnist_cpu": "noise_conditional",
               "ncsn_fmnist_cpu": "noise_conditional"},
}


def split_images(dataset: str, split: str) -> torch.Tensor:
    """The uint8 images ``(N, C, H, W)`` of a split of the dataset."""
    if dataset == "digits":
        from dae_gen.data.digits import digits

        return digits(split=split).images
    from dae_gen.data.fashion_mnist import fashion_mnist

    return fashion_mnist(split=split).images


def held_out(dataset: str, n: int) -> torch.Tensor:
    """The first n of a seeded permutation of the test split (uint8)."""
    images = split_images(dataset, "test")
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return images[chosen]


def pixel_moments(dataset: str, data_range) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and std of the training split in the model's range (the AIS / IS proposals)."""
    lo, hi = data_range
    x = split_images(dataset, "train").double() / 255 * (hi - lo) + lo
    return x.mean(0), x.std(0)


def bpd_row(route: str, fn, images, data_range, **extra) -> dict:
    started = time.perf_counter()
    result = dequantized_bits_per_dim(fn, images, data_range=data_range, generator=torch.Generator().manual_seed(0))
    row = {"route": route, "bpd": result.bits_per_dim, "stderr_examples": result.stderr,
           "stderr_probes": result.probe_stderr, "nfe": result.nfe, "seconds": time.perf_counter() - started, **extra}
    print(f"  {route:<44} {row['bpd']:8.4f} ± {row['stderr_examples']:.4f}  {row['seconds']:6.1f} s", flush=True)
    return row


def ode_row(model, images, data_range, *, sigma_min, sigma_max, n_probes, label="", **extra) -> dict:
    """Bits/dim by the probability-flow ODE from ``sigma_min`` to ``sigma_max`` (None: the model's largest σ)."""
    shown_max = float(model.sigmas[0]) if sigma_max is None else sigma_max

    def log_p(y):
        return model_log_likelihood(model, y.double(), sigma_min=sigma_min, sigma_max=sigma_max, n_probes=n_probes,
                                    batch_size=len(images), rtol=1e-5, atol=1e-5)

    return bpd_row(f"ODE sigma {sigma_min:g} -> {shown_max:g}{label}", log_p, images, data_range,
                   sigma_min=sigma_min, sigma_max=shown_max, **extra)


def ais_row(model, images, data_range, *, name: str, sigma: float, moments, chains: int, steps: int, **extra) -> dict:
    """Bits/dim of the model's own normalised density ``exp(−E)`` (or ``exp f``) by AIS from a Gaussian proposal
    of the training split's pixel moments, widened by the model's smoothing σ."""
    mean, std = moments
    info = {}

    def log_p(y):
        est = energy_log_likelihood(model, y.double(), n_chains=chains, n_steps=steps, proposal_mean=mean,
                                    proposal_std=(std.pow(2) + sigma**2).sqrt(),
                                    generator=torch.Generator().manual_seed(1))
        info.update(log_z=est.log_z, log_z_stderr=est.log_z_stderr, ess=est.ais.ess)
        return est.log_likelihood

    row = bpd_row(f"AIS of {name}, {chains} chains x {steps} steps", log_p, images, data_range, sigma_min=sigma,
                  **extra)
    return {**row, **info, "stderr_log_z_bpd": info["log_z_stderr"] / (images[0].numel() * math.log(2))}


def importance_row(model, images, data_range, *, sigma: float, moments, proposals: int, **extra) -> dict:
    """Bits/dim of a DDE's ``exp f`` normalised by importance sampling (dae_gen.density)."""
    mean, std = moments
    info = {}

    def log_p(y):
        est = importance_log_likelihood(model.log_density, y.double(), sigma=sigma, n_proposal=proposals,
                                        proposal_mean=mean, proposal_std=(std.pow(2) + sigma**2).sqrt(),
                                        generator=torch.Generator().manual_seed(1))
        info.update(log_z=est.log_z, ess=est.ess)
        return est.log_likelihood

    return {**bpd_row(f"importance sampling, {proposals} proposals", log_p, images, data_range, sigma_min=sigma,
                      **extra), **info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(EXPERIMENTS), default="digits")
    parser.add_argument("--runs", default="/tmp/lik_full", help="folder holding <experiment>/ run directories")
    parser.add_argument("--n", type=int, default=64, help="held-out test images")
    parser.add_argument("--probes", type=int, default=2, help="Hutchinson probes per image")
    parser.add_argument("--ais-chains", type=int, default=128)
    parser.add_argument("--ais-steps", type=int, default=1000)
    parser.add_argument("--is-proposals", type=int, default=100_000)
    parser.add_argument("--only", nargs="+", default=None, help="these experiments only (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = held_out(args.dataset, args.n)
    runs, rows = Path(args.runs), []
    started = time.perf_counter()

    for name, kind in EXPERIMENTS[args.dataset].items():
        if args.only and name not in args.only:
            continue
        run = load_run(runs / name)
        model = run.model.double()
        data_range = run.data.data_range
        common = {"experiment": name, "step": run.step, "n": args.n, "model_range": list(data_range)}
        print(f"{name} (step {run.step}, range {data_range})", flush=True)
        moments = pixel_moments(args.dataset, data_range)
        ais = {"moments": moments, "chains": args.ais_chains, "steps": args.ais_steps}
        if kind == "energy":  # exp(−E) models p_σ₀ (σ₀ = reference_sigma): the ODE from σ₀ to σ_high
            s0 = model.reference_sigma
            rows.append(ode_row(model, images, data_range, sigma_min=s0, sigma_max=float(model.sigmas[0]),
                                n_probes=args.probes, **common))
            rows.append(ais_row(model, images, data_range, name="exp(-E)", sigma=s0, **ais, **common))
        elif kind == "dde":  # exp f models p_σ at its one σ; the ODE needs a σ_max: the score is σ-blind
            sd = model.reference_sigma
            for s_max in (0.5, 1.0):
                rows.append(ode_row(model, images, data_range, sigma_min=sd, sigma_max=s_max, n_probes=args.probes,
                                    label=" (sigma-blind score)", **common))
            rows.append(importance_row(model, images, data_range, sigma=sd, moments=moments,
                                       proposals=args.is_proposals, **common))
            rows.append(ais_row(model, images, data_range, name="exp(f)", sigma=sd, **ais, **common))
        else:  # noise-conditional models: their own range, and σ_min matched to the energy model's σ₀ in pixels
            scale = (data_range[1] - data_range[0])  # σ₀ = 0.1 on [0, 1] is 0.2 on [−1, 1]
            for s_min in (float(model.sigmas[-1]), 0.1 * scale):
                rows.append(ode_row(model, images, data_range, sigma_min=s_min, sigma_max=None, n_probes=args.probes,
                                    **common))
    record = {"command": "python experiments/likelihood/run.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if v is not None),
              "machine": f"{platform.machine()} {platform.processor() or ''}, 2 shared cores, torch.set_num_threads(1)",
              "torch": torch.__version__, "seconds": time.perf_counter() - started,
              "held_out": f"{args.dataset}/test, randperm(seed=0)[:{args.n}], one dequantisation draw (seed 0)",
              "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
