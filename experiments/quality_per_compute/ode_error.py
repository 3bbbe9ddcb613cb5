"""How close each deterministic solver lands to the probability-flow ODE's solution on a trained EDM network.

    python experiments/quality_per_compute/ode_error.py RUN_DIR [--out results/fmnist_ode_error.json]

64 images from one shared x_T ~ N(0, σ_max² I) (seed 0), each solver on the ρ-schedule (ρ = 7, the model's σ range);
the reference is Heun with 200 steps (399 calls). Reported: RMS difference per pixel (images in [−1, 1]) against
network calls per image. No Inception network, so it runs on any checkpoint in about a CPU-minute.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dae_gen.noise import karras_sigmas
from dae_gen.run import load_run
from dae_gen.samplers.edm import edm_sampler
from dae_gen.samplers.fast import dpm_solver_2m, euler_ancestral
from dae_gen.samplers.schedule import sigma_range


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = load_run(args.run_dir)
    score = run.model.score
    sigma_max, sigma_min = sigma_range(run.model, None, None, sampler="heun", allow_single_level=False)
    x_t = sigma_max * torch.randn((64, *run.model.data_shape), generator=torch.Generator().manual_seed(0))

    def sigmas(n: int):
        return karras_sigmas(n, sigma_min, sigma_max, 7.0)

    reference = edm_sampler(score, x_t, sigmas(200))
    solvers = [("heun", lambda n: edm_sampler(score, x_t, sigmas(n)), (5, 9, 13, 18), lambda n: 2 * n - 1),
               ("dpm_solver_2m", lambda n: dpm_solver_2m(score, x_t, sigmas(n)), (10, 15, 20, 35), lambda n: n),
               ("euler (eta = 0)", lambda n: euler_ancestral(score, x_t, sigmas(n), eta=0.0), (10, 20, 35),
                lambda n: n)]
    rows = []
    for name, solve, steps, nfe in solvers:
        for n in steps:
            rms = (solve(n) - reference).pow(2).mean().sqrt().item()
            rows.append({"sampler": name, "n_steps": n, "nfe": nfe(n), "rms_vs_heun_200": rms})
            print(f"{name:16s} N = {n:3d}  NFE = {nfe(n):3d}  RMS vs Heun-200 {rms:.4f}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"run": str(args.run_dir), "checkpoint_step": run.step, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
