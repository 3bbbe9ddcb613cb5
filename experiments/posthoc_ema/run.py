"""FID as a function of the EMA length, chosen after training by post-hoc EMA (EDM2), with the console scripts.

Stages (each resumable: a finished run and finished rows are kept and skipped)::

    python experiments/posthoc_ema/run.py train  --steps 2000    # edm_fmnist_cpu with snapshots every 100 steps
    python experiments/posthoc_ema/run.py eval                   # dae-gen-eval n_samples=1000 per EMA choice
    python experiments/posthoc_ema/run.py report                 # the markdown table of README.md

Every row is one ``dae-gen-eval`` of the same checkpoint with the run's own Heun sampler (18 steps, 35 network
calls per image), seed 0, 1000 samples in batches of 250, one thread, FID against the whole test split:
``ema_length=L`` for each L (weights reconstructed from the snapshots), ``use_ema=true`` (the run's own EMA,
``trainer.ema_decay``) and ``use_ema=false`` (the raw training weights). Rows go to ``results/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
LENGTHS = (0.03, 0.05, 0.08, 0.10, 0.15, 0.20)
PRIORITY = (0.10, 0.05, 0.03, 0.20, 0.15, 0.08)  # the order the lengths are evaluated in


def command(name: str) -> str:
    """The console script ``name`` beside this interpreter, else on PATH."""
    script = BIN / name
    return str(script) if script.is_file() else name


def train(args) -> None:
    run = Path(args.run)
    cmd = [command("dae-gen-train"), f"experiment={args.experiment}", f"hydra.run.dir={run}",
           f"trainer.steps={args.steps}", f"trainer.posthoc_ema.snapshot_every={args.snapshot_every}",
           "trainer.sample_every=0", "trainer.progress=false", "trainer.log_every=100", "trainer.tensorboard=false",
           "threads=1"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def variants(lengths) -> list[tuple[str, list[str]]]:
    """(label, dae-gen-eval arguments) of each row, in the order they are run: a stored length, the checkpoint's
    two sets of weights, then the other lengths from the ends of the range inwards (a sweep cut short still spans
    it)."""
    rank = {length: i for i, length in enumerate(PRIORITY)}
    order = sorted(lengths, key=lambda length: rank.get(length, len(PRIORITY)))
    posthoc = [(f"post-hoc EMA, ema_length={length:g}", [f"ema_length={length}"]) for length in order]
    return [*posthoc[:1], ("the run's own EMA (trainer.ema_decay)", ["use_ema=true"]),
            ("raw training weights", ["use_ema=false"]), *posthoc[1:]]


def evaluate(args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "results.json"
    done = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    checkpoint = Path(args.run) / "checkpoints" / f"ckpt_{args.step:08d}.pt"
    done.update(run=str(args.run), checkpoint=str(checkpoint), machine=machine())
    for label, extra in variants(args.lengths):
        if any(row["label"] == label for row in done["rows"]):
            continue
        out = RESULTS / "eval" / "_".join(a.replace("=", "-") for a in extra)  # no '=' in a Hydra value
        cmd = [command("dae-gen-eval"), f"run={checkpoint}", f"n_samples={args.n_samples}", "batch_size=250",
               f"n_reference={args.n_reference}", f"kid_subset_size={min(args.n_samples, 1000)}", "seed=0",
               "threads=1", "device=cpu", f"cache_dir={args.cache_dir}", f"out={out}", *extra]
        if (out / "eval.json").is_file():  # measured already (e.g. by a second process): collected, not redone
            proc = subprocess.CompletedProcess(cmd, 0)
        else:
            print(" ".join(cmd), flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-2000:], flush=True)
            done["rows"].append({"label": label, "arguments": extra, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            result = json.loads((out / "eval.json").read_text())
            posthoc = result.get("posthoc_ema") or {}
            done["rows"].append({"label": label, "arguments": extra, "fid": result["fid"],
                                 "kid_mean": result["kid_mean"], "kid_std": result["kid_std"], "n": result["n"],
                                 "step": result["step"], "nfe_per_image": result["nfe_per_image"],
                                 "ema_length": result.get("ema_length"),
                                 "profile_error": posthoc.get("profile_error"),
                                 "profile_step": posthoc.get("step"),
                                 "n_snapshots": len(posthoc.get("snapshots", [])) or None,
                                 "seconds": result["seconds"]})
            print(f"{label}: FID {result['fid']:.2f}", flush=True)
        path.write_text(json.dumps(done, indent=2) + "\n")


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "threads": 1}


def report(args) -> None:
    done = json.loads((RESULTS / "results.json").read_text())
    n = next((r["n"] for r in done["rows"] if "n" in r), "N")
    print(f"| weights | FID@{n} | KID × 10³ | profile error | snapshots |")
    print("|---|---:|---:|---:|---:|")
    rows = sorted(done["rows"], key=lambda r: (r.get("ema_length") is None, r.get("ema_length") or 0, r["label"]))
    for row in rows:
        if "error" in row:
            print(f"| {row['label']} | — ({row['error']}) | | | |")
            continue
        error = "—" if row["profile_error"] is None else f"{row['profile_error']:.4f}"
        snaps = "—" if row["n_snapshots"] is None else str(row["n_snapshots"])
        kid = f"{1e3 * row['kid_mean']:.2f} ± {1e3 * row['kid_std']:.2f}"
        print(f"| {row['label']} | {row['fid']:.2f} | {kid} | {error} | {snaps} |")
    fids = [r for r in done["rows"] if r.get("ema_length") is not None and math.isfinite(r.get("fid", math.nan))]
    if fids:
        best = min(fids, key=lambda r: r["fid"])
        print(f"\nbest post-hoc length: {best['ema_length']:g} (FID {best['fid']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "eval", "report"])
    parser.add_argument("--run", default=str(HERE / "run"), help="the run folder (not committed)")
    parser.add_argument("--experiment", default="edm_fmnist_cpu")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--snapshot-every", type=int, default=100)
    parser.add_argument("--step", type=int, default=2000, help="the checkpoint to evaluate")
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--n-reference", default="null", help="test images in the reference (null: all 10 000)")
    parser.add_argument("--lengths", type=float, nargs="+", default=list(LENGTHS))
    parser.add_argument("--cache-dir", default=str(Path(os.environ.get(
        "DAE_GEN_CACHE", Path.home() / ".cache" / "dae_gen")) / "fid_stats"))
    args = parser.parse_args()
    {"train": train, "eval": evaluate, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
