"""``dae-gen-bench``: how fast any preset trains and samples on this machine, and how long its full run would take.

Examples::

    dae-gen-bench experiment=mdsm_fmnist                        # one preset: table + <run dir>/bench.json
    dae-gen-bench experiment=ncsn_cifar10 bench.sample=false    # training only
    dae-gen-bench compare=threads values=[1,2]                  # interleaved A/B of one config key, with ratios
    dae-gen-bench experiment=ncsn_cifar10 compare=trainer.compile values=[false,true]
    dae-gen-bench experiment=mdsm_fmnist compare=sampler.amp values=[none,bf16] bench.train=false   # precision

The config is composed exactly as ``dae-gen-train`` composes it (``configs/bench.yaml`` includes ``train.yaml``).
Training is timed through the real :meth:`Trainer.train_step`, sampling through the preset's real sampler driver
stopped after a few steps (its chain is extrapolated); both after untimed warm-up, in interleaved rounds, as
medians. Presets whose data cannot be had offline (CIFAR-10, CelebA) run on fake data written in the real on-disk
format (``dae_gen.data.fakes``); the record says so.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dae_gen import benchmark as B
from dae_gen.cli.checks import building, check_arguments, check_threads, set_threads
from dae_gen.cli.launch import CONFIG_PATH, command_line, removed_if_refused, reports_user_errors, run_cli
from dae_gen.cli.train import build_grid_sampler, build_model, build_trainer, check_trainer_node
from dae_gen.distributed import resolve_device
from dae_gen.errors import ConfigError, DataError
from dae_gen.precision import bf16_support, driver_amp, resolve_amp
from dae_gen.threads import busy_cores

#: How many fake images to write when a preset's data is missing (enough for any preset's batch).
FAKE_IMAGES = 512


# -- data ------------------------------------------------------------------------------------------------
def bench_data(dataset_cfg: DictConfig, *, mode: str, scratch: Path) -> tuple[Any, dict]:
    """The preset's dataset, or, when it cannot be loaded and ``mode`` is ``auto``, fake CIFAR-10 / CelebA in the
    real on-disk format (read by the real loader). Returns the dataset and what the record says about it."""
    if mode not in ("auto", "real"):
        raise ConfigError(f"bench.data must be 'auto' or 'real', got {mode!r}")
    try:
        with building("dataset"):  # unwraps the loader's DataError from Hydra's InstantiationException
            data = instantiate(dataset_cfg)
        return data, {"source": "real", "name": data.info.name, "shape": list(data.shape), "n": len(data)
                      if hasattr(data, "__len__") else None}
    except DataError as err:
        target = str(dataset_cfg.get("_target_", ""))
        kind = next((k for k in ("cifar10", "celeba") if target.endswith(f".{k}")), None)
        if mode == "real" or kind is None:
            raise
        from dae_gen.data.fakes import write_fake_celeba, write_fake_cifar10

        root = scratch / "fake_data"
        if kind == "cifar10":
            write_fake_cifar10(root, n_train=FAKE_IMAGES, n_test=16)
        else:
            write_fake_celeba(root, n=FAKE_IMAGES)
        fake_cfg = OmegaConf.merge(dataset_cfg, {"root": str(root), "download": False})
        if kind == "celeba":
            fake_cfg = OmegaConf.merge(fake_cfg, {"cache_dir": str(root)})
        with building("dataset"):
            data = instantiate(fake_cfg)
        note = (f"the preset's data could not be loaded ({err}); timed on {len(data)} fake {kind} images written in "
                "the real on-disk format by dae_gen.data.fakes and read by the real loader (same shapes, so the "
                "same cost per step)")
        return data, {"source": "fake", "name": data.info.name, "shape": list(data.shape), "n": len(data),
                      "note": note}


# -- settings to compare -----------------------------------------------------------------------------------
def variant_configs(cfg: DictConfig) -> list[tuple[str, DictConfig, dict]]:
    """``(label, config, overrides)`` per setting: the preset alone, or one per value of ``compare``."""
    if cfg.get("compare") is None:
        if cfg.get("values") is not None:
            raise ConfigError("values=[...] needs compare=KEY (the config key the values are for)")
        return [("preset", cfg, {})]
    key = str(cfg.compare)
    values = cfg.get("values")
    if values is None or not OmegaConf.is_list(values) or len(values) < 2:
        raise ConfigError(f"compare={key} needs at least two settings, e.g. values=[1,2]; got values={values}")
    parent = OmegaConf.select(cfg, key.rpartition(".")[0]) if "." in key else cfg
    if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not (
            OmegaConf.is_dict(parent) and "_target_" in parent):
        raise ConfigError(f"compare={key}: no such key in the composed config; compare an existing key such as "
                          "threads, trainer.compile, trainer.amp, sampler.amp, trainer.batch_size, or an argument of a "
                          "_target_ node such as model.net.channels_last")
    variants = []
    for value in OmegaConf.to_container(values, resolve=True):
        variant = copy.deepcopy(cfg)
        with open_dict(variant):  # a constructor argument the config leaves at its default may be added
            OmegaConf.update(variant, key, value, merge=False, force_add=True)
        try:  # the compared key must be a setting of its node, with a value of its type
            plain = OmegaConf.to_container(variant, resolve=True)
            check_arguments(plain, skip=("sampler", "trainer"))
            check_trainer_node(plain["trainer"])
        except ConfigError as err:
            raise ConfigError(f"compare={key} values={list(values)}: {err}") from err
        variants.append((f"{key}={value}", variant, {key: value}))
    return variants


class Setting:
    """One setting's objects: its model, trainer and sampler, built as ``dae-gen-train`` builds them."""

    def __init__(self, label: str, cfg: DictConfig, overrides: dict, *, data, device: torch.device, scratch: Path):
        self.label, self.cfg, self.overrides = label, cfg, overrides
        self.threads = overrides.get("threads")
        self.model = build_model(cfg, data)  # everything as dae-gen-train builds it
        self.sampler, _ = build_grid_sampler(cfg, self.model)
        self.trainer, _ = build_trainer(cfg, model=self.model, data=data, run_dir=scratch / "run", device=device,
                                        progress=False, tensorboard=False)  # steps only: its hooks never run
        self.sample_batch = int(cfg.bench.sample_batch or cfg.trainer.n_samples)
        self.effective = {"amp": self.trainer.amp, "sampler_amp": resolve_amp(driver_amp(self.sampler), device),
                          "compile": bool(cfg.trainer.compile), "batch_size": self.trainer.batch_size}
        self.train_rounds: list[tuple[float, float]] = []
        self.sampler_rounds: list[B.SamplerSteps] = []
        self.warmup_s: dict[str, float] = {}
        self.memory: dict[str, float] = {}

    def use_threads(self, default: int) -> None:
        """This setting's thread count (``compare=threads``), else the one the threads rule chose."""
        torch.set_num_threads(default if self.threads in (None, "auto") else int(self.threads))


