"""Class-conditional runs end to end: training feeds the labels, ``dae-gen-sample class_labels=... guidance=...
guide_run=...``, its tasks and ``dae-gen-eval`` sample exactly the guided score ``(1 + w)·s(x | c) − w·s_guide``
(checked against that formula written out here), count its network calls, record it, and refuse bad keys in one
line naming the key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import error_lines, run_command
from dae_gen.errors import ConfigError
from dae_gen.nets.labels import null_labels

TINY = ["experiment=edm_digits_cond", "trainer.steps=30", "trainer.ckpt_every=15", "trainer.keep_checkpoints=3",
        "trainer.log_every=10", "trainer.sample_every=0", "trainer.n_samples=4", "trainer.batch_size=32",
        "trainer.progress=false", "trainer.tensorboard=false", "model.net.channels=8", "threads=1", "device=cpu"]
HEUN = 3  # sampler.n_steps of the samples below: 2·3 − 1 = 5 network calls per image
# (1 + w)·a − w·b and a + w·(a − b) differ by fp32 rounding of scores of size x/σ² from σ = 80 down; the chains
# agree to ~4e-4 on pixels in [−1, 1], while a wrong weight or guide moves them by > 0.05
CLOSE = {"atol": 2e-3, "rtol": 0.0}


def _compose(name: str, *overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A class-conditional EDM digits run (the preset, a small U-Net), 30 steps, checkpoints at 15 and 30."""
    from dae_gen.cli.train import train

    root = tmp_path_factory.mktemp("cond_cli")
    train(_compose("train", *TINY), root / "run")
    return root / "run"


class HandGuided:
    """The guided score written out: ``(1 + w)·s(x | c) − w·s_guide``, the guide the null class (CFG) or a model."""

    def __init__(self, model, w, guide=None):
        self.model, self.w, self.guide = model, w, guide
        self.data_shape, self.sigmas, self.reference_sigma = model.data_shape, model.sigmas, model.reference_sigma

    def score(self, x, sigma, class_labels):
        main = self.model.score(x, sigma, class_labels=class_labels)
        if self.guide is None:
            other = self.model.score(x, sigma, class_labels=null_labels(len(x), n_classes=self.model.n_classes))
        else:
            other = self.guide.score(x, sigma, class_labels=class_labels)
        return (1 + self.w) * main - self.w * other


def _by_hand(run, labels, w, guide=None, seed=0):
    from dae_gen.samplers.batches import draw_samples

    driver, _ = run.sampler(None, n_steps=HEUN)
    return draw_samples(HandGuided(run.model, w, guide), driver, len(labels), batch_size=256, seed=seed,
                        cond={"class_labels": labels})


def test_training_feeds_the_labels(cond_run):
    """Every row of the label table (the ten digits and the null class) has moved from its initial value (the
    model rebuilt from the run's config and seed), which only gradients through labelled batches (and label
    dropout, for the null row) can do; and the trained conditional denoiser differs by label."""
    from hydra.utils import instantiate

    from dae_gen import load_run

    run = load_run(cond_run, use_ema=False)
    assert run.n_classes == 10 and run.step == 30 and load_run(cond_run / "checkpoints" / "ckpt_00000015.pt").step == 15
    torch.manual_seed(run.config.seed)
    fresh = instantiate(run.config.model, data_shape=list(run.config.data_shape))
    before, after = fresh.net.label_embed.table.weight, run.model.net.label_embed.table.weight  # (11, dim)
    moved = (after - before).detach().abs().amax(dim=1)
    assert moved.shape == (11,) and float(moved.min()) > 1e-4, moved
    others = [(n, p) for n, p in fresh.named_parameters() if "label_embed" not in n]
    assert all(torch.equal(p, dict(fresh.named_parameters())[n]) for n, p in others)  # the same initial weights
    assert torch.equal(dict(fresh.named_parameters())["net.label_embed.table.weight"][0], before[0])
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((5,), 0.5)
    outs = [run.model.denoise(x, sigma, class_labels=torch.full((5,), c)) for c in range(11)]  # 10: the null class
    assert min(float((outs[c] - outs[0]).abs().max()) for c in range(1, 11)) > 1e-5


