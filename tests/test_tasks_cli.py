"""The image tasks as README shows them: its Python lines and its ``dae-gen-sample task=...`` commands, run in a
temporary working directory on a tiny trained digits run, with the written numbers checked against the model."""

from __future__ import annotations

import re
import shlex
import subprocess

import numpy as np
import pytest
import torch

from conftest import REPO, run_command
from dae_gen.samplers.tasks import frame_steps

BASE = ["trainer.steps=6", "trainer.log_every=2", "trainer.ckpt_every=3", "trainer.sample_every=0",
        "trainer.n_samples=4", "trainer.batch_size=8", "trainer.progress=false", "trainer.tensorboard=false",
        "sampler.n_steps_each=1", "device=cpu"]
FAST = [*BASE, "model.net.channels=8", "model.sigmas.n_levels=6"]  # a small U-Net over 6 levels


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## Image tasks"):].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding ``outputs/run1``: a small NCSN on digits (6 levels), trained 6 steps, its
    sampler one step per level."""
    from hydra import compose, initialize_config_module

    from dae_gen.cli.train import train

    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=FAST)
    root = tmp_path_factory.mktemp("tasks_cli")
    train(cfg, root / "outputs" / "run1")
    return root


def test_readme_python_lines(workdir, monkeypatch):
    block = re.search(r"\n((?:    .*\n|\n)+?)\n- \*\*inpainting", readme_section()).group(1)
    code = "\n".join(line[4:] for line in block.splitlines())
    monkeypatch.chdir(workdir)
    names: dict = {}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - the README's own example
    images, mask, filled = names["images"], names["mask"], names["filled"]
    assert images.shape == (8, 1, 8, 8) and filled.shape == (8, 4, 1, 8, 8)
    assert torch.equal(filled[:, :, mask], images[:, None, mask].expand(8, 4, -1))
    assert names["rows"].shape == (4, 8, 1, 8, 8)
    chains = names["chains"]
    n_steps = len(names["run"].model.sigmas)  # the run's sampler: one step per level
    assert chains.steps == frame_steps(n_steps, 10) and tuple(chains.frames.shape) == (len(chains.steps), 8, 1, 8, 8)
    seen = names["seen"]
    assert seen.noisy.shape == seen.denoised.shape == (6, 8, 1, 8, 8)


def _run(workdir, command: str):
    proc = subprocess.run(shlex.split(command), cwd=workdir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    task = re.search(r"task=(\w+)", command).group(1)
    found = sorted((workdir / "outputs" / "run1" / "samples_cli").glob(f"*/{task}.npz"))
    assert found, f"{command} wrote no {task}.npz"
    return dict(np.load(found[-1])), found[-1].parent


def test_readme_task_commands(workdir):
    from dae_gen import load_run

    commands = [line.strip() for line in readme_section().splitlines() if line.strip().startswith("dae-gen-sample")]
    assert [re.search(r"task=(\w+)", c).group(1) for c in commands] == ["inpaint", "interpolate", "trajectory",
                                                                       "denoise"]
    run = load_run(workdir / "outputs" / "run1")
    sigma_last = run.model.sigmas[-1]

    npz, folder = _run(workdir, commands[0])  # inpaint: centre mask, 4 completions of 8 test images
    images, mask, samples = npz["images"], npz["mask"], npz["samples"]
    assert samples.shape == (8, 4, 1, 8, 8) and mask.shape == (1, 8, 8) and not mask[:, 2:6, 2:6].any()
    assert np.array_equal(samples[:, :, mask], np.broadcast_to(images[:, None, mask], (8, 4, int(mask.sum()))))
    assert np.isfinite(samples).all() and (folder / "inpaint.png").is_file()
    held_out = run.data_examples(8, seed=0).numpy()
    assert np.array_equal(images, held_out)  # the digits test split, chosen with the command's seed

    npz, folder = _run(workdir, commands[1])  # interpolate: 4 rows of 8
    assert npz["samples"].shape == (4, 8, 1, 8, 8) and np.isfinite(npz["samples"]).all()
    assert (folder / "interpolate.png").is_file()

    npz, folder = _run(workdir, commands[2])  # trajectory: 12 frames of the run's sampler (1 step per level)
    steps, frames, samples = npz["steps"], torch.from_numpy(npz["frames"]), torch.from_numpy(npz["samples"])
    assert steps.tolist() == frame_steps(len(run.model.sigmas), 12) and frames.shape == (len(steps), 8, 1, 8, 8)
    with torch.no_grad():  # the output is the last recorded state after the Tweedie step
        expected = frames[-1] + sigma_last**2 * run.model.score(frames[-1], sigma_last.expand(8))
    torch.testing.assert_close(samples, expected)
    assert (folder / "trajectory.png").is_file() and (folder / "trajectory.gif").is_file()

    npz, folder = _run(workdir, commands[3])  # denoise at σ = 0.05, 0.2, 0.5
    sigmas, noisy, denoised = npz["sigmas"], torch.from_numpy(npz["noisy"]), torch.from_numpy(npz["samples"])
    torch.testing.assert_close(torch.from_numpy(sigmas), torch.tensor([0.05, 0.2, 0.5]))
    eps = (noisy - torch.from_numpy(npz["images"])) / torch.from_numpy(sigmas).reshape(3, 1, 1, 1, 1)
    torch.testing.assert_close(eps, eps[:1].expand_as(eps), atol=1e-5, rtol=0)  # one ε for every σ
    with torch.no_grad():
        for k, sigma in enumerate(sigmas.tolist()):
            expected = noisy[k] + sigma**2 * run.model.score(noisy[k], torch.full((8,), sigma))
            torch.testing.assert_close(denoised[k], expected)
    assert (folder / "denoise.png").is_file()



def test_trajectory_of_the_adaptive_ode_solver(workdir):
    """``sampler=ode`` reports steps with n=None: the frames are chosen once the solver has ended."""
    proc = run_command(["dae-gen-sample", "run=outputs/run1", "sampler=ode", "task=trajectory",
                        "trajectory.n_chains=3", "trajectory.n_frames=5", "sampler.rtol=1e-3", "sampler.atol=1e-3",
                        "out=ode_trajectory", "threads=1"], cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    npz = dict(np.load(workdir / "ode_trajectory" / "trajectory.npz"))
    steps, frames, samples = npz["steps"].tolist(), npz["frames"], npz["samples"]
    assert len(steps) == 5 and steps[0] == 1 and steps == sorted(steps) and frames.shape == (5, 3, 1, 8, 8)
    assert steps == frame_steps(steps[-1], 5)  # spread evenly over the evaluations the solver made
    np.testing.assert_array_equal(frames[-1], samples)  # the last step is the denoising step, whose state is the output

def test_bad_tasks_fail_with_one_clear_error(workdir, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_module

    import dae_gen.threads

    # an idle two-core machine, so that threads=auto probes the sampler: the refusals must come before the probe
    monkeypatch.setattr(dae_gen.threads, "available_cores", lambda: 2)
    monkeypatch.setattr(dae_gen.threads, "busy_cores", lambda: 0.0)
    from hydra.utils import instantiate

    from dae_gen import ConfigError
    from dae_gen.cli.sample import sample

    def compose_sample(*overrides):
        with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
            return compose(config_name="sample", overrides=list(overrides))

    run = workdir / "outputs" / "run1"
    with pytest.raises(ConfigError, match="task: must be one of"):
        sample(compose_sample(f"run={run}", "task=paint"), tmp_path / "a")
    with pytest.raises(ConfigError, match="sampler=generator cannot inpaint"):
        sample(compose_sample(f"run={run}", "task=inpaint", "sampler=generator"), tmp_path / "b")
    with pytest.raises(ConfigError, match="sampler=generator needs a model with a generator network"):
        sample(compose_sample(f"run={run}", "sampler=generator"), tmp_path / "c")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    # 2-D data: no image pictures for inpainting, but interpolation rows work
    from dae_gen.cli.train import train

    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["dataset=two_moons", "model=ncsn_mlp", "sampler.init=gaussian",
                                                      *BASE])
    points = tmp_path / "points"
    train(cfg, points)
    with pytest.raises(ConfigError, match="image pictures"):
        sample(compose_sample(f"run={points}", "task=inpaint"), tmp_path / "c")
    picture = sample(compose_sample(f"run={points}", "task=interpolate", "interpolate.n_rows=2"), tmp_path / "d")
    assert picture.is_file() and np.load(tmp_path / "d" / "interpolate.npz")["samples"].shape == (2, 8, 2)
    assert callable(instantiate(compose_sample(f"run={run}", "sampler=annealed_langevin").sampler))
