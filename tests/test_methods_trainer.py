"""Every method trains through the one trainer, resumes bit-exactly, and gives finite per-example losses on images."""

import json

import pytest
import torch
from hydra.utils import instantiate

from dae_gen.cli.train import split_trainer_node
from dae_gen.data.digits import digits
from dae_gen.data.toy import two_moons
from dae_gen.train_hooks import default_hooks

POINT_MODELS = ["ncsn_mlp", "dae_mlp", "dae_single", "edm_mlp", "mdsm_mlp", "dde", "ddegen_mlp"]
IMAGE_MODELS = {  # small nets for 8x8 images
    "ncsn_unet": ["model.net.channels=8"],
    "dae": ["model.net.channels=8"],
    "edm": ["model.net.channels=8"],
    "mdsm": ["model.net.n_blocks=2", "model.net.channels=4"],
    "dde_conv": ["model.net.channels=8"],
    "ddegen": ["model.generator.channels=8", "model.dde.channels=8", "model.n_dde_steps=1"],
}


def small_mlp(name):
    if name.startswith("ddegen"):
        return ["model.generator.hidden=16", "model.dde.hidden=16", "model.n_dde_steps=2"]
    return ["model.net.hidden=16"]


def build(compose_train, model, overrides, data, run_dir, steps):
    """The trainer of the ``trainer`` node's step mechanics, as ``dae-gen-train`` builds it."""
    cfg = compose_train(f"model={model}", *overrides)
    torch.manual_seed(0)
    objective = instantiate(cfg.model, data_shape=list(data.shape))
    mechanics, _ = split_trainer_node(cfg.trainer)
    return instantiate(mechanics)(objective=objective, data=data, run_dir=run_dir, steps=steps, batch_size=8, seed=3)


def hooks():
    """A log row and a checkpoint every other step, nothing else."""
    return default_hooks(log_every=1, ckpt_every=2, sample_every=0, progress=False, tensorboard=False)


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", POINT_MODELS)
def test_resume_is_exact_for_every_method(compose_train, tmp_path, model):
    straight = build(compose_train, model, small_mlp(model), two_moons(), tmp_path / "a", steps=4)
    straight.fit(hooks=hooks())
    first = build(compose_train, model, small_mlp(model), two_moons(), tmp_path / "b", steps=4)
    first.steps = 2
    first.fit(hooks=hooks())
    resumed = build(compose_train, model, small_mlp(model), two_moons(), tmp_path / "b", steps=4)
    resumed.fit(hooks=hooks())
    a, b = logged(tmp_path / "a"), logged(tmp_path / "b")
    loss_keys = [k for k in a[0] if k.startswith("loss/")]
    assert loss_keys == [f"loss/{name}" for name, _ in straight.objective.phases]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert all(ra[k] == rb[k] for k in loss_keys), (ra, rb)


@pytest.mark.parametrize("model", sorted(IMAGE_MODELS))
def test_per_example_losses_finite_on_images(compose_train, model):
    cfg = compose_train(f"model={model}", *IMAGE_MODELS[model])
    data = digits()
    torch.manual_seed(0)
    objective = instantiate(cfg.model, data_shape=list(data.shape))
    x = data.batch(6, generator=torch.Generator().manual_seed(0))
    for phase, _ in objective.phases:
        losses = objective.losses(phase, x)
        assert losses.shape == (6,) and torch.isfinite(losses).all(), (phase, losses)
        losses.mean().backward()
    sigma = objective.sigmas[-1:].expand(6)
    score = objective.score(x, sigma)
    assert score.shape == x.shape and torch.isfinite(score).all()


def test_multi_phase_objective_steps_only_its_phase_parameters(compose_train, tmp_path):
    trainer = build(compose_train, "ddegen_mlp", small_mlp("ddegen_mlp"), two_moons(), tmp_path, steps=1)
    model = trainer.objective
    before = {name: [p.detach().clone() for p in model.phase_parameters(name)] for name, _ in model.phases}
    trainer._phase_step("generator")
    changed = {name: any(not torch.equal(p, q) for p, q in zip(before[name], model.phase_parameters(name)))
               for name in before}
    assert changed == {"dde_q": False, "dde_p": False, "generator": True}
