"""Hydra CLI: every config composes and instantiates; train → checkpoint/metrics/grid; sample; bad names."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from conftest import CONFIG_DIR, REPO, edm_gaussian_moments
from dae_gen.analytic import AnalyticGaussian
from dae_gen.noise import geometric_sigmas, karras_sigmas
from dae_gen.samplers.temperature import temperature_schedule

FAST = ["trainer.steps=6", "trainer.log_every=2", "trainer.ckpt_every=3", "trainer.sample_every=0",
        "trainer.n_samples=4", "trainer.batch_size=8", "trainer.progress=false", "trainer.tensorboard=false",
        "sampler.n_steps_each=1", "device=cpu"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("model"))
def test_every_model_config_instantiates(compose_train, name):
    cfg = compose_train(f"model={name}")
    shape = [1, 32, 32] if any(k in name for k in ("energy", "mdsm", "fmnist", "cifar")) else None
    data_shape = shape or ([2] if "mlp" in name else [1, 8, 8])
    model = instantiate(cfg.model, data_shape=data_shape)
    assert model.sigmas.ndim == 1 and len(model.sigmas) >= 1
    assert dict(model.phases)


MEAN, S = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5


def _gaussian():
    """Data N(m, s² I) in 2-D with its exact smoothed score −(x − m)/(s² + σ²) and an exact generator."""
    return AnalyticGaussian(MEAN, std=S, sigmas=geometric_sigmas(2.0, 0.05, 8))


def _langevin_moments(m, s, *, start_mean, start_var, steps, final_sigma):
    """Exact mean and variance of x ← (1 − a)x + a·m + √(noise var)·ξ over (a, noise var) steps, then the
    Tweedie jump at ``final_sigma``, which scales deviations from m by s²/(s² + σ²)."""
    mean, var = start_mean, start_var
    for a, noise_var in steps:
        mean, var = (1 - a) * mean + a * m, (1 - a) ** 2 * var + noise_var
    shrink = s**2 / (s**2 + final_sigma**2)
    return m + shrink * (mean - m), shrink * var**0.5


SAMPLER_CASES = {  # config name: (overrides that keep it quick, expected moments for _gaussian())
    "annealed_langevin": (["sampler.n_steps_each=50", "sampler.step_lr=1e-3", "sampler.init=gaussian"],
                          lambda cfg, model: _langevin_moments(
                              MEAN, S, start_mean=0.0, start_var=float(model.sigmas[0]) ** 2,
                              final_sigma=float(model.sigmas[-1]),
                              steps=[(0.5 * a / (S**2 + sig**2), a)
                                     for sig in model.sigmas.tolist()
                                     for a in [cfg.step_lr * sig**2 / model.sigmas[-1].item() ** 2]
                                     for _ in range(cfg.n_steps_each)])),
    "temperature_langevin": (["sampler.n_steps_hot=50", "sampler.n_steps_anneal=200", "sampler.n_steps_cool=50",
                              "sampler.step_size=0.2"],
                             lambda cfg, model: _langevin_moments(
                                 MEAN, S, start_mean=cfg.init_mean, start_var=cfg.init_std**2,
                                 final_sigma=model.reference_sigma,
                                 steps=[(0.5 * cfg.step_size**2 / (S**2 + model.reference_sigma**2),
                                         t * cfg.step_size**2)
                                        for t in temperature_schedule(n_steps_hot=cfg.n_steps_hot,
                                                                      temp_hot=cfg.temp_hot,
                                                                      n_steps_anneal=cfg.n_steps_anneal,
                                                                      n_steps_cool=cfg.n_steps_cool).tolist()])),
    "generator": ([], lambda cfg, model: (MEAN, torch.full((2,), S))),
    "heun": (["sampler.n_steps=12"], lambda cfg, model: _edm_moments(cfg, model)),
    "edm_stochastic": (["sampler.n_steps=24", "sampler.s_tmax=1.0"], lambda cfg, model: _edm_moments(cfg, model)),
    # the predictor alone: linear-Gaussian steps x ← x + v·s + √v·z (the corrector is tested in 784-D in
    # test_diffusion_samplers.py: its per-example step is heavy-tailed in 2-D); the last step is Tweedie's
    "pc": (["sampler.n_corrector_steps=0"],
           lambda cfg, model: _langevin_moments(
               MEAN, S, start_mean=0.0, start_var=float(model.sigmas[0]) ** 2,
               final_sigma=float(model.sigmas[-1]),
               steps=[(v / (S**2 + sig**2), v)
                      for sig, nxt in zip(model.sigmas.tolist(), model.sigmas.tolist()[1:])
                      for v in [sig**2 - nxt**2]])),
    # the exact flow scales deviations by √((s² + σ_min²)/(s² + σ_max²)), then Tweedie by s²/(s² + σ_min²)
    "ode": ([], lambda cfg, model: _ode_moments(model)),
    "dpm_solver_2m": (["sampler.n_steps=10"], lambda cfg, model: _dpm_solver_2m_moments(cfg, model)),
    "euler_ancestral": (["sampler.n_steps=40"], lambda cfg, model: _euler_ancestral_moments(cfg, model)),
}


def _edm_moments(cfg, model):
    """Exact moments of EDM's samplers on _gaussian() from N(0, σ_max² I) (the model's σ_1, σ_L by default)."""
    sigma_max, sigma_min = float(model.sigmas[0]), float(model.sigmas[-1])
    gain, var = edm_gaussian_moments(karras_sigmas(cfg.n_steps, sigma_min, sigma_max, cfg.rho).tolist(), s=S,
                                     start_var=sigma_max**2, **{k: cfg[k] for k in cfg if k.startswith("s_")})
    return MEAN * (1 - gain), var**0.5


def _ode_moments(model):
    """The exact probability flow from N(0, σ_max² I) to σ_min, then Tweedie's step."""
    sigma_max, sigma_min, s = float(model.sigmas[0]), float(model.sigmas[-1]), S
    gain = ((s**2 + sigma_min**2) / (s**2 + sigma_max**2)) ** 0.5 * s**2 / (s**2 + sigma_min**2)
    return MEAN * (1 - gain), gain * sigma_max


