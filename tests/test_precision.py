"""Mixed precision (dae_gen.precision): the CPU/CUDA rule and its one warning, bf16 against fp32 through the double
backward (annealed DSM, DDE) and first order (EDM, NCSN denoisers) on a fixed batch of real digits, the trainer's
fp32 state and bit-identical resume under bf16, and the sampler setting ``amp`` (chain state fp32, recorded)."""

import json
import logging
import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch

from conftest import run_command
from dae_gen import precision as P
from dae_gen.checkpoint import load_checkpoint
from dae_gen.data.digits import digits
from dae_gen.errors import ConfigError
from dae_gen.nets.conv import ScalarConvNet, group_norm
from dae_gen.nets.energy import ResNetEnergy
from dae_gen.nets.unet import ScoreUNet
from dae_gen.noise import LogNormalSigma, geometric_sigmas
from dae_gen.objectives.dde import DenoisingDensityEstimator
from dae_gen.objectives.denoising import DenoisingObjective
from dae_gen.objectives.dsm import DenoisingScoreMatching
from dae_gen.objectives.mdsm import AnnealedDSMEnergy
from dae_gen.objectives.preconditioning import EDMPreconditioning
from dae_gen.run import build_sampler
from dae_gen.samplers.batches import draw_samples
from dae_gen.samplers.nfe import CountingModel
from dae_gen.samplers.tasks import _function, _knobs
from dae_gen.samplers.temperature import sample_temperature_langevin
from dae_gen.trainer import Trainer

CPU_BF16, WHY = P.bf16_support("cpu")
needs_bf16 = pytest.mark.skipif(not CPU_BF16, reason=f"bf16 autocast does not run natively here: {WHY}")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(P, "_warned", set())  # each test sees the first fall-back warning of a process


