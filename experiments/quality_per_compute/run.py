"""Quality per CPU-minute: every method at an equal training budget, every sampler, FID@N vs NFE and CPU time.

Stages (each resumable: finished runs and table rows are kept and skipped):

    python experiments/quality_per_compute/run.py train  --dataset fmnist              # each method, equal budget
    python experiments/quality_per_compute/run.py table  --dataset fmnist              # FID, CPU-s / 1000, NFE
    python experiments/quality_per_compute/run.py sweep  --dataset fmnist              # FID vs NFE, one model
    python experiments/quality_per_compute/run.py report --dataset fmnist              # markdown table + plot
    python experiments/quality_per_compute/run.py all --dataset digits --budget-minutes 4

Training: each method's preset (plus the overrides below) for as many steps as fit the budget of CPU time on one
thread; the steps are set from a calibration run (two short runs, so start-up costs cancel), and the measured
CPU time of the real run is recorded. Sampling: ``n_samples`` images in batches of 250 with one thread; CPU
seconds (``time.process_time``) and network calls per image (``CountingModel``) are recorded, then FID against
the test split (TF-Inception pool3, reference statistics cached in ``--cache-dir``). Grids of the first 64
samples go to ``grids/``. ``--smoke`` shrinks everything (budget, samples, sweeps) to check the script in minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DAE_GEN_CACHE", Path.home() / ".cache" / "dae_gen")) / "fid_stats"

# Each method: the preset and overrides that make it a CPU model of the dataset (all on the dataset's own
# resolution, so one reference set serves every method).
METHODS = {
    "fmnist": {
        "ncsn": ["experiment=ncsn_fmnist_cpu"],
        "edm": ["experiment=edm_fmnist_cpu"],
        # the same preset trained and sampled under bf16 autocast (AMX on this CPU), for the same CPU-minutes
        "edm_bf16": ["experiment=edm_fmnist_cpu", "trainer.amp=bf16", "sampler.amp=bf16"],
        "mdsm": ["experiment=mdsm_fmnist", "dataset=fashion_mnist", "model.net.n_blocks=4", "model.net.channels=16",
                 "trainer.batch_size=64", "trainer.ckpt_every=500", "trainer.sample_every=0", "threads=1"],
        "ddegen": ["experiment=ddegen_digits", "dataset=fashion_mnist", "model.latent_dim=32", "trainer.batch_size=64",
                   "trainer.ckpt_every=200", "threads=1"],
    },
    "digits": {
        "ncsn": ["experiment=ncsn_digits"],
        "edm": ["experiment=edm_digits"],
        "mdsm": ["experiment=mdsm_digits"],
        "ddegen": ["experiment=ddegen_digits"],
    },
}

# Table rows: (method, label, sampler config name, sampler overrides).
EDM_ROWS = [  # every diffusion sampler on the EDM model, on both datasets
    ("edm", "heun 18 (preset)", None, {}),
    ("edm", "heun 9", "heun", {"n_steps": 9}),
    ("edm", "edm_stochastic 32", "edm_stochastic", {"n_steps": 32, "s_churn": 5.0}),
    ("edm", "pc 50", "pc", {"n_steps": 50}),
    ("edm", "ode rtol 1e-3", "ode", {"rtol": 1e-3, "atol": 1e-3}),
]
TABLE = {
    "fmnist": [
        ("ncsn", "annealed_langevin (preset)", None, {}),
        ("ncsn", "pc (own 10 levels)", "pc", {}),
        ("ncsn", "heun 18", "heun", {"n_steps": 18}),
        *EDM_ROWS,
        # bf16: the fp32 model sampled in bf16; the bf16-trained model sampled in bf16 (its preset) and in fp32
        ("edm", "heun 18, bf16 sampling", "heun", {"n_steps": 18, "amp": "bf16"}),
        ("edm_bf16", "heun 18 (preset, bf16 sampling)", None, {}),
        ("edm_bf16", "heun 18, fp32 sampling", "heun", {"n_steps": 18, "amp": "none"}),
        ("mdsm", "temperature_langevin 300", "temperature_langevin",
         {"n_steps_hot": 50, "n_steps_anneal": 200, "n_steps_cool": 50}),
        ("mdsm", "heun 18", "heun", {"n_steps": 18}),
        ("ddegen", "generator (preset)", None, {}),
    ],
    "digits": [
        ("ncsn", "annealed_langevin (preset)", None, {}),
        ("ncsn", "pc (own 20 levels)", "pc", {}),
        ("ncsn", "heun 18", "heun", {"n_steps": 18}),
        *EDM_ROWS,
        ("mdsm", "temperature_langevin (preset)", None, {}),
        ("ddegen", "generator (preset)", None, {}),
    ],
}

# FID vs NFE on the EDM model: every sampler over its own knob.
SWEEP = {
    "heun": [("n_steps", v, {}) for v in (3, 5, 9, 13, 18)],
    "edm_stochastic": [("n_steps", v, {"s_churn": round(v * 0.156, 1)}) for v in (18, 32)],  # 32: S_churn 5
    "dpm_solver_2m": [("n_steps", v, {}) for v in (10, 15, 20)],  # N steps = N calls
    "euler_ancestral": [("n_steps", v, {}) for v in (20, 35)],
    "pc": [("n_steps", v, {}) for v in (25, 50)],
    "ode": [("rtol", v, {"atol": v}) for v in (1e-2, 1e-3)],
    "annealed_langevin": [("n_steps_each", v, {"step_lr": 8e-7, "init": "gaussian"}) for v in (1,)],
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from dae_gen.cli.common import open_sampler_overrides  # sampler.KEY=VALUE as dae-gen-train takes it

    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=open_sampler_overrides(overrides))


def common_overrides() -> list[str]:
    # the trainer always ends with a grid: one sample keeps its cost out of the training budget
    return ["threads=1", "device=cpu", "trainer.progress=false", "trainer.tensorboard=false",
            "trainer.sample_every=0", "trainer.n_samples=1", "trainer.log_every=100"]


def cpu_train(overrides: list[str], run_dir: Path) -> float:
    """Train in ``run_dir`` (fresh) and return the CPU seconds it took."""
    from dae_gen.cli.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.process_time()
    train(compose(overrides), run_dir)
    return time.process_time() - started


def train_method(dataset: str, method: str, *, budget_minutes: float, out: Path, calibrate_steps: int,
                 steps: int | None = None) -> dict:
    """Calibrate seconds per step, then train for the budget; writes and returns ``train.json``. ``steps``: train
    exactly that many steps instead (a recorded budget, to train the same model again without calibrating)."""
    run_dir = out / "runs" / dataset / method
    record = run_dir / "train.json"
    if record.is_file():
        return json.loads(record.read_text())
    base = METHODS[dataset][method] + common_overrides()
    if steps is not None:
        seconds = cpu_train(base + [f"trainer.steps={steps}"], run_dir)
        result = {"method": method, "overrides": base, "steps": steps, "calibrated_cpu_s_per_step": None,
                  "cpu_minutes": seconds / 60, "budget_minutes": budget_minutes, "steps_given": True}
        record.write_text(json.dumps(result, indent=2))
        return result
    scratch = out / "runs" / dataset / f".{method}_calibration"
    short = cpu_train(base + [f"trainer.steps={calibrate_steps}", f"trainer.ckpt_every={calibrate_steps}"], scratch)
    long = cpu_train(base + [f"trainer.steps={3 * calibrate_steps}", f"trainer.ckpt_every={3 * calibrate_steps}"],
                     scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    # start-up (data, Inception-free imports, the first grid) cancels in the difference; on a noisy machine the
    # difference can come out too small, so it is bounded below by half the long run's mean cost per step
    per_step = max((long - short) / (2 * calibrate_steps), 0.5 * long / (3 * calibrate_steps))
    steps = max(1, int(budget_minutes * 60 / per_step))
    seconds = cpu_train(base + [f"trainer.steps={steps}"], run_dir)
    result = {"method": method, "overrides": base, "steps": steps, "calibrated_cpu_s_per_step": per_step,
              "cpu_minutes": seconds / 60, "budget_minutes": budget_minutes}
    record.write_text(json.dumps(result, indent=2))
    return result


class Evaluator:
    """FID of uint8 samples against the dataset's test split (statistics cached), sharing one Inception net."""

    def __init__(self, run, *, cache_dir: Path):
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from dae_gen.metrics.evaluate import dataset_reference
        from dae_gen.metrics.inception import InceptionFeatures

        self.extractor = InceptionFeatures(None, device="cpu")
        self.data = instantiate({**OmegaConf.to_container(run.config.dataset, resolve=True), "split": "test"})
        self.reference = dataset_reference(self.data, split="test", n_reference=None, seed=0, cache_dir=cache_dir,
                                           extractor=self.extractor)

    def fid(self, images_uint8) -> dict:
        from dae_gen.metrics.evaluate import evaluate_samples

        metrics = evaluate_samples(images_uint8, reference=self.reference, extractor=self.extractor,
                                   kid_subset_size=min(1000, len(images_uint8), self.reference.n))
        return {**metrics, "n_reference": self.reference.n}


