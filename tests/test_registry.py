"""The sampler registry: names, configs, checks and construction in one place, below the run API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from dae_gen.analytic import AnalyticGaussian
from dae_gen.errors import ConfigError
from dae_gen.noise import geometric_sigmas
from dae_gen.samplers import registry
from dae_gen.samplers.edm import sample_edm_stochastic
from dae_gen.samplers.registry import Sampler, SamplerEntry, build_sampler
from dae_gen.samplers.tasks import interpolate, record_trajectory
from dae_gen.score import Step

CONFIGS = REPO / "configs" / "sampler"


def _model() -> AnalyticGaussian:
    return AnalyticGaussian([0.5, -0.5], std=0.3, sigmas=geometric_sigmas(20.0, 0.05, 8))


def test_every_config_is_a_registered_sampler_and_names_its_driver():
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in CONFIGS.glob("*.yaml") if p.stem != "from_run"}
    assert set(configs) == set(registry.sampler_names())
    for name, config in configs.items():
        assert config["_target_"] == registry.entry(name).target and config["_partial_"] is True
        assert registry.sampler_config(name) == config


@pytest.mark.parametrize("name, override, message", [
    ("heun", {"n_steps": -3}, "sampler.n_steps: must be an integer of at least 1, got -3"),
    ("heun", {"rho": 0}, "sampler.rho: must be positive, got 0"),
    ("edm_stochastic", {"s_churn": -1}, "sampler.s_churn: must be non-negative, got -1"),
    ("pc", {"snr": -0.1}, "sampler.snr: must be positive, got -0.1"),
    ("ode", {"rtol": 0}, "sampler.rtol: must be positive, got 0"),
    ("annealed_langevin", {"n_steps_each": 0}, "sampler.n_steps_each: must be an integer of at least 1, got 0"),
    ("annealed_langevin", {"step_lr": -1}, "sampler.step_lr: must be positive, got -1"),
    ("pc", {"corrector_norm": "rows"}, "sampler.corrector_norm: must be one of ['example', 'batch'], got 'rows'"),
    ("heun", {"n_step": 3}, "sampler.n_step: sample_heun has no setting 'n_step'"),
    ("heun", {"rho": "x"}, "sampler.rho: expected float, got 'x'"),
    ("heun", {"amp": "half"}, "sampler.amp must be one of"),
])
def test_every_setting_is_checked_before_any_work(name, override, message):
    with pytest.raises(ConfigError) as caught:
        build_sampler(name, **override)
    assert str(caught.value).startswith(message)


def test_a_built_sampler_draws_what_its_driver_draws():
    model = _model()
    sampler = build_sampler("edm_stochastic", n_steps=6)
    assert isinstance(sampler, Sampler) and sampler.name == "edm_stochastic"
    assert sampler.settings == {"n_steps": 6, "rho": 7.0, "sigma_min": None, "sigma_max": None, "s_churn": 10.0,
                                "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003, "amp": "none"}  # the config's
    assert sampler.config["_target_"] == "dae_gen.samplers.edm.sample_edm_stochastic"
    expected = sample_edm_stochastic(model, 16, n_steps=6, s_churn=10.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(sampler(model, 16, generator=torch.Generator().manual_seed(4)), expected,
                               rtol=0, atol=0)
    again = build_sampler(sampler, n_steps=7)  # a built sampler with one more override
    assert again.settings["n_steps"] == 7 and again.settings["s_churn"] == 10.0


def test_a_config_as_old_checkpoints_store_it_builds_the_same_sampler():
    legacy = {"_target_": "dae_gen.samplers.edm.sample_heun", "_partial_": True, "n_steps": 5, "rho": 7.0,
              "sigma_min": None, "sigma_max": None}
    model = _model()
    a = build_sampler(legacy)(model, 8, generator=torch.Generator().manual_seed(0))
    b = build_sampler("heun", n_steps=5)(model, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="names no registered sampler"):
        build_sampler({"_target_": "mine.sample_mine"})


def _sample_constant(model, n, *, value: float = 1.0, generator=None, callback=None, cond=None):
    x = torch.full((n, *model.data_shape), float(value))
    if callback is not None:
        callback(Step(i=1, n=1, x=x))
    return x


def test_registering_a_sampler_is_one_line():
    entry = registry.register(SamplerEntry("constant", _sample_constant, checks={"value": registry.positive}))
    try:
        assert "constant" in registry.sampler_names()
        sampler = build_sampler({"_target_": entry.target, "value": 2.0})
        assert torch.equal(sampler(_model(), 3), torch.full((3, 2), 2.0))
        with pytest.raises(ConfigError, match="sampler.value: must be positive, got -1"):
            build_sampler({"_target_": entry.target, "value": -1})
        trajectory = record_trajectory(_model(), 3, sampler=sampler, n_frames=1)  # tasks take it as it is
        assert trajectory.steps == [1]
        with pytest.raises(ConfigError, match="noise hook"):  # it declares no chain with a noise hook
            interpolate(_model(), 2, sampler=sampler)
    finally:
        registry._REGISTRY.pop("constant")


def test_samplers_and_metrics_import_nothing_above_the_protocol():
    code = ("import sys\nimport dae_gen.samplers, dae_gen.samplers.registry, dae_gen.samplers.tasks, dae_gen.metrics\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')\n"
            "      or m.startswith(('dae_gen.run', 'dae_gen.cli', 'dae_gen.trainer'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(REPO), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_hydra_is_used_outside_the_cli_only_where_run_configs_are_read():
    package = REPO / "dae_gen"
    for path in [*(package / "samplers").glob("*.py"), *(package / "metrics").glob("*.py")]:
        text = path.read_text()
        assert "hydra" not in text and "omegaconf" not in text.lower(), path
    run = (package / "run.py").read_text()
    assert run.count("instantiate(") == 1 + run.count("_instantiate(")  # the one helper's own call
    assert run.count("OmegaConf.") == 2  # _plain and _config, beside it
