"""Hydra CLI: every config composes and instantiates; train → checkpoint/metrics/grid; sample; bad names."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from conftest import CONFIG_DIR, REPO

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


@pytest.mark.parametrize("name", options("sampler"))
def test_every_sampler_config_instantiates(compose_train, name):
    cfg = compose_train(f"sampler={name}")
    if "_target_" in cfg.sampler:
        assert callable(instantiate(cfg.sampler))


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
    (["sampler.init=gausian"], "init must be"),
    (["sampler.step_lr=-1"], "step_lr must be positive"),
    (["sampler=temperature_langevin", "sampler.step_size=0"], "step_size must be positive"),
])
def test_bad_sampler_settings_fail_before_training(compose_train, tmp_path, overrides, match):
    from dae_gen.cli.train import train

    fast = [o for o in FAST if not o.startswith("sampler.")]  # knobs of the default sampler only
    cfg = compose_train(*fast, *overrides)
    with pytest.raises(ValueError, match=match):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
