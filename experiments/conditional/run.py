"""Class-conditional EDM models and classifier-free guidance: FID@1000 and per-class accuracy of samples for w in
{0, 1, 2, 4}, at the budget of the unconditional preset (digits: the main job's 3000 steps; Fashion-MNIST:
edm_fmnist_cpu's 6221 steps, 20 CPU-minutes on one thread).

    dae-gen-train experiment=edm_digits_cond threads=1 hydra.run.dir=experiments/conditional/runs/edm_digits_cond
    dae-gen-train experiment=edm_digits threads=1 hydra.run.dir=experiments/conditional/runs/edm_digits  # reference
    python experiments/conditional/run.py            # classifier, samples, FID, accuracy -> results.json, plot

    dae-gen-train experiment=edm_fmnist_cpu_cond threads=1 \
        hydra.run.dir=experiments/conditional/runs/edm_fmnist_cpu_cond
    python experiments/quality_per_compute/run.py train --dataset fmnist --methods edm --steps 6221  # reference
    python experiments/conditional/run.py --dataset fmnist   # -> results_fmnist.json, fid_vs_accuracy_fmnist.png

For each w: ``dae-gen-sample class_labels=all per_class=100 guidance=w save_npz=true`` (the run's Heun sampler, 18
steps; 100 samples of each class), then ``dae-gen-eval samples=<that npz>`` (FID against the whole held-out test
split, as ``experiments/quality_per_compute`` does), then the classifier's accuracy on the samples of each class.
The classifier: multinomial logistic regression (scikit-learn) on the pixels of the real train split (the split the
generative models trained on; for Fashion-MNIST a seeded 20 000 of its 60 000), its accuracy measured on the
held-out test split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
GUIDANCE = (0.0, 1.0, 2.0, 4.0)

# Per dataset: the conditional run, the unconditional reference run and the step it is compared at, the labelled
# splits, how many training images the classifier fits on (None: all), and where results go.
DATASETS = {
    "digits": {"run": HERE / "runs" / "edm_digits_cond", "reference": HERE / "runs" / "edm_digits",
               "reference_step": 3000, "reference_label": "unconditional main job (edm_digits)",
               "n_classifier": None, "results": HERE / "results.json", "plot": HERE / "fid_vs_accuracy.png",
               "title": "digits 8x8, EDM, 3000 steps", "work": HERE / "runs" / "sweep"},
    "fmnist": {"run": HERE / "runs" / "edm_fmnist_cpu_cond",
               "reference": HERE.parent / "quality_per_compute" / "runs" / "fmnist" / "edm",
               "reference_step": 6221, "reference_label": "unconditional edm_fmnist_cpu",
               "n_classifier": 20_000, "results": HERE / "results_fmnist.json",
               "plot": HERE / "fid_vs_accuracy_fmnist.png", "title": "Fashion-MNIST 28x28, EDM, 6221 steps",
               "work": HERE / "runs" / "sweep_fmnist"},
}


def labelled_split(dataset: str, split: str):
    if dataset == "digits":
        from dae_gen.data.digits import digits

        return digits(split=split)
    from dae_gen.data.fashion_mnist import fashion_mnist

    return fashion_mnist(split=split)


def classifier(dataset: str, n_train: int | None):
    """Logistic regression on the real train split's pixels in [0, 1] (a seeded ``n_train`` of them; None: all);
    its held-out (test split) accuracy."""
    from sklearn.linear_model import LogisticRegression

    def xy(split, n=None):
        data = labelled_split(dataset, split)
        x, y = data.images.reshape(len(data.images), -1).numpy() / 255.0, data.labels.numpy()
        if n is not None and n < len(y):
            chosen = np.random.default_rng(0).permutation(len(y))[:n]
            x, y = x[chosen], y[chosen]
        return x, y

    x_train, y_train = xy("train", n_train)
    x_test, y_test = xy("test")
    model = LogisticRegression(max_iter=5000, C=1.0).fit(x_train, y_train)
    per_class = {int(c): float((model.predict(x_test[y_test == c]) == c).mean()) for c in range(10)}
    return model, {"kind": "sklearn LogisticRegression(C=1, max_iter=5000) on pixels / 255",
                   "n_train": len(y_train), "n_test": len(y_test),
                   "test_accuracy": float((model.predict(x_test) == y_test).mean()), "test_per_class": per_class}


def command(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def draw(out: Path, *args: str) -> None:
    """``dae-gen-sample ... save_npz=true out=<out>`` unless ``out`` already holds its samples."""
    if not (out / "samples.npz").is_file():
        shutil.rmtree(out, ignore_errors=True)
        command("dae-gen-sample", *args, "save_npz=true", f"out={out}", "threads=1", "batch_size=250")


def evaluate_all(folders: list[Path], jobs: int) -> None:
    """``dae-gen-eval samples=<folder>/samples.npz`` for each folder without an ``eval/eval.json``, ``jobs`` at once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    todo = [f for f in folders if not (f / "eval" / "eval.json").is_file()]
    running: list[subprocess.Popen] = []
    while todo or running:
        while todo and len(running) < jobs:
            folder = todo.pop(0)
            running.append(subprocess.Popen([str(BIN / "dae-gen-eval"), f"samples={folder / 'samples.npz'}",
                                             f"out={folder / 'eval'}", "threads=1"], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        running[0].wait()
        running = [p for p in running if p.poll() is None]


def fid_of(folder: Path) -> dict:
    """The folder's ``eval/eval.json``, or nulls where it was not evaluated."""
    path = folder / "eval" / "eval.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {key: None for key in ("fid", "kid_mean", "precision", "recall", "n", "n_reference", "seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    parser.add_argument("--run", default=None, help="the conditional run (default: the dataset's)")
    parser.add_argument("--reference", default=None, help="the unconditional run (default: the dataset's)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, nargs="+", default=list(GUIDANCE))
    parser.add_argument("--jobs", type=int, default=2, help="dae-gen-eval processes at once")
    parser.add_argument("--assemble", action="store_true",
                        help="draw and evaluate nothing: tabulate the folders as they are (FID null where missing)")
    args = parser.parse_args()
    spec = DATASETS[args.dataset]
    args.run = str(args.run or spec["run"])
    args.reference = str(args.reference or spec["reference"])
    work = spec["work"]
    work.mkdir(parents=True, exist_ok=True)
    clf, clf_record = classifier(args.dataset, spec["n_classifier"])
    print(f"classifier: held-out accuracy {clf_record['test_accuracy']:.4f}", flush=True)
    folders = {}
    for w in args.guidance:  # samples first (seconds each), then the evaluations (minutes each)
        folders[w] = work / f"w{w:g}"
        if not args.assemble:
            draw(folders[w], f"run={args.run}", "class_labels=all", f"per_class={args.per_class}", f"guidance={w}")
    references = {"conditional model, null class (unconditional)": (args.run, work / "null")}
    step = spec["reference_step"]
    if (Path(args.reference) / "checkpoints" / f"ckpt_{step:08d}.pt").is_file():
        references[spec["reference_label"]] = (args.reference, work / "uncond")
    else:
        print(f"{args.reference} has not reached step {step}: no unconditional reference", flush=True)
    if not args.assemble:
        for run, out in references.values():
            draw(out, f"run={run}", "n_samples=1000")
        evaluate_all([*folders.values(), *(out for _, out in references.values())], args.jobs)
    rows = []
    for w, out in folders.items():
        stored = np.load(out / "samples.npz")
        images, labels = stored["images_uint8"], stored["class_labels"]
        predicted = clf.predict(images.reshape(len(images), -1) / 255.0)
        record = json.loads((out / "sample.json").read_text())
        metrics = fid_of(out)
        per_class = {int(c): float((predicted[labels == c] == c).mean()) for c in range(10)}
        rows.append({"guidance": w, "fid": metrics["fid"], "kid_mean": metrics["kid_mean"],
                     "precision": metrics["precision"], "recall": metrics["recall"], "n": metrics["n"],
                     "n_reference": metrics["n_reference"], "accuracy": float((predicted == labels).mean()),
                     "accuracy_per_class": per_class, "nfe_per_image": record["nfe_per_image"],
                     "step": record["step"], "eval_seconds": metrics["seconds"]})
        print(f"w={w:g}: FID {metrics['fid']}, accuracy {rows[-1]['accuracy']:.3f}, NFE "
              f"{record['nfe_per_image']:g}", flush=True)
    reference_rows = []
    for label, (run, out) in references.items():
        stored = np.load(out / "samples.npz")
        predicted = clf.predict(stored["images_uint8"].reshape(len(stored["images_uint8"]), -1) / 255.0)
        metrics = fid_of(out)
        record = json.loads((out / "sample.json").read_text())
        reference_rows.append({"model": label, "run": str(run), "fid": metrics["fid"], "kid_mean": metrics["kid_mean"],
                               "precision": metrics["precision"], "recall": metrics["recall"],
                               "nfe_per_image": record["nfe_per_image"], "step": record["step"],
                               "predicted_class_counts": np.bincount(predicted, minlength=10).tolist()})
        print(f"{label}: FID {metrics['fid']}", flush=True)
    result = {"classifier": clf_record, "guidance_rule": "s = (1 + w)·s(x | c) − w·s(x) (dae_gen.guidance.Guided)",
              "sampler": "the run's own: EDM Heun, 18 steps (35 calls per image; 70 with CFG, w > 0)",
              "fid": "dae-gen-eval: TF-Inception pool3 FID of 1000 samples against the whole held-out test split",
              "rows": rows, "references": reference_rows}
    spec["results"].write_text(json.dumps({"dataset": args.dataset, **result}, indent=2) + "\n")
    plot(rows, reference_rows, spec["plot"], title=spec["title"])


def plot(rows: list[dict], references: list[dict], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, right) = plt.subplots(1, 2, figsize=(9, 4), dpi=120)
    right.plot([r["guidance"] for r in rows], [r["accuracy"] for r in rows], "o-", color="C0")
    right.set_xlabel("guidance w  (s = (1+w)·s(x|c) − w·s(x))")
    right.set_ylabel("accuracy of samples (classifier on real images)")
    right.set_title("class fidelity vs w")
    rows = [r for r in rows if r["fid"] is not None]
    references = [r for r in references if r["fid"] is not None]
    fids, accs = [r["fid"] for r in rows], [r["accuracy"] for r in rows]
    ax.plot(accs, fids, "o-", color="C0", label="class-conditional, CFG")
    for r in rows:
        ax.annotate(f"w={r['guidance']:g}", (r["accuracy"], r["fid"]), textcoords="offset points", xytext=(5, 5))
    for i, ref in enumerate(references):
        ax.axhline(ref["fid"], ls="--", color=f"C{i + 1}", label=f"{ref['model']}: FID {ref['fid']:.1f}")
    ax.set_xlabel("accuracy of samples (classifier on real images)")
    ax.set_ylabel("FID@1000 vs held-out split")
    ax.set_title(f"{title}: FID vs accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