# -- the rule ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, machine, probes, expected", [
    ({"sse2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "x86_64", (), "AMX-BF16"),
    ({"sse2", "avx512f", "avx512_bf16"}, "x86_64", (), "AVX512-BF16"),  # Zen 4, Cooper Lake
    ({"sse2", "avx2", "avx512f"}, "x86_64", (), None),  # Skylake/Ice Lake: AVX-512 but no bf16 arithmetic
    ({"fp", "asimd", "bf16"}, "aarch64", (), "ARM BF16"),
    ({"fp", "asimd"}, "aarch64", (), None),
    (set(), "arm64", ("_is_avx512_bf16_supported",), "AVX512-BF16"),  # no /proc/cpuinfo: torch's own probes
])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, machine, probes, expected):
    monkeypatch.setattr(P, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(P.platform, "machine", lambda: machine)
    for name, _ in P._TORCH_CPU_PROBES:
        monkeypatch.setattr(torch.cpu, name, lambda name=name: name in probes, raising=False)
    assert P.native_cpu_bf16() == expected


def test_this_machine_is_detected_as_its_cpuinfo_says():
    flags = P._cpu_flags()
    if {"amx_bf16", "avx512_bf16"} & flags:
        assert CPU_BF16 and P.native_cpu_bf16() in ("AMX-BF16", "AVX512-BF16")
    assert P.resolve_amp("bf16", "cpu") == ("bf16" if CPU_BF16 else "none")


def test_without_native_bf16_the_fall_back_is_fp32_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(P, "bf16_support", lambda kind: (False, "this CPU has no native bf16 arithmetic (test)"))
    with caplog.at_level(logging.WARNING, logger="dae_gen.precision"):
        assert [P.resolve_amp("bf16", "cpu") for _ in range(3)] == ["none"] * 3
        assert P.resolve_amp("none", "cpu") == "none"
    (record,) = caplog.records
    assert record.getMessage() == ("amp=bf16 asked for, but this CPU has no native bf16 arithmetic (test): running in "
                                   "fp32 on cpu instead")


def test_bad_amp_values_name_the_setting_and_the_choices():
    with pytest.raises(ConfigError, match=r"sampler\.amp must be one of \['none', 'bf16'\].*got 'fp16'"):
        P.check_amp("fp16", where="sampler.amp")
    with pytest.raises(ConfigError, match=r"sampler\.amp must be one of"):
        build_sampler({"_target_": "dae_gen.samplers.edm.sample_heun"}, amp="half")


# -- numbers: bf16 against fp32 on a fixed batch -------------------------------------------------------------------
def _energy():
    return AnnealedDSMEnergy(net=partial(ResNetEnergy, n_blocks=4, channels=8), data_shape=(1, 8, 8),
                             sigma_low=0.05, sigma_high=3.0, spacing="log", sigma0=0.1)


def _dde():
    return DenoisingDensityEstimator(net=partial(ScalarConvNet, channels=8, n_layers=2), data_shape=(1, 8, 8),
                                     sigma=0.3)


def _edm():
    return DenoisingObjective(net=partial(ScoreUNet, channels=8, channel_mults=(1, 2)), data_shape=(1, 8, 8),
                              preconditioning=EDMPreconditioning(sigma_data=0.5), sigmas=geometric_sigmas(80, 0.002, 8),
                              training_sigma=LogNormalSigma(), weighting="edm")


def _ncsn():
    return DenoisingScoreMatching(net=partial(ScoreUNet, channels=8, channel_mults=(1, 2)), data_shape=(1, 8, 8),
                                  sigmas=geometric_sigmas(5.0, 0.01, 8))


MODELS = {"annealed_dsm_energy": _energy, "dde": _dde, "edm_unet": _edm, "ncsn_unet": _ncsn}


@pytest.fixture(scope="module")
def trained():
    """Each model after 40 fp32 Adam steps on real digits (a fitted model's loss is not just its data term), with
    a fixed batch of 64 held-out digits."""
    train = digits(split="train")
    batch = digits(split="test").batch(64, generator=torch.Generator().manual_seed(0))
    models = {}
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model = make()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(1)
        for _ in range(40):
            opt.zero_grad()
            model.losses("model", train.batch(64, generator=generator)).mean().backward()
            opt.step()
        models[name] = model
    return models, batch


def _loss_and_grad(model, x, amp):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same noise draws in both precisions
    with P.autocast(amp, "cpu"):
        losses = model.losses("model", x)
    assert losses.dtype == torch.float32  # the per-example loss arithmetic is fp32 under autocast too
    loss = losses.mean()
    loss.backward()
    # (the energy's lq.bias is a constant of E: no gradient through ∇E)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    assert all(g.dtype == torch.float32 for g in grads)
    return loss.item(), torch.cat([g.flatten() for g in grads])


@needs_bf16
@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_losses_and_parameter_gradients_match_fp32(trained, name):
    """The bf16 agreement criterion through the double backward (energy, DDE) and first order (EDM, NCSN): loss
    within 1%, parameter-gradient cosine >= 0.99 against fp32 on a fixed batch."""
    models, x = trained
    model = models[name]
    loss32, grad32 = _loss_and_grad(model, x, "none")
    loss16, grad16 = _loss_and_grad(model, x, "bf16")
    assert abs(loss16 - loss32) <= 0.01 * abs(loss32)
    cosine = torch.nn.functional.cosine_similarity(grad16.double(), grad32.double(), dim=0).item()
    assert cosine >= 0.99
    assert not torch.equal(grad16, grad32)  # bf16 did run (else this test would compare fp32 with itself)


@needs_bf16
@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_scores_match_fp32_at_the_samplers_noise_levels(trained, name):
    """What sampler.amp=bf16 evaluates: the score through AutocastModel, in x's dtype; cosine with fp32 >= 0.999 over
    the batch and for the median example at every σ. (Single examples whose score is much smaller than the rest
    have a lower cosine: the error is of the same absolute size; experiments/bench/README.md gives the minima.)"""
    models, x = trained
    model = models[name].eval()
    fast = P.AutocastModel(model)
    sigmas = [model.reference_sigma] if name in ("annealed_dsm_energy", "dde") else model.sigmas.tolist()
    generator = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for sigma in sigmas:
            noisy = x + sigma * torch.randn(x.shape, generator=generator)
            s = torch.full((x.shape[0],), float(sigma))
            ref, ours = model.score(noisy, s), fast.score(noisy, s)
            assert ours.dtype == torch.float32 and ours.shape == ref.shape
            assert not torch.equal(ours, ref)
            per_example = torch.nn.functional.cosine_similarity(ours.flatten(1), ref.flatten(1))
            batch = torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0)
            assert batch >= 0.999 and per_example.median() >= 0.999, (sigma, batch, per_example.median())
    model.train()


