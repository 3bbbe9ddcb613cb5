"""Post-hoc EMA through the trainer and the console scripts: the hook's state in the checkpoints (a stopped and
resumed run writes the same snapshots as an uninterrupted one), ``trainer.posthoc_ema`` checked key by key, and
``ema_length=L`` giving ``dae-gen-sample``/``dae-gen-eval``/``load_run`` exactly the weights
:func:`dae_gen.posthoc_ema.posthoc_weights` reconstructs from the run's snapshot files."""

import json
import os
import shutil
import signal
from functools import partial

import numpy as np
import pytest
import torch

from conftest import error_lines, hooked_trainer, run_command, snapshot
from dae_gen import load_run
from dae_gen.checkpoint import load_checkpoint
from dae_gen.data.toy import two_moons
from dae_gen.errors import ConfigError, TrainingInterrupted
from dae_gen.nets.mlp import ScoreMLP
from dae_gen.noise import geometric_sigmas
from dae_gen.objectives.dsm import DenoisingScoreMatching
from dae_gen.posthoc_ema import SIGMA_REL_MAX, PostHocEMAHook, load_snapshots, posthoc_weights, profile_error
from dae_gen.run_folder import RunDir
from dae_gen.train_hooks import Hook

# the mixture preset, 12 steps of batch 8, a checkpoint every 4 steps, post-hoc EMA snapshots every 3 steps
TRAIN = ["dae-gen-train", "experiment=ncsn_toy", "debug=default", "trainer.steps=12", "trainer.ckpt_every=4",
         "trainer.progress=false", "trainer.tensorboard=false", "device=cpu", "threads=1"]
SNAPSHOTS = ["trainer.posthoc_ema.snapshot_every=3"]
SAMPLE = ["n_samples=20", "batch_size=8", "seed=5", "device=cpu", "threads=1", "sampler.n_steps_each=3"]


