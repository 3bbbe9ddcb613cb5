"""Every kind of bad input to the console scripts gives one line on stderr that names the key or file, a non-zero
exit status and no traceback (unless HYDRA_FULL_ERROR=1), and creates or changes nothing."""

import json
import os

import numpy as np
import pytest

from conftest import error_lines, run_command, snapshot

TOY = ["experiment=ncsn_toy", "debug=default", "trainer.progress=false", "trainer.tensorboard=false", "device=cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained toy run and a few bad files next to it."""
    from hydra import compose, initialize_config_module

    from dae_gen.cli.train import train

    root = tmp_path_factory.mktemp("bad_inputs")
    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TOY, "sampler.n_steps_each=2"])
    train(cfg, root / "toy")
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    (root / "garbage.npz").write_bytes(b"not an npz")
    np.savez(root / "objects.npz", samples=np.array([{"a": 1}], dtype=object))
    np.savez(root / "images.npz", images_uint8=np.zeros((4, 1, 8, 8), dtype=np.uint8))
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("mine")
    (root / "locked").mkdir()
    (root / "locked" / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(),
                                                       "started": "now", "command": "pytest"}))
    return root


TRAIN_CASES = {  # overrides of a new run: what the one line must say
    "unknown option": (["dataset=no_such_data"], ["Could not find 'dataset/no_such_data'", "two_moons"]),
    "unknown key": (["trainer.stepz=5"], ["trainer.stepz: no such key", "+trainer.stepz=VALUE"]),
    "override syntax": (["trainer.steps=["], ["cannot parse the override 'trainer.steps=['"]),
    "type": (["trainer.steps=abc"], ["trainer.steps: expected int, got 'abc'"]),
    "value": (["trainer.steps=0"], ["trainer: steps must be at least 1"]),
    "kept checkpoints": (["trainer.keep_checkpoints=-1"], ["trainer: keep_checkpoints must be at least 1", "got -1"]),
    "hook value": (["trainer.log_every=-1"], ["trainer: log_every must be >= 0"]),
    "added key": (["+trainer.stepz=5"], ["trainer.stepz: Trainer has no argument 'stepz'", "'log_every'"]),
    "negative lr": (["trainer.optimizer.lr=-1e-3"], ["trainer.optimizer.lr must be positive, got -0.001"]),
    "model value": (["model.sigmas.sigma_min=-0.1"], ["model:", "positive"]),
    "sampler value": (["sampler.init=gausian"],
                      ["sampler.init: must be one of ['uniform', 'gaussian'], got 'gausian'"]),
    "sampler key": (["sampler.n_steps_eech=5"], ["has no setting 'n_steps_eech'", "n_steps_each"]),
    "missing data": (["dataset=cifar10"], ["CIFAR-10", "dataset.root"]),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_errors_are_one_line_and_leave_no_folder(tmp_path, case):
    overrides, expected = TRAIN_CASES[case]
    proc = run_command(["dae-gen-train", *TOY, *overrides, "hydra.run.dir=new_run"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("dae-gen-train: error: "), proc.stderr
    for text in expected:
        assert text in lines[0]
    assert not (tmp_path / "new_run").exists()


@pytest.mark.parametrize("folder, expected", [
    ("locked", ["is in use by PID", "pytest"]),
    ("not_a_run", ["is not empty (notes.txt)", "holds no dae_gen run"]),
])
def test_train_refuses_a_busy_or_foreign_folder_without_changing_it(files, folder, expected):
    before = snapshot(files / folder)
    proc = run_command(["dae-gen-train", *TOY, f"hydra.run.dir={files / folder}"], cwd=files)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    for text in expected:
        assert text in lines[0]
    assert snapshot(files / folder) == before


SAMPLE_CASES = {  # dae-gen-sample arguments ({root}: the fixture folder): what the one line must say
    "no run": ([], ["run is required"]),
    "missing checkpoint": (["run={root}/nothing_here.pt"], ["nothing_here.pt does not exist"]),
    "corrupt checkpoint": (["run={root}/garbage.pt"], ["cannot read checkpoint", "garbage.pt"]),
    "unknown sampler setting": (["run={root}/toy", "sampler.n_steps_eech=5"], ["no setting 'n_steps_eech'"]),
    "unknown setting of another sampler": (["run={root}/toy", "sampler=temperature_langevin", "sampler.n_steps_hott=5"],
                                           ["no setting 'n_steps_hott'", "n_steps_hot"]),
    "unknown sampler": (["run={root}/toy", "sampler=langevin"], ["Could not find 'sampler/langevin'",
                                                                 "temperature_langevin"]),
    "type": (["run={root}/toy", "n_samples=abc"], ["n_samples: expected int, got 'abc'"]),
    "sampler setting type": (["run={root}/toy", "sampler.n_steps_each=abc"],
                             ["sampler.n_steps_each: expected int, got 'abc'"]),
    "value": (["run={root}/toy", "n_samples=0"], ["n_samples must be positive, got 0"]),
    "diverged": (["run={root}/toy", "n_samples=8", "sampler.step_lr=10"], ["8 of 8 samples are not finite"]),
    # every sampler setting is checked by the registry before anything runs
    "n_steps_each": (["run={root}/toy", "sampler.n_steps_each=0"],
                     ["sampler.n_steps_each: must be an integer of at least 1, got 0"]),
    "step_lr": (["run={root}/toy", "sampler.step_lr=-1"], ["sampler.step_lr: must be positive, got -1"]),
    "n_steps": (["run={root}/toy", "sampler=heun", "sampler.n_steps=-3"],
                ["sampler.n_steps: must be an integer of at least 1, got -3"]),
    "rho": (["run={root}/toy", "sampler=heun", "sampler.rho=0"], ["sampler.rho: must be positive, got 0"]),
    "s_churn": (["run={root}/toy", "sampler=edm_stochastic", "sampler.s_churn=-1"],
                ["sampler.s_churn: must be non-negative, got -1"]),
    "snr": (["run={root}/toy", "sampler=pc", "sampler.snr=-0.1"], ["sampler.snr: must be positive, got -0.1"]),
    "rtol": (["run={root}/toy", "sampler=ode", "sampler.rtol=0"], ["sampler.rtol: must be positive, got 0"]),
}


EVAL_CASES = {
    "nothing to evaluate": ([], ["give run="]),
    "garbage npz": (["samples={root}/garbage.npz"], ["samples=", "garbage.npz: not a readable .npz"]),
    "pickled objects": (["samples={root}/objects.npz"], ["objects.npz: not a readable .npz",
                                                         "allow_pickle=False"]),
    "diverged": (["run={root}/toy", "n_samples=8", "sampler.step_lr=10"], ["8 of 8 samples are not finite"]),
    "missing weights": (["samples={root}/images.npz", "dataset={{_target_:dae_gen.data.digits.digits}}",
                         "weights_path={root}/no_weights.pt"], ["weights_path:", "no_weights.pt"]),
}


@pytest.mark.parametrize("command, case", [("dae-gen-sample", c) for c in sorted(SAMPLE_CASES)]
                         + [("dae-gen-eval", c) for c in sorted(EVAL_CASES)])
def test_sample_and_eval_errors_are_one_line_and_write_nothing(files, command, case):
    args, expected = (SAMPLE_CASES if command == "dae-gen-sample" else EVAL_CASES)[case]
    before = snapshot(files / "toy")
    proc = run_command([command, *(a.format(root=files) for a in args), "device=cpu"], cwd=files)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), proc.stderr
    for text in expected:
        assert text in lines[0]
    assert snapshot(files / "toy") == before


def test_hydra_full_error_shows_the_traceback(tmp_path):
    proc = run_command(["dae-gen-train", *TOY, "trainer.steps=abc", "hydra.run.dir=r"], cwd=tmp_path,
                       extra_env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "trainer.steps: expected int" in proc.stderr
