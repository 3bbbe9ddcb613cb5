"""The public Python API: exported names, loading a run from a directory or a file, sampling by name."""

import importlib

import pytest
import torch

import dae_gen
from dae_gen import ConfigError, load_run
from dae_gen.score import ScoreModel

SUBPACKAGES = ["dae_gen", "dae_gen.data", "dae_gen.nets", "dae_gen.objectives", "dae_gen.samplers", "dae_gen.density",
               "dae_gen.metrics", "dae_gen.score", "dae_gen.run", "dae_gen.errors"]
FAST = ["trainer.steps=4", "trainer.log_every=2", "trainer.ckpt_every=2", "trainer.sample_every=0",
        "trainer.batch_size=8", "trainer.progress=false", "trainer.tensorboard=false", "device=cpu"]


@pytest.mark.parametrize("module", SUBPACKAGES)
def test_every_public_name_resolves(module):
    mod = importlib.import_module(module)
    assert mod.__all__ and len(set(mod.__all__)) == len(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_version_is_the_installed_distribution_version():
    from importlib.metadata import version

    assert dae_gen.__version__ == version("dae_gen")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from hydra import compose, initialize_config_module

    from dae_gen.cli.train import train

    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=ncsn_toy", "sampler.n_steps_each=2", *FAST])
    run_dir = tmp_path_factory.mktemp("toy_run")
    train(cfg, run_dir)
    return run_dir


def test_load_run_from_a_directory_or_a_checkpoint_file(toy_run):
    from_dir = load_run(toy_run)
    newest = sorted((toy_run / "checkpoints").glob("ckpt_*.pt"))[-1]
    from_file = load_run(newest)
    assert from_dir.step == from_file.step == 4 and from_dir.path == from_file.path == toy_run
    assert from_dir.checkpoint == newest and [p.name for p in from_dir.checkpoints()] == [
        "ckpt_00000002.pt", "ckpt_00000004.pt"]
    assert from_dir.data.kind == "points" and from_dir.data.shape == (2,)
    assert isinstance(from_dir.model, ScoreModel) and not from_dir.model.training
    older = load_run(toy_run / "checkpoints" / "ckpt_00000002.pt")
    assert older.step == 2
    assert not all(torch.equal(a, b) for a, b in zip(older.model.parameters(), from_dir.model.parameters()))
    raw = load_run(toy_run, use_ema=False)
    state = torch.load(newest, weights_only=True)
    assert all(torch.equal(p, state["model"][k]) for k, p in raw.model.state_dict().items())


def test_sampling_is_seeded_per_batch_and_samplers_are_chosen_by_name(toy_run):
    run = load_run(toy_run)
    a = run.sample(10, seed=3, batch_size=4)
    b = run.sample(10, seed=3, batch_size=4)
    assert a.shape == (10, 2) and torch.equal(a, b)
    # batch k is seeded with seed + k: the second batch of seed 3 is the first batch of seed 4
    assert torch.equal(run.sample(4, seed=4, batch_size=4), a[4:8])
    fewer = run.sample(4, seed=3, n_steps_each=1)
    assert not torch.equal(fewer, a[:4])
    hot = run.sample(4, sampler="temperature_langevin", n_steps_hot=2, n_steps_anneal=2, n_steps_cool=2)
    assert hot.shape == (4, 2) and torch.isfinite(hot).all()
    _, settings = run.sampler("temperature_langevin", n_steps_hot=2)
    assert settings["n_steps_hot"] == 2 and settings["_target_"].endswith("sample_temperature_langevin")
    with pytest.raises(ConfigError, match="no setting 'n_steps_hott'"):
        run.sample(4, sampler="temperature_langevin", n_steps_hott=2)
    with pytest.raises(ConfigError, match="no sampler named 'langevin'"):
        run.sample(4, sampler="langevin")


def test_save_grid_writes_a_png(toy_run, tmp_path):
    run = load_run(toy_run)
    path = run.save_grid(run.sample(8, n_steps_each=1), tmp_path / "grid.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_temperature_sampler_reads_a_dde_at_its_own_sigma():
    """The reference scale defaults to the model's own σ (a DDE has σ, not σ₀): the final jump is x + σ²∇f."""
    from functools import partial

    from dae_gen.nets.mlp import ScalarMLP
    from dae_gen.objectives.dde import DenoisingDensityEstimator
    from dae_gen.samplers.temperature import sample_temperature_langevin

    model = DenoisingDensityEstimator(net=partial(ScalarMLP, hidden=8, depth=1), data_shape=(2,), sigma=0.37)
    assert model.reference_sigma == pytest.approx(0.37)
    gen = torch.Generator().manual_seed(0)
    start = 0.5 + torch.randn(5, 2, generator=gen)
    out = sample_temperature_langevin(model, 5, n_steps_hot=0, n_steps_anneal=0, n_steps_cool=0,
                                      generator=torch.Generator().manual_seed(0))
    expected = start + 0.37**2 * model.score(start, torch.full((5,), 0.37))
    torch.testing.assert_close(out, expected)