def _dpm_solver_2m_moments(cfg, model):
    """DPM-Solver++(2M) on _gaussian() is linear in y = x − m: D − m = c·y with c = s²/(s² + σ²); a step to σ' > 0
    is y' = (σ'/σ)·y + (1 − σ'/σ)·((1 + k)·c_i·y_i − k·c_{i−1}·y_{i−1}), k = h_i/(2h_{i−1}) (k = 0 first), the
    step to 0 is y' = c·y. Tracked as gains of y_0, from N(0, σ_max² I): y_0 has mean −m, std σ_max."""
    sigma_max, sigma_min = float(model.sigmas[0]), float(model.sigmas[-1])
    levels = karras_sigmas(cfg.n_steps, sigma_min, sigma_max, cfg.rho).tolist()
    gain, previous, h_previous = 1.0, None, None
    for sigma, sigma_next in zip(levels[:-1], levels[1:]):
        c = S**2 / (S**2 + sigma**2)
        if sigma_next == 0:
            gain = c * gain
            continue
        h = math.log(sigma / sigma_next)
        k = 0.0 if previous is None else h / (2 * h_previous)
        estimate = (1 + k) * c * gain - (k * previous if previous is not None else 0.0)
        previous, h_previous = c * gain, h
        gain = sigma_next / sigma * gain + (1 - sigma_next / sigma) * estimate
    return MEAN * (1 - gain), abs(gain) * sigma_max


def _euler_ancestral_moments(cfg, model):
    """Euler ancestral on _gaussian(): y' = a·y + s_noise·σ_up·ξ with a = 1 + (σ_down − σ)·σ/(s² + σ²)."""
    sigma_max, sigma_min = float(model.sigmas[0]), float(model.sigmas[-1])
    levels = karras_sigmas(cfg.n_steps, sigma_min, sigma_max, cfg.rho).tolist()
    gain, var = 1.0, sigma_max**2
    for sigma, sigma_next in zip(levels[:-1], levels[1:]):
        up = 0.0 if sigma_next == 0 else min(sigma_next, cfg.eta * sigma_next * (sigma**2 - sigma_next**2) ** 0.5
                                             / sigma)
        down = (sigma_next**2 - up**2) ** 0.5
        a = 1 + (down - sigma) * sigma / (S**2 + sigma**2)
        gain, var = a * gain, a**2 * var + (cfg.s_noise * up) ** 2
    return MEAN * (1 - gain), var**0.5


def test_every_sampler_config_has_a_ground_truth_case():
    assert set(options("sampler")) - {"from_run"} == set(SAMPLER_CASES)