def test_labels_on_unlabelled_data_and_too_few_classes_are_refused(tmp_path):
    from dae_gen.cli.train import train

    with pytest.raises(ConfigError, match=r"^model.n_classes=3: .* has no labels"):
        train(_compose("train", "experiment=edm_toy", "model.n_classes=3", "trainer.steps=1"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"^model.n_classes=5: .*outside 0..4; set model.n_classes=10"):
        train(_compose("train", *TINY, "model.n_classes=5"), tmp_path / "b")
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.slow
def test_class_grid_with_cfg_through_the_console_script(cond_run, tmp_path):
    """``class_labels=[0,1,2] per_class=4 guidance=2``: 12 samples, one grid row per class, equal to the hand-written
    CFG score under the same Heun chain; twice the calls of unguided Heun; all of it in sample.json."""
    from dae_gen import load_run

    out = tmp_path / "cfg"
    proc = run_command(["dae-gen-sample", f"run={cond_run}", "class_labels=[0,1,2]", "per_class=4", "guidance=2",
                        f"sampler.n_steps={HEUN}", "save_npz=true", f"out={out}", "threads=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "sample.json").read_text())
    stored = np.load(out / "samples.npz")
    labels = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    assert np.array_equal(stored["class_labels"], labels.numpy())
    run = load_run(cond_run)
    expected = _by_hand(run, labels, 2.0)
    torch.testing.assert_close(torch.from_numpy(stored["samples"]), expected, **CLOSE)
    assert record["nfe_per_image"] == 2 * (2 * HEUN - 1) and record["n_samples"] == 12
    assert record["conditioning"] | {} == {**record["conditioning"], "class_labels": [0, 1, 2], "guidance": 2.0,
                                           "guidance_kind": "classifier-free", "guide": None, "per_class": 4,
                                           "label_counts": {"0": 4, "1": 4, "2": 4}}
    from PIL import Image

    width, height = Image.open(out / "samples.png").size
    assert height * 4 == width * 3 or abs(height / width - 3 / 4) < 0.05  # 3 rows of 4


def test_autoguidance_and_python_agree_with_the_formula(cond_run, tmp_path):
    """``guide_run=<the step-15 checkpoint>``: (1 + w)·s_30(x | c) − w·s_15(x | c); the CLI, ``run.sample`` and
    the formula agree; w = 0 is plain conditional sampling at one call per score."""
    from dae_gen import load_run
    from dae_gen.cli.sample import sample

    early = cond_run / "checkpoints" / "ckpt_00000015.pt"
    out = sample(_compose("sample", f"run={cond_run}", "class_labels=all", "per_class=2", "guidance=1.5",
                          f"guide_run={early}", f"++sampler.n_steps={HEUN}", "save_npz=true", "threads=1"),
                 tmp_path / "auto")
    stored, record = np.load(out / "samples.npz"), json.loads((out / "sample.json").read_text())
    run, guide = load_run(cond_run), load_run(early)
    labels = torch.arange(10).repeat_interleave(2)
    expected = _by_hand(run, labels, 1.5, guide=guide.model)
    torch.testing.assert_close(torch.from_numpy(stored["samples"]), expected, **CLOSE)
    assert record["conditioning"]["guide"]["step"] == 15 and record["conditioning"]["guidance_kind"] == "autoguidance"
    assert record["nfe_per_image"] == 2 * (2 * HEUN - 1)
    python = run.sample(20, labels=labels, guidance=1.5, guide=guide, n_steps=HEUN)
    torch.testing.assert_close(python, expected, **CLOSE)
    plain = run.sample(6, labels=3, n_steps=HEUN)  # w = 0: the conditional model alone
    torch.testing.assert_close(plain, _by_hand(run, torch.full((6,), 3), 0.0), **CLOSE)
    assert not torch.allclose(plain, run.sample(6, labels=4, n_steps=HEUN))


def test_conditional_tasks_carry_the_labels(cond_run, tmp_path):
    """task=inpaint with class_labels=[3,5]: image i's fills are conditioned on [3,5][i % 2] (equal to the tasks
    library called with the hand-written guided score), the known pixels kept exactly; interpolation rows within
    a class."""
    from dae_gen import load_run
    from dae_gen.cli.sample import sample
    from dae_gen.samplers.tasks import inpaint, inpainting_mask

    out = tmp_path / "inpaint"
    sample(_compose("sample", f"run={cond_run}", "task=inpaint", "class_labels=[3,5]", "guidance=1",
                    "inpaint.n_images=4", "inpaint.n_per_image=2", f"++sampler.n_steps={HEUN}", "threads=1"), out)
    stored = dict(np.load(out / "inpaint.npz"))
    assert stored["class_labels"].tolist() == [3, 3, 5, 5, 3, 3, 5, 5]
    images, mask, fills = (torch.from_numpy(stored[k]) for k in ("images", "mask", "samples"))
    assert torch.equal(fills[:, :, mask.expand_as(images)[0]], images[:, None, mask.expand_as(images)[0]].expand(
        4, 2, -1))
    run = load_run(cond_run)
    driver, _ = run.sampler(None, n_steps=HEUN)
    expected = inpaint(HandGuided(run.model, 1.0), images, mask, n_per_image=2, sampler=driver,
                       generator=torch.Generator().manual_seed(0),
                       cond={"class_labels": torch.from_numpy(stored["class_labels"])})
    torch.testing.assert_close(fills, expected, **CLOSE)
    mask_again = inpainting_mask("half", run.data.shape)
    assert torch.equal(mask, mask_again.expand_as(mask))
    rows = tmp_path / "rows"
    sample(_compose("sample", f"run={cond_run}", "task=interpolate", "class_labels=[7]", "sampler=annealed_langevin",
                    "interpolate.n_rows=2", "interpolate.n_interpolations=3", "++sampler.n_steps_each=1",
                    "threads=1"), rows)
    assert np.load(rows / "interpolate.npz")["class_labels"].tolist() == [7] * 6


def test_eval_draws_uniform_labels_and_records_them(cond_run, tmp_path):
    from dae_gen.cli.evaluate import evaluate

    result = evaluate(_compose("eval", f"run={cond_run}", "class_labels=[1,2]", "guidance=1", "n_samples=40",
                               "batch_size=20", f"++sampler.n_steps={HEUN}", "kid_subset_size=10", "threads=1"),
                      tmp_path / "eval")
    cond = result["conditioning"]
    assert cond["class_labels"] == [1, 2] and sum(cond["label_counts"].values()) == 40
    assert set(cond["label_counts"]) == {1, 2} and min(cond["label_counts"].values()) >= 10
    assert result["nfe_per_image"] == 2 * (2 * HEUN - 1) and np.isfinite(result["fid"])


@pytest.mark.slow
def test_bad_conditioning_fails_in_one_line_naming_the_key(cond_run, tmp_path):
    from dae_gen.cli.sample import sample
    from dae_gen.cli.train import train

    proc = run_command(["dae-gen-sample", f"run={cond_run}", "guidance=-1", f"out={tmp_path / 'x'}"], cwd=tmp_path)
    assert proc.returncode != 0 and error_lines(proc.stderr) == [
        "dae-gen-sample: error: guidance: expected a number w >= 0 (s = (1+w)·s_cond − w·s_guide; 0: no guidance), "
        "got -1"]
    assert not (tmp_path / "x").exists()
    uncond = tmp_path / "uncond"
    train(_compose("train", *[o for o in TINY if o != "experiment=edm_digits_cond"], "experiment=edm_digits",
                   "trainer.steps=2"), uncond)
    with pytest.raises(ConfigError, match=r"^class_labels: this run's model is unconditional"):
        sample(_compose("sample", f"run={uncond}", "class_labels=[1]"), tmp_path / "y")
    with pytest.raises(ConfigError, match=r"^guidance=2: classifier-free guidance needs a class-conditional run"):
        sample(_compose("sample", f"run={uncond}", "guidance=2"), tmp_path / "y")
    with pytest.raises(ConfigError, match=r"^guide_run: the guide gets the main model's labels"):
        sample(_compose("sample", f"run={cond_run}", "guidance=1", f"guide_run={uncond}"), tmp_path / "y")
    points = tmp_path / "points"
    train(_compose("train", "experiment=edm_toy", "trainer.steps=2", "trainer.sample_every=0",
                   "trainer.progress=false", "trainer.tensorboard=false"), points)
    with pytest.raises(ConfigError, match=r"^guide_run: the guide must model the same data: shape \(1, 8, 8\)"):
        sample(_compose("sample", f"run={cond_run}", "guidance=1", f"guide_run={points}"), tmp_path / "y")
    with pytest.raises(ConfigError, match=r"^class_labels: classes must lie in 0..9"):
        sample(_compose("sample", f"run={cond_run}", "class_labels=[10]"), tmp_path / "y")
    assert not (tmp_path / "y").exists()
