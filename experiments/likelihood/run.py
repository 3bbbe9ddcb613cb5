"""Three likelihood routes on the same models and the same held-out digits (experiments/likelihood/README.md).

For an annealed-DSM energy model: bits/dim by the probability-flow ODE (dae_gen.likelihood) beside AIS
(dae_gen.ais) of exp(−E); for a DDE: the ODE beside importance sampling (dae_gen.density) and AIS of exp f; and the
ODE bits/dim of an EDM and an NCSN run. Every number is bits/dim of the same uniformly dequantised test images
(one draw of u, seed 0), so the routes differ only in how they get log p.

    python experiments/likelihood/run.py --runs /tmp/lik_full --out experiments/likelihood/results.json
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
from dae_gen.data.digits import digits
from dae_gen.density import importance_log_likelihood
from dae_gen.likelihood import dequantized_bits_per_dim, model_log_likelihood


def held_out(n: int) -> torch.Tensor:
    """The first n of a seeded permutation of the digits test split (uint8, (n, 1, 8, 8))."""
    data = digits(split="test")
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return data.images[chosen]


def pixel_moments(data_range) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and std of the training split in the model's range (the AIS / IS proposals)."""
    lo, hi = data_range
    x = digits(split="train").images.double() / 255 * (hi - lo) + lo
    return x.mean(0), x.std(0)


def bpd_row(route: str, fn, images, data_range, **extra) -> dict:
    started = time.perf_counter()
    result = dequantized_bits_per_dim(fn, images, data_range=data_range, generator=torch.Generator().manual_seed(0))
    row = {"route": route, "bpd": result.bits_per_dim, "stderr_examples": result.stderr,
           "stderr_probes": result.probe_stderr, "nfe": result.nfe, "seconds": time.perf_counter() - started, **extra}
    print(f"  {route:<44} {row['bpd']:8.4f} ± {row['stderr_examples']:.4f}  {row['seconds']:6.1f} s", flush=True)
    return row


def ode(model, *, sigma_min, sigma_max, n_probes, batch):
    return lambda y: model_log_likelihood(model, y.double(), sigma_min=sigma_min, sigma_max=sigma_max,
                                          n_probes=n_probes, batch_size=batch, rtol=1e-5, atol=1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="/tmp/lik_full", help="folder holding <experiment>/ run directories")
    parser.add_argument("--n", type=int, default=64, help="held-out test images")
    parser.add_argument("--probes", type=int, default=2, help="Hutchinson probes per image")
    parser.add_argument("--ais-chains", type=int, default=128)
    parser.add_argument("--ais-steps", type=int, default=1000)
    parser.add_argument("--is-proposals", type=int, default=100_000)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = held_out(args.n)
    runs, rows = Path(args.runs), []
    started = time.perf_counter()

    for name in ("mdsm_digits", "dde_digits", "edm_digits", "ncsn_digits"):
        run = load_run(runs / name)
        model = run.model.double()
        data_range = run.data.data_range
        common = {"experiment": name, "step": run.step, "n": args.n, "model_range": list(data_range)}
        print(f"{name} (step {run.step}, range {data_range})", flush=True)
        mean, std = pixel_moments(data_range)
        if name == "mdsm_digits":  # exp(−E) models p_σ₀ (σ₀ = reference_sigma): the ODE from σ₀ to σ_high
            s0, s_high = model.reference_sigma, float(model.sigmas[0])
            rows.append(bpd_row(f"ODE sigma {s0:g} -> {s_high:g}", ode(model, sigma_min=s0, sigma_max=s_high,
                                n_probes=args.probes, batch=args.n), images, data_range, sigma_min=s0,
                                sigma_max=s_high, **common))
            ais_info = {}

            def ais(y, info=ais_info):
                est = energy_log_likelihood(model, y.double(), n_chains=args.ais_chains, n_steps=args.ais_steps,
                                            proposal_mean=mean, proposal_std=(std.pow(2) + s0**2).sqrt(),
                                            generator=torch.Generator().manual_seed(1))
                info.update(log_z=est.log_z, log_z_stderr=est.log_z_stderr, ess=est.ais.ess)
                return est.log_likelihood

            row = bpd_row(f"AIS of exp(-E), {args.ais_chains} chains x {args.ais_steps} steps", ais, images,
                          data_range, sigma_min=s0, **common)
            row.update(ais_info, stderr_log_z_bpd=ais_info["log_z_stderr"] / (64 * math.log(2)))
            rows.append(row)
        elif name == "dde_digits":  # exp f models p_σ at its one σ; the ODE needs a σ_max: the score is σ-blind
            sd = model.reference_sigma
            for s_max in (0.5, 1.0):
                rows.append(bpd_row(f"ODE sigma {sd:g} -> {s_max:g} (sigma-blind score)",
                                    ode(model, sigma_min=sd, sigma_max=s_max, n_probes=args.probes, batch=args.n),
                                    images, data_range, sigma_min=sd, sigma_max=s_max, **common))
            is_info = {}

            def importance(y, info=is_info):
                est = importance_log_likelihood(model.log_density, y.double(), sigma=sd, n_proposal=args.is_proposals,
                                                proposal_mean=mean, proposal_std=(std.pow(2) + sd**2).sqrt(),
                                                generator=torch.Generator().manual_seed(1))
                info.update(log_z=est.log_z, ess=est.ess)
                return est.log_likelihood

            rows.append({**bpd_row(f"importance sampling, {args.is_proposals} proposals", importance, images,
                                   data_range, sigma_min=sd, **common), **is_info})
            ais_info = {}

            def ais(y, info=ais_info):
                est = energy_log_likelihood(model, y.double(), n_chains=args.ais_chains, n_steps=args.ais_steps,
                                            proposal_mean=mean, proposal_std=(std.pow(2) + sd**2).sqrt(),
                                            generator=torch.Generator().manual_seed(1))
                info.update(log_z=est.log_z, log_z_stderr=est.log_z_stderr, ess=est.ais.ess)
                return est.log_likelihood

            row = bpd_row(f"AIS of exp(f), {args.ais_chains} chains x {args.ais_steps} steps", ais, images,
                          data_range, sigma_min=sd, **common)
            row.update(ais_info, stderr_log_z_bpd=ais_info["log_z_stderr"] / (64 * math.log(2)))
            rows.append(row)
        else:  # noise-conditional models: their own range, and σ_min matched to the energy model's σ₀ in pixels
            scale = (data_range[1] - data_range[0])  # σ₀ = 0.1 on [0, 1] is 0.2 on [−1, 1]
            for s_min in (float(model.sigmas[-1]), 0.1 * scale):
                rows.append(bpd_row(f"ODE sigma {s_min:g} -> {float(model.sigmas[0]):g}",
                                    ode(model, sigma_min=s_min, sigma_max=None, n_probes=args.probes, batch=args.n),
                                    images, data_range, sigma_min=s_min, sigma_max=float(model.sigmas[0]), **common))
    record = {"command": "python experiments/likelihood/run.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "machine": f"{platform.machine()} {platform.processor() or ''}, 2 shared cores, torch.set_num_threads(1)",
              "torch": torch.__version__, "seconds": time.perf_counter() - started,
              "held_out": f"digits/test, randperm(seed=0)[:{args.n}], one dequantisation draw (seed 0)",
              "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