class _StopAt(Hook):
    """Sends this process SIGTERM after step ``step`` (the trainer's stop policy then checkpoints that step)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, logs):
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _trainer(run_dir, *extra_hooks, steps=20):
    torch.manual_seed(123)
    objective = DenoisingScoreMatching(net=partial(ScoreMLP, hidden=32, depth=2), data_shape=(2,),
                                       sigmas=geometric_sigmas(1.0, 0.05, 5))
    hooks = [PostHocEMAHook(sigma_rels=[0.05, 0.10], snapshot_every=3), *extra_hooks]
    return hooked_trainer(objective=objective, data=two_moons(), run_dir=run_dir, steps=steps, batch_size=16,
                          optimizer=partial(torch.optim.Adam, lr=1e-3), log_every=1, ckpt_every=5, sample_every=0,
                          progress=False, tensorboard=False, seed=7, hooks=hooks)


def test_a_stopped_and_resumed_run_writes_the_snapshots_of_an_uninterrupted_one(tmp_path):
    _trainer(tmp_path / "a").fit()
    with pytest.raises(TrainingInterrupted, match="stopped after step 11/20"):  # between two checkpoint periods
        _trainer(tmp_path / "b", _StopAt(11)).fit()
    state = load_checkpoint(tmp_path / "b")
    assert state["step"] == 11 and state["hooks"]["PostHocEMAHook"]["step"] == 11  # the hook ran before the save
    assert _trainer(tmp_path / "b").fit()["resumed"] == 1.0
    a, b = RunDir(tmp_path / "a").posthoc_ema_folder, RunDir(tmp_path / "b").posthoc_ema_folder
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 2 * 6  # steps 3, 6, ..., 18
    for name in names:
        x, y = load_snapshots([a / name, b / name])
        assert (x["step"], x["sigma_rel"]) == (y["step"], y["sigma_rel"])
        for key in x["weights"]:
            assert torch.equal(x["weights"][key], y["weights"][key]), (name, key)
    end_a, end_b = load_checkpoint(tmp_path / "a")["hooks"], load_checkpoint(tmp_path / "b")["hooks"]
    for x, y in zip(end_a["PostHocEMAHook"]["averages"], end_b["PostHocEMAHook"]["averages"]):
        assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """Two 12-step toy runs trained by the console script: with snapshots every 3 steps, and without."""
    cwd = tmp_path_factory.mktemp("posthoc")
    for name, extra in (("with", SNAPSHOTS), ("without", [])):
        proc = run_command([*TRAIN, *extra, f"hydra.run.dir={name}"], cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "with", cwd / "without"


def test_sample_with_an_ema_length_draws_from_the_reconstruction_of_the_snapshot_files(toy_runs, tmp_path):
    run, _ = toy_runs
    files = sorted(RunDir(run).posthoc_ema_folder.glob("ema-*.pt"))
    assert [f.name for f in files[:2]] == ["ema-000000003-0.050.pt", "ema-000000003-0.100.pt"] and len(files) == 8
    proc = run_command(["dae-gen-sample", f"run={run}", "ema_length=0.07", "save_npz=true", f"out={tmp_path / 's'}",
                        *SAMPLE], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "s" / "sample.json").read_text())
    expected_error = profile_error(load_snapshots(files), 0.07)
    assert record["ema_length"] == 0.07 and record["posthoc_ema"]["step"] == 12
    assert record["posthoc_ema"]["snapshots"] == [f"posthoc_ema/{f.name}" for f in files]
    assert record["posthoc_ema"]["profile_error"] == pytest.approx(expected_error, rel=1e-12) and expected_error < 0.1
    # the same samples from the checkpoint's model holding posthoc_weights(files): the CLI used exactly those weights
    expected = load_run(run)
    expected.model.load_state_dict(posthoc_weights(files, 0.07))
    with np.load(tmp_path / "s" / "samples.npz", allow_pickle=False) as stored:
        assert torch.equal(torch.from_numpy(stored["samples"]), expected.sample(20, seed=5, batch_size=8,
                                                                                n_steps_each=3))
    api = load_run(run, ema_length=0.07)
    reconstructed = posthoc_weights(files, 0.07)
    assert all(torch.equal(v, reconstructed[k]) for k, v in api.model.state_dict().items())
    assert api.posthoc_ema == record["posthoc_ema"]
    # dae-gen-eval on the same weights, seed and batches: the same samples, so the same metrics
    proc = run_command(["dae-gen-eval", f"run={run}", "ema_length=0.07", f"out={tmp_path / 'e'}", *SAMPLE],
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert result["ema_length"] == 0.07 and result["posthoc_ema"] == record["posthoc_ema"]
    proc = run_command(["dae-gen-eval", f"samples={tmp_path / 's' / 'samples.npz'}", f"out={tmp_path / 'e2'}",
                        "seed=5"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "e2" / "eval.json").read_text())["mmd"] == result["mmd"]


@pytest.mark.parametrize("length, name", [(0.05, "ema-000000012-0.050.pt"), (0.10, "ema-000000012-0.100.pt")])
def test_a_stored_length_reproduces_its_own_average(toy_runs, length, name):
    run, _ = toy_runs
    stored = torch.load(RunDir(run).posthoc_ema_folder / name, weights_only=True)["weights"]
    loaded = load_run(run, ema_length=length)
    assert loaded.posthoc_ema["profile_error"] < 1e-6
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, stored[key], rtol=1e-5, atol=1e-6)


def test_an_older_checkpoint_uses_only_the_snapshots_up_to_its_step(toy_runs):
    run, _ = toy_runs
    loaded = load_run(run / "checkpoints" / "ckpt_00000008.pt", ema_length=0.10)
    assert loaded.step == 8 and loaded.posthoc_ema["step"] == 6
    assert loaded.posthoc_ema["snapshots"] == [f"posthoc_ema/ema-00000000{s}-{v}.pt" for s in (3, 6)
                                               for v in ("0.050", "0.100")]
    stored = torch.load(RunDir(run).posthoc_ema_folder / "ema-000000006-0.100.pt", weights_only=True)["weights"]
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, stored[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("command, args, message", [
    ("dae-gen-sample", ["ema_length=0.1"], "has no post-hoc EMA snapshots"),
    ("dae-gen-eval", ["ema_length=0.1"], "has no post-hoc EMA snapshots"),
    ("dae-gen-sample", ["ema_length=0.01"], "profile error"),
    ("dae-gen-eval", ["ema_length=0.01"], "profile error"),
    ("dae-gen-sample", ["ema_length=0.5"], f"ema_length: expected a relative EMA length in (0, {SIGMA_REL_MAX:.4f})"),
    ("dae-gen-sample", ["ema_length=0.1", "use_ema=false"], "drop one of them"),
    ("dae-gen-sample", ["ema_length=0.1", "max_profile_error=0"], "max_profile_error: expected a positive"),
])
def test_an_ema_length_that_cannot_be_served_is_one_line_and_writes_nothing(toy_runs, tmp_path, command, args,
                                                                            message):
    with_snapshots, without = toy_runs
    run = without if "no post-hoc" in message else with_snapshots
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    proc = run_command([command, f"run={copy}", *args, *SAMPLE], cwd=tmp_path)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{command}: error:") and message in lines[0], lines[0]
    assert snapshot(copy) == before


@pytest.mark.parametrize("override, message", [
    ("trainer.posthoc_ema.snapshot_every=0", "trainer.posthoc_ema.snapshot_every: expected a positive number"),
    ("trainer.posthoc_ema.snapshot_every=1.5", "trainer.posthoc_ema.snapshot_every: expected a positive number"),
    ("trainer.posthoc_ema.sigma_rels=[]", "trainer.posthoc_ema.sigma_rels: expected a non-empty list"),
    ("trainer.posthoc_ema.sigma_rels=[0.05,0.5]", "trainer.posthoc_ema.sigma_rels: each length must be in"),
    ("trainer.posthoc_ema.sigma_rels=[0.1,0.1]", "trainer.posthoc_ema.sigma_rels: the lengths must differ"),
    ("+trainer.posthoc_ema.every=3", "trainer.posthoc_ema: unknown keys ['every']"),
])
def test_bad_posthoc_ema_settings_are_one_line_before_anything_is_written(tmp_path, override, message):
    proc = run_command([*TRAIN, *SNAPSHOTS, override, "hydra.run.dir=new"], cwd=tmp_path)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "new").exists()


def test_an_ema_decay_change_on_resume_is_refused_and_points_to_posthoc_ema(toy_runs, tmp_path):
    _, run = toy_runs
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    proc = run_command(["dae-gen-train", f"run={copy}", "trainer.steps=16", "trainer.ema_decay=0.99", "threads=1"],
                       cwd=tmp_path)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "refusing to change trainer.ema_decay: 0.999 -> 0.99" in lines[0]
    assert "trainer.posthoc_ema.snapshot_every=N and sample with ema_length=L" in lines[0]
    assert snapshot(copy) == before


def test_posthoc_weights_refuses_a_length_the_snapshots_cannot_match(toy_runs):
    run, _ = toy_runs
    with pytest.raises(ConfigError, match="ema_length: 0.01 is reconstructed with profile error"):
        load_run(run, ema_length=0.01)