@pytest.mark.parametrize("name", sorted(SAMPLER_CASES))
def test_every_sampler_config_reproduces_the_exact_moments_of_a_gaussian(compose_train, name):
    overrides, expected = SAMPLER_CASES[name]
    cfg = compose_train(f"sampler={name}", *overrides)
    model, n = _gaussian(), 4000
    x = instantiate(cfg.sampler)(model, n, generator=torch.Generator().manual_seed(0))
    mean, std = expected(cfg.sampler, model)
    mean, std = torch.as_tensor(mean, dtype=x.dtype).expand(2), torch.as_tensor(std, dtype=x.dtype).expand(2)
    assert x.shape == (n, 2)
    assert torch.allclose(x.mean(0), mean, atol=4 * float(std.max()) / n**0.5)
    assert torch.allclose(x.std(0), std, rtol=0.045)  # 4 standard errors of a std at n = 4000


@pytest.mark.parametrize("name", options("trainer"))
def test_every_trainer_config_instantiates(compose_train, name):
    cfg = compose_train(f"trainer={name}")
    assert callable(instantiate(cfg.trainer))


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes_and_builds(compose_train, name):
    cfg = compose_train(f"experiment={name}")
    assert callable(instantiate(cfg.sampler)) and callable(instantiate(cfg.trainer))
    assert cfg.trainer.steps >= 1 and cfg.trainer.batch_size >= 1


def test_train_writes_checkpoint_metrics_grid_and_config(compose_train, tmp_path):
    from dae_gen.checkpoint import load_checkpoint
    from dae_gen.cli.train import train

    cfg = compose_train(*FAST)
    result = train(cfg, tmp_path)
    assert result["step"] == 6
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "samples.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and all(np.isfinite(r["loss/model"]) for r in rows)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 6 and state["config"]["data_shape"] == [1, 8, 8]


def test_console_scripts_train_then_sample(tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "dae_gen.cli.train", "dataset=two_moons", "model=ncsn_mlp",
                    "sampler.init=gaussian", f"hydra.run.dir={run_dir}", *FAST], check=True, cwd=REPO,
                   capture_output=True, text=True)
    assert (run_dir / "checkpoints").is_dir()
    out = tmp_path / "sampled"
    proc = subprocess.run([sys.executable, "-m", "dae_gen.cli.sample", f"run={run_dir}", "n_samples=10",
                           "batch_size=4", "save_npz=true", "++sampler.n_steps_each=2", f"hydra.run.dir={out}",
                           "device=cpu"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    npz = np.load(out / "samples.npz")
    assert npz["samples"].shape == (10, 2) and np.isfinite(npz["samples"]).all() and int(npz["step"]) == 6
    assert (out / "samples.png").is_file()


def test_multirun_sweep(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dae_gen.cli.train", "--multirun", "dataset=two_moons",
                           "model=ncsn_mlp", "sampler.init=gaussian", "seed=0,1", f"hydra.sweep.dir={tmp_path}",
                           *FAST], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "0" / "metrics.jsonl").is_file() and (tmp_path / "1" / "metrics.jsonl").is_file()
    assert (tmp_path / "0" / "metrics.jsonl").read_text() != (tmp_path / "1" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("override, match", [
    ("dataset=no_such_data", "no_such_data"),
    ("model=no_such_model", "no_such_model"),
])
def test_unknown_group_options_name_the_problem(compose_train, override, match):
    with pytest.raises(ConfigCompositionException, match=match):
        compose_train(override)


@pytest.mark.parametrize("overrides, match", [
    (["model.sigmas.sigma_min=-0.1"], "positive"),
    (["model.sigmas.sigma_max=0.001"], "larger than sigma_min"),
    (["trainer.steps=0"], "steps must be at least 1"),
])
def test_bad_values_fail_before_training(compose_train, tmp_path, overrides, match):
    from dae_gen.cli.train import train

    cfg = compose_train(*FAST, *overrides)
    with pytest.raises(Exception, match=match):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_sampling_a_missing_run_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dae_gen.cli.sample", f"run={tmp_path}",
                           f"hydra.run.dir={tmp_path / 'o'}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "no checkpoint" in proc.stderr


@pytest.mark.parametrize("overrides, match", [
    (["sampler.init=gausian"], r"sampler\.init: must be one of \['uniform', 'gaussian'\], got 'gausian'"),
    (["sampler.step_lr=-1"], r"sampler\.step_lr: must be positive, got -1"),
    (["sampler=temperature_langevin", "sampler.step_size=0"], r"sampler\.step_size: must be positive, got 0"),
])
def test_bad_sampler_settings_fail_before_training(compose_train, tmp_path, overrides, match):
    from dae_gen.cli.train import train

    fast = [o for o in FAST if not o.startswith("sampler.")]  # knobs of the default sampler only
    cfg = compose_train(*fast, *overrides)
    with pytest.raises(ValueError, match=match):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