def test_group_norm_normalises_in_fp32_under_autocast_and_is_plain_groupnorm_without():
    torch.manual_seed(0)
    norm = group_norm(16)
    reference = torch.nn.GroupNorm(norm.num_groups, 16)
    reference.load_state_dict(norm.state_dict())  # the same parameters and state-dict keys
    x = torch.randn(4, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    assert torch.equal(norm(x), reference(x))
    xb = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(xb)
    assert out.dtype == torch.bfloat16  # handed back in the input's dtype: the next conv needs no cast
    assert torch.equal(out, reference(xb.float()).bfloat16())  # statistics and normalisation in fp32


# -- the trainer -----------------------------------------------------------------------------------------------
def _trainer(run_dir, *, steps, amp, ckpt_every=2):
    torch.manual_seed(0)
    return Trainer(objective=_energy(), data=digits(split="train"), run_dir=run_dir, steps=steps, batch_size=16,
                   optimizer=partial(torch.optim.Adam, lr=1e-3), ema_decay=0.9, amp=amp, log_every=1,
                   ckpt_every=ckpt_every, sample_every=0, progress=False, tensorboard=False, seed=3)


@needs_bf16
def test_a_bf16_run_keeps_fp32_state_and_resumes_bit_identically(tmp_path):
    straight = _trainer(tmp_path / "straight", steps=4, amp="bf16")
    assert straight.amp == "bf16"
    straight.fit()
    state = load_checkpoint(tmp_path / "straight")
    tensors = [*state["model"].values(), *state["ema"].values()]
    for opt_state in state["optimizers"]["model"]["state"].values():
        tensors += [v for k, v in opt_state.items() if k != "step"]
    assert tensors and all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    first = _trainer(tmp_path / "resumed", steps=4, amp="bf16")
    first.steps = 2  # a run stopped after its step-2 checkpoint ...
    first.fit()
    resumed = _trainer(tmp_path / "resumed", steps=4, amp="bf16")  # ... and the same command again
    assert resumed.fit()["resumed"] == 1.0
    for a, b in zip(straight.state_dict()["model"].values(), resumed.state_dict()["model"].values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.module.parameters(), resumed.ema.module.parameters()):
        assert torch.equal(a, b)
    fp32 = _trainer(tmp_path / "fp32", steps=4, amp="none")
    fp32.fit()
    assert not torch.equal(fp32.objective.net.conv_in.weight, straight.objective.net.conv_in.weight)  # bf16 ran


def test_the_trainer_falls_back_to_fp32_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(P, "bf16_support", lambda kind: (False, "no bf16 here (test)"))
    with caplog.at_level(logging.WARNING, logger="dae_gen.precision"):
        trainers = [_trainer(tmp_path / f"r{i}", steps=2, amp="bf16") for i in range(2)]
        trainers[1].fit()  # (a trainer seeds the global RNG when built: fit the one built last)
    assert [t.amp for t in trainers] == ["none", "none"]
    assert [r.getMessage() for r in caplog.records] == [
        "amp=bf16 asked for, but no bf16 here (test): running in fp32 on cpu instead"]
    reference = _trainer(tmp_path / "fp32", steps=2, amp="none")
    reference.fit()
    for a, b in zip(trainers[1].objective.parameters(), reference.objective.parameters()):
        assert torch.equal(a, b)  # exactly the fp32 run


def test_a_bad_trainer_amp_fails_before_anything_is_written(compose_train, tmp_path):
    from dae_gen.cli.train import train

    cfg = compose_train("experiment=ncsn_toy", "trainer.steps=2", "trainer.amp=fp16")
    with pytest.raises(ConfigError, match=r"trainer\.amp must be one of \['none', 'bf16'\].*got 'fp16'"):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


# -- the sampler setting -----------------------------------------------------------------------------------------
@needs_bf16
def test_sampler_amp_runs_the_network_in_bf16_and_keeps_the_chain_in_fp32(trained):
    models, _ = trained
    model = models["edm_unet"].eval()
    settings = {"_target_": "dae_gen.samplers.edm.sample_heun", "n_steps": 6}
    fp32, _ = build_sampler(settings)
    bf16, recorded = build_sampler(settings, amp="bf16")
    assert recorded["amp"] == "bf16" and P.driver_amp(bf16) == "bf16" and P.driver_amp(fp32) == "none"
    states = []
    counted = CountingModel(model)
    with torch.inference_mode():
        a = draw_samples(model, fp32, 12, batch_size=6, seed=1)
        b = draw_samples(counted, bf16, 12, batch_size=6, seed=1, callback=lambda step: states.append(step.x))
    assert states and all(s.dtype == torch.float32 for s in states) and b.dtype == torch.float32
    assert counted.nfe_per_image(12) == 2 * 6 - 1  # the wrapper is outside the counter: every call counted
    assert not torch.equal(a, b)
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # the same chains, up to bf16 rounding in the network


def test_sampler_amp_keeps_the_drivers_own_settings_visible_to_tasks():
    driver, settings = build_sampler({"_target_": "dae_gen.samplers.temperature.sample_temperature_langevin",
                                      "n_steps_hot": 3}, amp="bf16")
    assert isinstance(driver, P.PrecisionDriver) and settings["amp"] == "bf16"
    assert _function(driver) is sample_temperature_langevin and _knobs(driver)["n_steps_hot"] == 3
    plain, plain_settings = build_sampler({"_target_": "dae_gen.samplers.edm.sample_heun"})
    assert not isinstance(plain, P.PrecisionDriver) and "amp" not in plain_settings  # records unchanged without it
    with pytest.raises(ConfigError, match="n_step"):  # the driver's own settings are still checked
        build_sampler({"_target_": "dae_gen.samplers.edm.sample_heun", "n_step": 3}, amp="bf16")


def test_train_sample_and_eval_record_the_precision(tmp_path):
    """As a user types it: train with bf16, sample and evaluate with sampler.amp=bf16; the records say what ran."""
    expected = "bf16" if CPU_BF16 else "none"
    run = tmp_path / "run"
    proc = run_command(["dae-gen-train", "experiment=ncsn_toy", "trainer.steps=3", "trainer.sample_every=0",
                        "sampler.n_steps_each=2", "trainer.amp=bf16", "threads=1", f"hydra.run.dir={run}"],
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_text = (run / "train.log").read_text()
    assert ("bf16 autocast (the CPU has" in log_text) if CPU_BF16 else ("running in fp32 on cpu instead" in log_text)
    proc = run_command(["dae-gen-sample", f"run={run}", "n_samples=8", "sampler.amp=bf16", "threads=1",
                        f"out={tmp_path / 's'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "s" / "sample.json").read_text())
    assert record["sampler"]["amp"] == "bf16" and record["amp"] == expected
    proc = run_command(["dae-gen-eval", f"run={run}", "n_samples=8", "batch_size=8", "sampler.amp=bf16",
                        "threads=1", f"out={tmp_path / 'e'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert result["sampler"]["amp"] == "bf16" and result["amp"] == expected
    proc = run_command(["dae-gen-sample", f"run={run}", "n_samples=8", "sampler.amp=fp16", f"out={tmp_path / 'x'}"],
                       cwd=tmp_path)
    assert proc.returncode != 0 and "sampler.amp must be one of ['none', 'bf16']" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_bench_compares_sampler_precisions(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [os.path.join(os.path.dirname(sys.executable), "dae-gen-bench"), "experiment=mdsm_digits",
           "compare=sampler.amp", "values=[none,bf16]", "threads=1", "bench.train=false", "bench.rounds=2",
           "bench.round_s=0.1", "trainer.n_samples=8", f"bench.out={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    first, second = record["settings"]
    assert (first["label"], second["label"]) == ("sampler.amp=none", "sampler.amp=bf16")
    assert (first["effective"]["sampler_amp"], second["effective"]["sampler_amp"]) == \
        ("none", "bf16" if CPU_BF16 else "none")
    ratio = record["ratios"]["sampler.amp=bf16"]
    assert ratio["sampler_step"] == pytest.approx(first["sampler"]["step_s"] / second["sampler"]["step_s"])
    assert "speed-up of sampler.amp=bf16 over sampler.amp=none" in done.stdout
    assert f"fp32 / {'bf16' if CPU_BF16 else 'fp32'}" in done.stdout  # the table's precision row
    assert np.isfinite(ratio["sampler_step_cpu"])
    assert any("ran in fp32" in note for note in record["notes"]) == (not CPU_BF16)