def sample_and_score(run, evaluator: Evaluator, sampler: str | None, overrides: dict, *, n: int, grid: Path) -> dict:
    """Draw ``n`` samples with one thread, timing CPU and counting network calls; FID; a grid of the first 64."""
    from dae_gen.metrics.inception import quantize
    from dae_gen.samplers import CountingModel, draw_samples

    driver, settings = run.sampler(sampler, **overrides)
    counted = CountingModel(run.model)
    started = time.process_time()
    samples = draw_samples(counted, driver, n, batch_size=250, seed=0)
    cpu_s = time.process_time() - started
    grid.parent.mkdir(parents=True, exist_ok=True)
    run.save_grid(samples[:64], grid)
    metrics = evaluator.fid(quantize(run.to_unit(samples)))
    return {**metrics, "nfe_per_image": counted.nfe_per_image(n), "cpu_s_per_1000": cpu_s * 1000 / n,
            "sampler": {k: v for k, v in settings.items() if k != "_partial_"}}


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_results(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2, default=str))


def real_data_floor(dataset: str, *, out: Path, n: int) -> dict:
    """FID of the first ``n`` real training images against the test split: the floor at this N."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dae_gen.run import load_run

    run = load_run(next(p.parent for p in sorted((out / "runs" / dataset).glob("*/train.json"))))
    evaluator = Evaluator(run, cache_dir=CACHE)
    train = instantiate({**OmegaConf.to_container(run.config.dataset, resolve=True), "split": "train"})
    images = torch.as_tensor(train.images[:n])
    return {"method": "real", "label": "train split", **evaluator.fid(images), "nfe_per_image": 0.0,
            "cpu_s_per_1000": 0.0, "train": {"steps": 0, "cpu_minutes": 0.0}}


def table(dataset: str, *, out: Path, n: int, methods: list[str]) -> None:
    from dae_gen.run import load_run

    path = out / "results" / f"{dataset}_table.json"
    rows = load_results(path)
    done = {(r["method"], r["label"]) for r in rows}
    evaluator = None
    if ("real", "train split") not in done and any((out / "runs" / dataset / m / "train.json").is_file()
                                                   for m in methods):
        rows.append(real_data_floor(dataset, out=out, n=n))  # the FID a perfect model gets at this N
        save_results(path, rows)
    for method, label, sampler, overrides in TABLE[dataset]:
        run_dir = out / "runs" / dataset / method
        if method not in methods or (method, label) in done or not (run_dir / "train.json").is_file():
            continue
        run = load_run(run_dir)
        evaluator = evaluator or Evaluator(run, cache_dir=CACHE)
        grid = out / "grids" / f"{dataset}_{method}_{re.sub(r'[^A-Za-z0-9.-]+', '_', label.split(' (')[0])}.png"
        row = {"method": method, "label": label, **sample_and_score(run, evaluator, sampler, overrides, n=n, grid=grid),
               "grid": str(grid.relative_to(out)), "train": json.loads((run_dir / "train.json").read_text())}
        save_results(path, load_results(path) + [row])  # re-read: a second process may fill other methods' rows
        print(f"{dataset} {method:7s} {label:32s} FID {row['fid']:7.2f}  NFE {row['nfe_per_image']:7.1f}  "
              f"CPU-s/1000 {row['cpu_s_per_1000']:8.1f}", flush=True)


def sweep(dataset: str, *, out: Path, n: int, smoke: bool, reverse: bool = False) -> None:
    from dae_gen.run import load_run

    path = out / "results" / f"{dataset}_sweep.json"
    rows = load_results(path)
    done = {(r["sampler_name"], r["knob_value"]) for r in rows}
    run = load_run(out / "runs" / dataset / "edm")
    evaluator = None
    # a point the table already measured on this model (same sampler, same settings, same N) is taken from it
    measured = [r for r in load_results(out / "results" / f"{dataset}_table.json") if r["method"] == "edm"]
    todo = [(name, point) for name, points in SWEEP.items() for point in (points[:2] if smoke else points)]
    for name, (knob, value, extra) in reversed(todo) if reverse else todo:
        # re-read: a second process (``--reverse``) may have measured this point meanwhile
        if (name, value) in done or (name, value) in {(r["sampler_name"], r["knob_value"]) for r in load_results(path)}:
            continue
        _, settings = run.sampler(name, **{knob: value, **extra})
        settings = {k: v for k, v in settings.items() if k != "_partial_"}
        same = [r for r in measured if r["sampler"] == settings and r["n"] == n]
        if same:
            row = {"sampler_name": name, "knob": knob, "knob_value": value, "from_table": same[0]["label"],
                   **{k: v for k, v in same[0].items() if k not in ("method", "label", "train")}}
        else:
            evaluator = evaluator or Evaluator(run, cache_dir=CACHE)
            grid = out / "grids" / "sweep" / f"{dataset}_{name}_{knob}_{value}.png"
            row = {"sampler_name": name, "knob": knob, "knob_value": value,
                   **sample_and_score(run, evaluator, name, {knob: value, **extra}, n=n, grid=grid),
                   "grid": str(grid.relative_to(out))}
        save_results(path, load_results(path) + [row])
        print(f"{dataset} sweep {name:18s} {knob}={value:<8g} FID {row['fid']:7.2f}  NFE "
              f"{row['nfe_per_image']:7.1f}  CPU-s/1000 {row['cpu_s_per_1000']:8.1f}", flush=True)


def report(dataset: str, *, out: Path) -> None:
    """Print the markdown table and draw FID vs NFE."""
    rows = load_results(out / "results" / f"{dataset}_table.json")
    if rows:
        print("| method | sampler | FID@N | N | NFE / image | sampling CPU-s / 1000 | training steps "
              "| training CPU-min |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in sorted(rows, key=lambda r: r["fid"]):
            print(f"| {r['method']} | {r['label']} | {r['fid']:.1f} | {r['n']} | {r['nfe_per_image']:.0f} | "
                  f"{r['cpu_s_per_1000']:.0f} | {r['train']['steps']} | {r['train']['cpu_minutes']:.1f} |")
    points = load_results(out / "results" / f"{dataset}_sweep.json")
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 4))
    for name in SWEEP:
        mine = sorted((p["nfe_per_image"], p["fid"]) for p in points if p["sampler_name"] == name)
        if mine:
            ax.plot(*zip(*mine), marker="o", label=name)
    floor = [r["fid"] for r in rows if r["method"] == "real"]
    if floor:
        ax.axhline(floor[0], color="grey", linestyle="--", label=f"real data (N = {points[0]['n']})")
    baseline = [r for r in rows if r["method"] == "ncsn" and "preset" in r["label"]]
    if baseline:
        ax.plot([baseline[0]["nfe_per_image"]], [baseline[0]["fid"]], marker="*", markersize=12, linestyle="none",
                color="black", label="NCSN model + its annealed Langevin")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, ticks in ((ax.xaxis, (3, 5, 10, 20, 50, 100, 200, 500, 1000, 3000)),
                        (ax.yaxis, (10, 15, 20, 30, 50, 100, 200, 300, 500))):
        axis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("network calls per image (NFE)")
    ax.set_ylabel(f"FID@{points[0]['n']} vs test split")
    ax.set_title(f"{dataset}: every sampler on one EDM model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / f"fid_vs_nfe_{dataset}.png", dpi=120)
    print(f"wrote {out / f'fid_vs_nfe_{dataset}.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "table", "sweep", "report", "all"])
    parser.add_argument("--dataset", choices=sorted(METHODS), default="fmnist")
    parser.add_argument("--methods", nargs="+", default=None, help="default: all of the dataset's methods")
    parser.add_argument("--budget-minutes", type=float, default=None, help="CPU-minutes (fmnist 20, digits 4)")
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--calibrate-steps", type=int, default=30)
    parser.add_argument("--steps", type=int, default=None,
                        help="train: exactly this many steps per method, no calibration (e.g. a recorded budget)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--reverse", action="store_true", help="sweep: last point first (a second process)")
    parser.add_argument("--smoke", action="store_true", help="tiny budget and sample counts, to test the script")
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = args.methods or list(METHODS[args.dataset])
    budget = args.budget_minutes or {"fmnist": 20.0, "digits": 4.0}[args.dataset]
    n, calibrate = args.n_samples, args.calibrate_steps
    if args.smoke:
        budget, n, calibrate = min(budget, 0.2), min(n, 32), 4
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    (args.out / "results").mkdir(exist_ok=True)
    (args.out / "results" / "machine.json").write_text(json.dumps(machine, indent=2))
    if args.stage in ("train", "all"):
        for method in methods:
            result = train_method(args.dataset, method, budget_minutes=budget, out=args.out, calibrate_steps=calibrate,
                                  steps=args.steps)
            print(f"{args.dataset} {method}: {result['steps']} steps, {result['cpu_minutes']:.1f} CPU-min", flush=True)
    if args.stage in ("table", "all"):
        table(args.dataset, out=args.out, n=n, methods=methods)
    if args.stage in ("sweep", "all") and "edm" in methods:
        sweep(args.dataset, out=args.out, n=n, smoke=args.smoke, reverse=args.reverse)
    if args.stage in ("report", "all"):
        report(args.dataset, out=args.out)


if __name__ == "__main__":
    main()
