"""Every method on the 2-D mixture and on the 8x8 digits, through the real CLI; figures and numbers.

    python experiments/methods/run.py [--only toy|digits] [--presets a,b]

Each preset is trained with ``dae-gen-train experiment=<preset>`` into ``experiments/methods/runs/<preset>``
(not committed), then sampled with ``dae-gen-sample``. For the mixture we report the sliced Wasserstein-2
distance and MMD to exact samples, the mode weights (exact: 1/8 each) and the outlier fraction (farther than
4 std from every mode). Writes ``results.json``, ``samples_toy.png`` and ``samples_digits.png`` here.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOY = ["ncsn_toy", "dae_toy", "dae_single_toy", "mdsm_toy", "dde_toy", "ddegen_toy"]
DIGITS = ["ncsn_digits", "dae_digits", "mdsm_digits", "dde_digits", "ddegen_digits"]


def run(preset: str, n_samples: int) -> dict:
    run_dir = HERE / "runs" / preset
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dae_gen.cli.train", f"experiment={preset}", "threads=1",
                    "trainer.progress=false", f"hydra.run.dir={run_dir}"], check=True, cwd=REPO)
    trained = time.perf_counter()
    out = run_dir / "final_samples"
    subprocess.run([sys.executable, "-m", "dae_gen.cli.sample", f"run={run_dir}", f"n_samples={n_samples}",
                    "save_npz=true", "threads=1", f"hydra.run.dir={out}", "batch_size=1000"], check=True, cwd=REPO)
    return {"preset": preset, "train_s": trained - started, "sample_s": time.perf_counter() - trained,
            "samples": str(out / "samples.npz"), "grid": str(out / "samples.png")}


def toy_numbers(npz: str) -> dict:
    from dae_gen.data.toy import mixture
    from dae_gen.metrics.toy import mmd_rbf, mode_weights, sliced_wasserstein

    data = mixture()  # the preset's dataset: 8 modes, radius 2, std 0.1
    samples = torch.from_numpy(np.load(npz)["samples"]).double()
    exact = data.sample(len(samples), generator=torch.Generator().manual_seed(0)).double()
    weights, outliers = mode_weights(samples, data.mixture.means, max_dist=0.4)
    exact_weights, exact_outliers = mode_weights(exact, data.mixture.means, max_dist=0.4)
    return {"sliced_w2": sliced_wasserstein(samples, exact, generator=torch.Generator().manual_seed(1)),
            "sliced_w2_exact_vs_exact": sliced_wasserstein(
                data.sample(len(samples), generator=torch.Generator().manual_seed(5)).double(), exact,
                generator=torch.Generator().manual_seed(1)),
            "mmd": mmd_rbf(samples[:2000], exact[:2000]), "mode_weights": [round(float(w), 4) for w in weights],
            "outlier_fraction": float(outliers), "exact_outlier_fraction": float(exact_outliers),
            "max_weight_error": float((weights - 1 / 8).abs().max())}


def figure(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(results), figsize=(3 * len(results), 3.2), dpi=110)
    for ax, row in zip(np.atleast_1d(axes), results):
        ax.imshow(Image.open(row["grid"]), cmap="gray")
        ax.set_title(row["preset"], fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["toy", "digits"], default=None)
    parser.add_argument("--presets", default=None, help="comma-separated subset")
    args = parser.parse_args()
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    groups = {"toy": TOY, "digits": DIGITS}
    for group, presets in groups.items():
        if args.only and group != args.only:
            continue
        for preset in presets:
            if args.presets and preset not in args.presets.split(","):
                continue
            row = run(preset, n_samples=4000 if group == "toy" else 64)
            if group == "toy":
                row.update(toy_numbers(row["samples"]))
            row["machine"] = (f"{platform.machine()}, {torch.get_num_threads()} threads available, CPU, "
                              f"torch {torch.__version__}")
            results[preset] = row
            results_path.write_text(json.dumps(results, indent=2))
            print(json.dumps(row), flush=True)
    for group, presets in groups.items():
        rows = [results[p] for p in presets if p in results]
        if rows:
            figure(rows, HERE / f"samples_{group}.png", f"samples per method ({group})")


if __name__ == "__main__":
    main()
