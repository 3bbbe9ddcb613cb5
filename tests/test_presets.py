"""Every published-setting preset has a CPU debug variant that trains a few steps on fake (or real) data."""

import json
import math
from pathlib import Path

import pytest

from conftest import CONFIG_DIR

DEBUG_PRESETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*_debug.yaml"))


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    from dae_gen.data.fakes import write_fake_celeba, write_fake_cifar10

    root = tmp_path_factory.mktemp("fake_data")
    write_fake_cifar10(root, n_train=40, n_test=10)
    write_fake_celeba(root, n=30)
    return root


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_debug_preset_trains_a_few_steps(compose_train, fake_root, tmp_path, preset):
    from dae_gen.checkpoint import load_checkpoint
    from dae_gen.cli.train import train

    cfg = compose_train(f"experiment={preset}", "device=cpu", "trainer.progress=false",
                        "trainer.tensorboard=false")
    if cfg.dataset.get("root", None) == "data/fake":
        cfg.dataset.root = str(fake_root)
    result = train(cfg, tmp_path)
    assert result["step"] == cfg.trainer.steps
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [value for row in rows for key, value in row.items() if key.startswith("loss/")]
    assert len(rows) == cfg.trainer.steps and losses and all(math.isfinite(v) for v in losses)
    state = load_checkpoint(tmp_path)
    assert state["step"] == cfg.trainer.steps
    assert (tmp_path / "samples.png").is_file()


def test_published_presets_keep_the_published_numbers(compose_train):
    cfg = compose_train("experiment=ncsnv2_cifar10")
    assert (cfg.model.sigmas.sigma_max, cfg.model.sigmas.n_levels) == (50.0, 232)
    assert (cfg.sampler.n_steps_each, cfg.sampler.step_lr, cfg.trainer.ema_decay) == (5, 6.2e-6, 0.999)
    cfg = compose_train("experiment=ncsnv2_celeba64")
    assert (cfg.model.sigmas.sigma_max, cfg.model.sigmas.n_levels, cfg.sampler.step_lr) == (90.0, 500, 3.3e-6)
    assert cfg.dataset.image_size == 64
