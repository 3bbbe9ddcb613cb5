"""The CPU benchmark table: `dae-gen-bench` on every published preset and the A/B comparisons, one record each.

    python experiments/bench/run.py                 # everything (about an hour on 2 idle cores); records/*.json
    python experiments/bench/run.py --only mdsm_fmnist threads_main_job
    python experiments/bench/run.py --table         # print the README's tables from records/

Every figure comes from a `dae-gen-bench` record (the command is stored in it). Run it on a quiet machine:
absolute times on a shared one are pessimistic (ratios of interleaved settings are more robust).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "records"
BENCH = [os.path.join(os.path.dirname(sys.executable), "dae-gen-bench")]

#: name: dae-gen-bench arguments. The published presets at their own batch sizes; their full runs are GPU jobs,
#: so one timed step per round is enough on a CPU.
PRESETS = {
    "main_job": ["experiment=edm_digits"],
    "ncsn_digits": ["experiment=ncsn_digits"],  # the default composition (dae-gen-train with no preset)
    "ncsn_fmnist_cpu": ["experiment=ncsn_fmnist_cpu"],
    "ncsn_cifar10": ["experiment=ncsn_cifar10"],
    "ncsnv2_cifar10": ["experiment=ncsnv2_cifar10"],
    "ncsnv2_celeba64": ["experiment=ncsnv2_celeba64", "bench.rounds=2"],
    "mdsm_fmnist": ["experiment=mdsm_fmnist"],
    "mdsm_cifar10": ["experiment=mdsm_cifar10", "bench.rounds=2"],
    "ddegen_celeba32": ["experiment=ddegen_celeba32"],
    "dae_fmnist": ["experiment=dae_fmnist"],
}
def amp_comparisons(name: str, *, rounds: int, preset: str | None = None, sampler_extra=()) -> dict[str, list[str]]:
    """``amp_train_<name>`` and ``amp_sampler_<name>``: fp32 against bf16 autocast on one thread, for the trainer's
    step and the sampler's step of ``preset`` (default: ``name``), each timed on its own."""
    head, tail = [f"experiment={preset or name}"], ["threads=1", f"bench.rounds={rounds}"]
    return {f"amp_train_{name}": [*head, "compare=trainer.amp", "values=[none,bf16]", "bench.sample=false", *tail],
            f"amp_sampler_{name}": [*head, "compare=sampler.amp", "values=[none,bf16]", "bench.train=false",
                                    *sampler_extra, *tail]}


#: name: an interleaved A/B comparison (ratios in the record).
COMPARISONS = {
    "threads_main_job": ["experiment=edm_digits", "compare=threads", "values=[1,2]"],
    "threads_mdsm_fmnist": ["experiment=mdsm_fmnist", "compare=threads", "values=[1,2]"],
    "channels_last_main_job": ["experiment=edm_digits", "compare=model.net.channels_last", "values=[false,true]"],
    "channels_last_mdsm_fmnist": ["experiment=mdsm_fmnist", "compare=model.net.channels_last",
                                  "values=[false,true]", "bench.sample=false"],
    "compile_ncsn_fmnist_cpu": ["experiment=ncsn_fmnist_cpu", "compare=trainer.compile", "values=[false,true]",
                                "threads=1"],
    # bf16 autocast (dae_gen.precision), one thread: the trainer's precision and the sampler's, each on its own
    **amp_comparisons("mdsm_fmnist", rounds=5, sampler_extra=["bench.sample_batch=64"]),
    **amp_comparisons("mdsm_digits", rounds=7),
    **amp_comparisons("main_job", preset="edm_digits", rounds=7),
    # the NCSN digits U-Net (the default composition; the main job before edm_digits)
    **amp_comparisons("ncsn_digits", rounds=7),
    **amp_comparisons("edm_fmnist_cpu", rounds=7),
}


def run(name: str, args: list[str], records: Path) -> None:
    records.mkdir(parents=True, exist_ok=True)
    cmd = [*BENCH, *args, f"bench.out={records / name}.json", f"hydra.run.dir=outputs/bench/{name}"]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def load(name: str, records: Path) -> dict | None:
    path = records / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def seconds(s: float) -> str:
    from dae_gen.benchmark import human_seconds

    return human_seconds(s)


def table(records: Path = RECORDS) -> str:
    rows = ["| preset | data | threads | train step (batch) | images/s | sampler step (batch) | calls × images/s | "
            "s/image (chain) | peak RSS train / sample | projected full run on this CPU |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in PRESETS:
        record = load(name, records)
        if record is None:
            continue
        s = record["settings"][0]
        t, smp, p, m = s.get("train", {}), s.get("sampler", {}), s.get("projection", {}), s["memory"]
        rows.append(
            f"| `{name}` | {record['data']['source']} | {record['threads']['threads']} | "
            f"{seconds(t['step_s'])} ({t['batch_size']}) | {t['images_per_s']:.3g} | "
            f"{seconds(smp['step_s'])} ({smp['batch']}) | {smp['network_images_per_s']:.3g} | "
            f"{smp['s_per_image']:.3g} ({smp['chain_steps']} steps) | "
            f"{m.get('train_peak_mb', 0):.0f} / {m.get('sampler_peak_mb', 0):.0f} MB | {seconds(p['total_s'])} |")
    rows += ["", "| comparison | setting A → B | train-step speed-up, wall / CPU time | "
             "sampler-step speed-up, wall / CPU time |", "|---|---|---|---|"]

    def speedup(ratio: dict, what: str) -> str:
        if what not in ratio:
            return "–"
        return f"{ratio[what]:.2f}× / {ratio[what + '_cpu']:.2f}×" if what + "_cpu" in ratio else f"{ratio[what]:.2f}×"

    for name in COMPARISONS:
        record = load(name, records)
        if record is None:
            continue
        labels = [s["label"] for s in record["settings"]]
        for label, ratio in record["ratios"].items():
            rows.append(f"| `{name}` | {labels[0]} → {label} | {speedup(ratio, 'train_step')} | "
                        f"{speedup(ratio, 'sampler_step')} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", help="names from PRESETS / COMPARISONS")
    parser.add_argument("--table", action="store_true", help="print the tables from records/ and stop")
    parser.add_argument("--records", type=Path, default=RECORDS, help="where the JSON records go")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every command (smoke tests)")
    args = parser.parse_args()
    if not args.table:
        jobs = {**PRESETS, **COMPARISONS}
        for name in args.only or jobs:
            run(name, [*jobs[name], *args.extra], args.records)
    print(table(args.records))


if __name__ == "__main__":
    main()
