"""EDM presets keep EDM's published numbers; the sampling commands record the network calls per image."""

import json
import math
import subprocess

import numpy as np
import pytest

from dae_gen.metrics.inception import default_weights_path

FAST = ["trainer.steps=4", "trainer.log_every=2", "trainer.ckpt_every=4", "trainer.sample_every=0",
        "trainer.batch_size=8", "trainer.progress=false", "trainer.tensorboard=false", "device=cpu",
        "model.net.channels=4"]


@pytest.mark.parametrize("preset", ["edm_fmnist", "edm_cifar10", "edm_celeba64", "edm_fmnist_cpu", "edm_digits"])
def test_edm_presets_keep_edms_published_numbers(compose_train, preset):
    cfg = compose_train(f"experiment={preset}")
    model = cfg.model
    assert model.preconditioning._target_.endswith("EDMPreconditioning") and model.preconditioning.sigma_data == 0.5
    assert (model.training_sigma.p_mean, model.training_sigma.p_std, model.weighting) == (-1.2, 1.2, "edm")
    assert (model.sigmas.sigma_max, model.sigmas.sigma_min) == (80.0, 0.002)
    assert cfg.dataset.scale == "symmetric" and cfg.sampler._target_.endswith("sample_heun") and cfg.sampler.rho == 7
    if preset == "edm_cifar10":
        assert (cfg.trainer.batch_size, cfg.trainer.optimizer.lr, cfg.model.net.dropout) == (512, 1e-3, 0.13)
        assert cfg.trainer.steps * cfg.trainer.batch_size == pytest.approx(200e6, rel=0.01)  # 200 M images
        half_life_images = cfg.trainer.batch_size * math.log(0.5) / math.log(cfg.trainer.ema_decay)
        assert half_life_images == pytest.approx(0.5e6, rel=0.01)  # EDM's EMA half-life, 0.5 M images
        assert cfg.sampler.n_steps == 18  # 35 NFE


def test_ncsn_cifar10_trains_on_dequantised_data(compose_train):
    assert compose_train("experiment=ncsn_cifar10").dataset.dequantize is True


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A 4-step EDM run on the digits, made with the documented command."""
    run_dir = tmp_path_factory.mktemp("edm_digits")
    proc = subprocess.run(["dae-gen-train", "experiment=edm_digits", f"hydra.run.dir={run_dir}", *FAST],
                          cwd=tmp_path_factory.mktemp("cwd"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


def test_dae_gen_sample_records_the_network_calls_per_image(digits_run, tmp_path):
    out = tmp_path / "sampled"
    proc = subprocess.run(["dae-gen-sample", f"run={digits_run}", "n_samples=6", "batch_size=4", "save_npz=true",
                           "sampler=pc", "sampler.n_steps=5", "sampler.n_corrector_steps=2", f"hydra.run.dir={out}",
                           "device=cpu"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out / "samples.npz") as npz:
        assert float(npz["nfe_per_image"]) == 5 * (2 + 1) and npz["images_uint8"].shape == (6, 1, 8, 8)


@pytest.mark.skipif(default_weights_path() is None, reason="FID weights not installed")
def test_dae_gen_eval_records_the_network_calls_per_image(digits_run, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(["dae-gen-eval", f"run={digits_run}", "n_samples=4", "batch_size=4", "split=test",
                           "n_reference=8", "kid_subset_size=4", "++sampler.n_steps=3", f"cache_dir={tmp_path / 'c'}",
                           f"hydra.run.dir={out}", "device=cpu"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["nfe_per_image"] == 2 * 3 - 1 and result["n"] == 4 and np.isfinite(result["fid"])
