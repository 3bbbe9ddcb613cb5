"""Bad settings of samplers, image tasks, devices, output folders, run records and bench targets: each gives one
line on stderr naming the key (or the file), exit status 1, no traceback, and writes nothing anywhere."""

import shutil

import numpy as np
import pytest

from conftest import error_lines, run_command, snapshot

IMAGE_RUN = ["experiment=edm_digits", "trainer.steps=2", "trainer.batch_size=8", "trainer.sample_every=0",
             "trainer.n_samples=4", "trainer.progress=false", "trainer.tensorboard=false", "device=cpu", "threads=1"]
TOY_RUN = ["experiment=ncsn_toy", "debug=default", "trainer.progress=false", "trainer.tensorboard=false",
           "device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny digits run (image tasks), a toy run (2-D data), and a 3-D .npz."""
    root = tmp_path_factory.mktemp("bad_settings")
    for name, overrides in (("img", IMAGE_RUN), ("toy", TOY_RUN)):
        proc = run_command(["dae-gen-train", *overrides, f"hydra.run.dir={name}"], cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
    np.savez(root / "points3d.npz", samples=np.zeros((10, 3, 2), dtype=np.float32))
    return root


CASES = {  # (console script, arguments, text the one line must hold)
    "n_steps": ("dae-gen-sample", ["run=img", "sampler.n_steps=-3"], "sampler.n_steps"),
    "rho": ("dae-gen-sample", ["run=img", "sampler.rho=0"], "sampler.rho"),
    "s_churn": ("dae-gen-sample", ["run=img", "sampler=edm_stochastic", "sampler.s_churn=-1"], "sampler.s_churn"),
    "snr": ("dae-gen-sample", ["run=img", "sampler=pc", "sampler.snr=-0.1"], "sampler.snr"),
    "rtol": ("dae-gen-sample", ["run=img", "sampler=ode", "sampler.rtol=0"], "sampler.rtol"),
    "n_steps_each": ("dae-gen-sample", ["run=img", "sampler=annealed_langevin", "sampler.n_steps_each=0"],
                     "sampler.n_steps_each"),
    "step_lr": ("dae-gen-sample", ["run=img", "sampler=annealed_langevin", "sampler.step_lr=-1"], "sampler.step_lr"),
    "mask": ("dae-gen-sample", ["run=img", "task=inpaint", "inpaint.mask=nonsense"], "inpaint.mask"),
    "missing_fraction": ("dae-gen-sample", ["run=img", "task=inpaint", "inpaint.mask=random",
                                            "inpaint.missing_fraction=1.5"], "inpaint.missing_fraction"),
    "n_rows": ("dae-gen-sample", ["run=img", "task=interpolate", "sampler=annealed_langevin",
                                  "interpolate.n_rows=-1"], "interpolate.n_rows"),
    "trajectory_steps": ("dae-gen-sample", ["run=img", "task=trajectory", "trajectory.steps=[0,100000]"],
                         "trajectory.steps"),
    "trajectory_steps_past_the_end": ("dae-gen-sample", ["run=img", "task=trajectory", "trajectory.steps=[1,100000]"],
                                      "trajectory.steps"),
    "endpoints": ("dae-gen-sample", ["run=img", "task=interpolate", "sampler=annealed_langevin",
                                     "interpolate.endpoints=weird"], "interpolate.endpoints"),
    "known_noise": ("dae-gen-sample", ["run=img", "task=inpaint", "inpaint.known_noise=sometimes"],
                    "inpaint.known_noise"),
    "cuda_sample": ("dae-gen-sample", ["run=img", "device=cuda"], "device"),
    "cuda_eval": ("dae-gen-eval", ["run=toy", "device=cuda"], "device"),
    "cuda_train": ("dae-gen-train", [*TOY_RUN, "device=cuda", "hydra.run.dir=new_run"], "device"),
    "unwritable_out_sample": ("dae-gen-sample", ["run=img", "out=/proc/dae_gen_out"], "out: cannot write"),
    "unwritable_out_eval": ("dae-gen-eval", ["run=toy", "n_samples=16", "out=/proc/dae_gen_out"], "out: cannot write"),
    "points_of_another_shape": ("dae-gen-eval", ["samples=points3d.npz",
                                                 "dataset={_target_:dae_gen.data.toy.two_moons}"], "shape (3, 2)"),
    "bench_target_argument": ("dae-gen-bench", ["experiment=ncsn_toy", "compare=model.net.nonsense", "values=[1,2]",
                                                "hydra.run.dir=bench_run"], "model.net.nonsense"),
    "keep_checkpoints": ("dae-gen-train", [*TOY_RUN, "trainer.keep_checkpoints=-1", "hydra.run.dir=new_run"],
                         "trainer: keep_checkpoints must be at least 1"),
}


def _everything(folder):
    """Every file's hash and every folder's name under ``folder`` (an empty folder left behind counts too)."""
    return snapshot(folder), sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir())


def _one_line(proc, command: str) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_setting_is_one_line_naming_it_and_writes_nothing(runs, case):
    command, args, expected = CASES[case]
    before = _everything(runs)
    proc = run_command([command, *args, *([] if any(a.startswith("threads=") for a in args) else ["threads=1"])],
                       cwd=runs)
    assert expected in _one_line(proc, command)
    assert _everything(runs) == before  # no folder or file anywhere under the fixture, the runs included


def test_a_damaged_run_record_is_refused_before_anything_is_written(runs, tmp_path):
    run = tmp_path / "toy"
    shutil.copytree(runs / "toy", run)
    (run / "config_history.jsonl").unlink()
    (run / "config_history.jsonl").mkdir()
    before = _everything(run)
    proc = run_command(["dae-gen-train", f"run={run}", "trainer.steps=8", "threads=1"], cwd=tmp_path)
    line = _one_line(proc, "dae-gen-train")
    assert "config_history.jsonl" in line and "folder" in line
    assert _everything(run) == before and (run / "config_history.jsonl").is_dir()