def measure(settings: list[Setting], cfg: DictConfig, *, device: torch.device, threads: int) -> None:
    """Warm up every setting, then time them in interleaved rounds (A B A B ...) with peak memory."""
    opts = cfg.bench
    memory = B.PeakMemory(device)
    for setting in settings:
        setting.use_threads(threads)
        if opts.train:
            memory.start()
            setting.warmup_s["train_step"], _ = B.time_train_steps(setting.trainer.train_step,
                                                                   max(1, int(opts.warmup)), device=device)
            setting.memory["train_peak_mb"] = memory.peak_mb()
        if opts.sample:
            memory.start()
            for _ in range(max(1, int(opts.warmup))):
                first = B.time_sampler_steps(setting.sampler, setting.model, setting.sample_batch,
                                             steps=int(opts.sampler_steps))
            setting.warmup_s["sampler_step"] = first.step_s
            setting.memory["sampler_peak_mb"] = memory.peak_mb()
    setting_steps = {}
    for setting in settings:  # steps per round from the warm-up speed, the same for every setting
        setting_steps[setting.label] = B.steps_for(setting.warmup_s.get("train_step", 0.0),
                                                   min_steps=int(opts.train_steps), target_s=float(opts.round_s))
    train_steps = min(setting_steps.values())
    sample_steps = max(int(opts.sampler_steps), 2)
    if opts.sample:
        fastest = min(s.warmup_s["sampler_step"] for s in settings)
        sample_steps = B.steps_for(fastest, min_steps=sample_steps, target_s=float(opts.round_s))
    for _ in range(int(opts.rounds)):
        for setting in settings:
            setting.use_threads(threads)
            if opts.train:
                setting.train_rounds.append(B.time_train_steps(setting.trainer.train_step, train_steps, device=device))
        for setting in settings:
            setting.use_threads(threads)
            if opts.sample:
                setting.sampler_rounds.append(B.time_sampler_steps(setting.sampler, setting.model,
                                                                   setting.sample_batch, steps=sample_steps))
    torch.set_num_threads(threads)


def summarise(setting: Setting) -> dict:
    """The record of one setting: medians, throughputs and the projected full run."""
    tcfg = setting.cfg.trainer
    out: dict[str, Any] = {"label": setting.label, "overrides": setting.overrides, "effective": setting.effective,
                           "threads": setting.threads, "warmup_s": setting.warmup_s, "memory": setting.memory}
    train_step_s = None
    if setting.train_rounds:
        walls = [w for w, _ in setting.train_rounds]
        train_step_s = B.median(walls)
        batch = setting.trainer.batch_size
        out["train"] = {"step_s": train_step_s, "cpu_s_per_step": B.median([c for _, c in setting.train_rounds]),
                        "images_per_s": batch / train_step_s, "batch_size": batch,
                        "optimizer_steps_per_step": sum(int(r) for _, r in setting.model.phases),
                        "rounds_s": walls}
    grid_s = eval_s = None
    if setting.sampler_rounds:
        runs = setting.sampler_rounds
        step_s = B.median([r.step_s for r in runs])
        batch = setting.sample_batch
        chain_steps, calls = runs[0].chain_steps, runs[0].calls_per_step
        chain_s = B.median([r.chain_s for r in runs])
        out["sampler"] = {"target": str(setting.cfg.sampler.get("_target_")), "batch": batch, "step_s": step_s,
                          "cpu_s_per_step": B.median([r.cpu_step_s for r in runs]),
                          "calls_per_step": calls, "network_images_per_s": calls * batch / step_s,
                          "chain_steps": chain_steps, "chain_s": chain_s, "chain_measured": runs[0].completed,
                          "s_per_image": chain_s / batch, "sample_10k_s": chain_s / batch * 10_000,
                          "rounds_s": [r.step_s for r in runs]}
        grid_s = chain_s * -(-int(tcfg.n_samples) // batch)  # the grid's batches of `batch`
        metrics = setting.cfg.get("metrics")
        if metrics and int(tcfg.eval_every):
            eval_s = chain_s / batch * int(metrics.n_samples)
    if train_step_s is not None:
        out["projection"] = B.project_run(steps=int(tcfg.steps), train_step_s=train_step_s,
                                          sample_every=int(tcfg.sample_every), grid_s=grid_s,
                                          eval_every=int(tcfg.eval_every), eval_s=eval_s).as_dict()
    return out


def ratios(records: list[dict]) -> dict:
    """Speed-up of every setting over the first: time of the first / time of this one (> 1: faster).

    ``*_cpu`` are the same ratios of process CPU time per step: less disturbed by other processes on a shared
    machine, but a speed ratio only between settings with the same thread count (CPU time adds up threads).
    """
    first = records[0]
    result = {}
    for rec in records[1:]:
        entry = {}
        for part in ("train", "sampler"):
            if part in rec and part in first:
                entry[f"{part}_step"] = first[part]["step_s"] / rec[part]["step_s"]
                entry[f"{part}_step_cpu"] = first[part]["cpu_s_per_step"] / rec[part]["cpu_s_per_step"]
        result[rec["label"]] = entry
    return result


# -- output ------------------------------------------------------------------------------------------------
def table(record: dict) -> str:
    """A one-screen summary of a record."""
    hs = B.human_seconds
    settings = record["settings"]
    labels = [s["label"] for s in settings]
    width = max(22, *(len(label) + 2 for label in labels))
    lines = [record["command_line"],
             f"device {record['machine']['device']} ({record['machine']['cpu']}, {record['machine']['cpu_count']} "
             f"cores; {record['threads']['summary']})",
             f"data: {record['data']['source']} {record['data']['name']} {tuple(record['data']['shape'])}"]
    if record["data"]["source"] != "real":
        lines.append("      (fake images in the real on-disk format: the preset's data could not be loaded here; "
                     "same shapes, same cost)")
    lines.append("")
    lines.append(f"{'':34}" + "".join(f"{label:>{width}}" for label in labels))

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"{name:34}" + "".join(f"{c:>{width}}" for c in cells))

    precision = {"none": "fp32", "bf16": "bf16"}
    row("precision: train / sampler", [f"{precision[s['effective']['amp']]} / "
                                       f"{precision[s['effective']['sampler_amp']]}" for s in settings])
    if all("train" in s for s in settings):
        t0 = settings[0]["train"]
        row(f"train step (batch {t0['batch_size']})", [hs(s["train"]["step_s"]) for s in settings])
        row("  images / s", [f"{s['train']['images_per_s']:.4g}" for s in settings])
    if all("sampler" in s for s in settings):
        s0 = settings[0]["sampler"]
        row(f"sampler step (batch {s0['batch']})", [hs(s["sampler"]["step_s"]) for s in settings])
        row("  network calls × images / s", [f"{s['sampler']['network_images_per_s']:.4g}" for s in settings])
        row(f"  chain ({s0['chain_steps']} steps)", [hs(s["sampler"]["chain_s"]) for s in settings])
        row("  seconds per image", [f"{s['sampler']['s_per_image']:.4g}" for s in settings])
        row("  10k samples (FID-10k)", [hs(s["sampler"]["sample_10k_s"]) for s in settings])
    for key, name in (("train_peak_mb", "peak memory, training"), ("sampler_peak_mb", "peak memory, sampling")):
        if all(key in s["memory"] for s in settings):
            row(f"{name} ({record['memory_kind']})", [f"{s['memory'][key]:.0f} MB" for s in settings])
    if all("projection" in s for s in settings):
        p0 = settings[0]["projection"]
        row(f"projected full run ({p0['steps']} steps)", [hs(s["projection"]["total_s"]) for s in settings])
        row(f"  of which {p0['n_grids']} grids, {p0['n_evals']} evals",
            [hs(s["projection"]["grids_s"] + s["projection"]["evals_s"]) for s in settings])
    for label, entry in record.get("ratios", {}).items():
        parts = [f"{part} step {entry[f'{part}_step']:.3f}× (CPU time {entry[f'{part}_step_cpu']:.3f}×)"
                 for part in ("train", "sampler") if f"{part}_step" in entry]
        lines.append(f"speed-up of {label} over {labels[0]}: " + ", ".join(parts))
    for note in record["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def bench(cfg: DictConfig, out_dir: str | Path, *, command_line: str = "", preset: str | None = None) -> dict:
    """Measure the composed preset (and the settings of ``compare``), write the JSON record, return it."""
    check_threads(cfg.get("threads"))
    device = torch.device(resolve_device(cfg.device))
    out_dir = Path(out_dir)
    notes: list[str] = []
    busy_at_start = busy_cores()
    with tempfile.TemporaryDirectory(prefix="dae_gen_bench_") as scratch_name:
        scratch = Path(scratch_name)
        data, data_record = bench_data(cfg.dataset, mode=str(cfg.bench.data), scratch=scratch)
        settings = [Setting(label, variant, overrides, data=data, device=device, scratch=scratch)
                    for label, variant, overrides in variant_configs(cfg)]
        first = settings[0]
        workload = (B.training_workload(first.model, batch_size=first.trainer.batch_size, device=device,
                                        amp=first.trainer.amp)
                    if cfg.bench.train else
                    B.sampler_workload(first.sampler, first.model, batch=first.sample_batch))
        choice = set_threads(cfg.get("threads"), workload=workload, device=device)
        measure(settings, cfg, device=device, threads=choice.threads)
    records = [summarise(setting) for setting in settings]
    for setting in settings:
        asked = {"trainer.amp": setting.cfg.trainer.amp, "sampler.amp": driver_amp(setting.sampler)}
        used = {"trainer.amp": setting.effective["amp"], "sampler.amp": setting.effective["sampler_amp"]}
        fell_back = [key for key in asked if asked[key] != used[key]]
        if fell_back:
            notes.append(f"{setting.label}: {' and '.join(f'{k}={asked[k]}' for k in fell_back)} ran in fp32: "
                         f"{bf16_support(device.type)[1]}")
            break
    if busy_at_start >= 0.5:
        notes.append(f"{busy_at_start:.1f} cores were busy with other processes at the start: absolute times are "
                     "pessimistic; ratios of interleaved settings are more robust")
    record = {
        "command_line": command_line,
        "preset": preset,
        "machine": {**B.machine_info(device), "busy_cores_at_start": busy_at_start},
        "threads": {**choice.as_dict(), "summary": str(choice)},
        "data": data_record,
        "bench": OmegaConf.to_container(cfg.bench, resolve=True),
        "compare": {"key": cfg.compare, "values": OmegaConf.to_container(cfg["values"], resolve=True)}
        if cfg.get("compare") else None,
        "memory_kind": B.PeakMemory(device).kind,
        "settings": records,
        "notes": notes,
    }
    if len(records) > 1:
        record["ratios"] = ratios(records)
    path = Path(cfg.bench.out) if cfg.bench.get("out") else out_dir / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    record["path"] = str(path)
    return record


@hydra.main(config_path=CONFIG_PATH, config_name="bench", version_base="1.3")
@reports_user_errors
def app(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    with removed_if_refused(Path(hydra_cfg.runtime.output_dir)):
        record = bench(cfg, hydra_cfg.runtime.output_dir, command_line=command_line("dae-gen-bench"),
                       preset=hydra_cfg.runtime.choices.get("experiment"))
    print(table(record))
    print(f"record: {record['path']}")


def main() -> None:
    run_cli(app, "dae-gen-bench")


if __name__ == "__main__":
    main()
