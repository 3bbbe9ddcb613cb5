"""A run folder through its life, with the console scripts exactly as a user types them: train, stop, resume (its
stored config; changes to what was trained refused without touching a byte; safe changes recorded), sample and
evaluate from a directory or a checkpoint file, and the Python API drawing the CLI's samples bit for bit."""

import json
import math
import shutil
import socket
import subprocess

import numpy as np
import pytest
import torch

from conftest import error_lines, run_command, snapshot
from dae_gen import load_run
from dae_gen.checkpoint import load_checkpoint

# the mixture preset, shrunk by the debug group: 4 steps of batch 8, a checkpoint every 2 steps, a log line per step
TRAIN = ["dae-gen-train", "experiment=ncsn_toy", "debug=default", "trainer.progress=false",
         "trainer.tensorboard=false", "device=cpu", "threads=1"]
LOG_LINE = "][dae_gen."  # the console/train.log format: [time][logger][LEVEL] - message


def log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if LOG_LINE in line]


def _dead_pid() -> int:
    """The PID of a process that has ended."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step NCSN run on the 8-Gaussian mixture, trained by the console script; tests work on copies."""
    cwd = tmp_path_factory.mktemp("lifecycle")
    proc = run_command([*TRAIN, "hydra.run.dir=toy"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "toy"


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "toy"
    shutil.copytree(trained, copy)
    return copy


def test_a_new_run_records_its_launch(trained):
    assert not (trained / ".hydra").exists() and not (trained / ".lock").exists()
    history = [json.loads(line) for line in (trained / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["launch"] == "new" and history[0]["start_step"] == 0
    assert history[0]["command"].startswith("dae-gen-train experiment=ncsn_toy debug=default")
    assert load_checkpoint(trained)["step"] == 4


@pytest.mark.parametrize("overrides, named", [
    (["dataset=two_moons"], ['dataset._target_: "dae_gen.data.toy.mixture" -> "dae_gen.data.toy.two_moons"']),
    (["model.sigmas.n_levels=5"], ["model.sigmas.n_levels: 10 -> 5"]),
    (["seed=1", "trainer.optimizer.lr=1e-4", "trainer.steps=8"],
     ["seed: 0 -> 1", "trainer.optimizer.lr: 0.002 -> 0.0001"]),
    (["experiment=ncsn_digits"], ['dataset._target_: "dae_gen.data.toy.mixture" -> "dae_gen.data.digits.digits"',
                                  "model.net._target_"]),
])
def test_resume_refuses_changes_to_what_was_trained_without_touching_the_folder(run, overrides, named):
    before = snapshot(run)
    proc = run_command(["dae-gen-train", f"hydra.run.dir={run}", *overrides], cwd=run.parent)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dae-gen-train: error:") and "refusing to change" in lines[0]
    for text in named:
        assert text in lines[0]
    assert "trainer.steps: " not in lines[0]  # safe: not listed among the refused keys
    assert snapshot(run) == before


def test_resume_with_more_steps_continues_its_stored_config_and_records_the_change(run):
    """``experiment=`` forgotten: the run's own config is resumed, only the given keys change. A lock left by a
    killed trainer is taken over, with a warning that reaches the console and train.log alike."""
    dead = _dead_pid()
    (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "started": "", "command": ""}))
    proc = run_command(["dae-gen-train", f"run={run}", "trainer.steps=6", "sampler.n_steps_each=3"], cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(run)["step"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(r["loss/model"]) for r in rows)
    config = load_checkpoint(run)["config"]
    assert config["dataset"]["_target_"] == "dae_gen.data.toy.mixture" and config["trainer"]["batch_size"] == 8
    assert config["trainer"]["steps"] == 6 and config["sampler"]["n_steps_each"] == 3
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(OmegaConf.load(run / "config.yaml")) == config  # config.yaml: the effective one
    history = [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[1]["launch"] == "resume" and history[1]["start_step"] == 4
    assert history[1]["changed"] == {"trainer.steps": [4, 6], "sampler.n_steps_each": [50, 3]}
    # the console's log lines are train.log's lines of this launch
    logged = log_lines(proc.stdout) + log_lines(proc.stderr)
    assert any("trainer.steps: 4 -> 6" in line for line in logged)
    assert any("taking over the stale lock" in line for line in log_lines(proc.stderr))
    assert not (run / ".lock").exists()
    tail = log_lines((run / "train.log").read_text())[-len(logged):]
    assert sorted(tail) == sorted(logged)


def test_resume_from_an_older_checkpoint_file_is_refused(run):
    before = snapshot(run)
    proc = run_command(["dae-gen-train", f"run={run / 'checkpoints' / 'ckpt_00000002.pt'}", "trainer.steps=8"],
                       cwd=run.parent)
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(lines) == 1 and "newest checkpoint" in lines[0], proc.stderr
    assert snapshot(run) == before


def test_sample_and_eval_from_a_checkpoint_file_write_beside_the_run_and_record_the_settings(run):
    checkpoint = run / "checkpoints" / "ckpt_00000004.pt"
    proc = run_command(["dae-gen-sample", f"run={checkpoint}", "n_samples=40", "batch_size=16", "seed=3",
                        "save_npz=true", "sampler.n_steps_each=5", "threads=1"], cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (run / "samples_cli").iterdir()
    assert str(out) in proc.stdout  # the console says where the files went
    record = json.loads((out / "sample.json").read_text())
    expected_sampler = {**load_checkpoint(run)["config"]["sampler"], "n_steps_each": 5}
    expected_sampler.pop("_partial_")
    assert record["sampler"] == expected_sampler
    assert (record["seed"], record["use_ema"], record["step"], record["batch_size"]) == (3, True, 4, 16)
    assert record["checkpoint"] == str(checkpoint) and record["run"] == str(run)
    with np.load(out / "samples.npz", allow_pickle=False) as stored:
        assert json.loads(str(stored["record"])) == record and stored["samples"].shape == (40, 2)
        assert int(stored["step"]) == 4 and int(stored["seed"]) == 3
    # dae-gen-eval on the same checkpoint, seed and batches draws the same samples: the metrics agree exactly
    proc = run_command(["dae-gen-eval", f"run={checkpoint}", "n_samples=40", "batch_size=16", "seed=3",
                        "sampler.n_steps_each=5", "threads=1"], cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (eval_dir,) = (run / "eval").iterdir()
    drawn = json.loads((eval_dir / "eval.json").read_text())
    assert drawn["metric"] == "toy" and drawn["step"] == 4 and drawn["sampler"]["n_steps_each"] == 5
    assert len(drawn["mode_weights"]) == 8 and sum(drawn["mode_weights"]) + drawn["outliers"] == pytest.approx(1.0)
    proc = run_command(["dae-gen-eval", f"samples={out / 'samples.npz'}", "seed=3", f"out={run.parent / 'e2'}"],
                       cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads((run.parent / "e2" / "eval.json").read_text())
    for key in ("sliced_wasserstein", "mmd", "mode_weights", "outliers", "baseline", "step"):
        assert loaded[key] == drawn[key], key


@pytest.mark.parametrize("cli_args, api_kwargs", [
    (["sampler.n_steps_each=3"], {"n_steps_each": 3}),
    (["sampler=temperature_langevin", "sampler.n_steps_hot=3", "sampler.n_steps_anneal=4", "sampler.n_steps_cool=2"],
     {"sampler": "temperature_langevin", "n_steps_hot": 3, "n_steps_anneal": 4, "n_steps_cool": 2}),
])
def test_the_python_api_reproduces_the_cli_samples_bit_for_bit(trained, tmp_path, cli_args, api_kwargs):
    proc = run_command(["dae-gen-sample", f"run={trained}", "n_samples=20", "batch_size=8", "seed=5", "save_npz=true",
                        "device=cpu", "threads=1", f"out={tmp_path / 'out'}", *cli_args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "out" / "samples.npz", allow_pickle=False) as stored:
        from_cli = torch.from_numpy(stored["samples"])
    from_api = load_run(trained).sample(20, seed=5, batch_size=8, **api_kwargs)
    assert torch.equal(from_api, from_cli)
    assert not (trained / "samples_cli").exists()  # out= was given: nothing beside the run


def test_a_refused_new_run_leaves_no_folder(tmp_path):
    proc = run_command(["dae-gen-train", "experiment=ncsn_toy", "trainer.optimizer.lr=-0.001", "hydra.run.dir=new"],
                       cwd=tmp_path)
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(lines) == 1 and "trainer.optimizer.lr must be positive" in lines[0]
    assert not (tmp_path / "new").exists()


# -- the safe/unsafe split and the toy metrics, in-process -----------------------------------------------------
def test_resumed_config_takes_only_the_touched_keys_and_classifies_each_change():
    from dae_gen.resume import resumed_config

    stored = {"seed": 0, "dataset": {"_target_": "m", "n_modes": 8}, "trainer": {"steps": 4, "batch_size": 8},
              "sampler": {"n_steps_each": 50}, "data_shape": [2]}
    requested = {"seed": 0, "dataset": {"_target_": "d", "split": "train"}, "trainer": {"steps": 9, "batch_size": 128},
                 "sampler": {"n_steps_each": 3}}
    config, changes = resumed_config(stored, requested, ["trainer.steps", "sampler.n_steps_each"])
    assert config == {**stored, "trainer": {"steps": 9, "batch_size": 8}, "sampler": {"n_steps_each": 3}}
    assert [(c.key, c.old, c.new, c.safe) for c in changes] == [("sampler.n_steps_each", 50, 3, True),
                                                                ("trainer.steps", 4, 9, True)]
    _, changes = resumed_config(stored, requested, None)  # every key compared
    assert {c.key: c.safe for c in changes} == {"dataset._target_": False, "dataset.n_modes": False,
                                                "dataset.split": False, "sampler.n_steps_each": True,
                                                "trainer.batch_size": False, "trainer.steps": True}


def test_toy_metrics_of_exact_samples_sit_at_the_floor_and_a_shift_is_measured():
    """Exact samples score like the exact-vs-exact baseline, put 1/8 of their mass on each mode and exp(−4²/2) beyond
    4 stds of it (the 2-D Gaussian's Rayleigh tail); a shift by v moves the sliced W2 to ‖v‖/√2 (E(θ·v)² = ‖v‖²/2)."""
    from dae_gen.data.toy import mixture
    from dae_gen.metrics.toy import compare_with_exact

    data, n = mixture(), 4000
    exact = data.sample(n, generator=torch.Generator().manual_seed(7))
    result = compare_with_exact(exact, data, seed=0)
    assert result["sliced_wasserstein"] < 2 * result["baseline"]["sliced_wasserstein"] + 0.02
    assert abs(result["mmd"]) < 0.01
    assert result["outliers"] == pytest.approx(math.exp(-8), abs=4 * math.sqrt(math.exp(-8) / n))
    assert max(abs(w - 1 / 8) for w in result["mode_weights"]) < 4 * math.sqrt(1 / 8 * 7 / 8 / n)
    shifted = compare_with_exact(exact + torch.tensor([3.0, 4.0]), data, seed=0)
    assert shifted["sliced_wasserstein"] == pytest.approx(5 / math.sqrt(2), rel=0.05)
    assert shifted["outliers"] > 0.99


def test_one_resume_reads_its_checkpoint_once_and_takes_the_lock_once(run, monkeypatch):
    from hydra import compose, initialize_config_module

    from dae_gen.cli.train import train
    from dae_gen.run_dir import RunLock

    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TRAIN[1:], "trainer.steps=6"])
    reads, locks = [], []
    real_load, real_acquire = torch.load, RunLock.acquire
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(str(a[0])) or real_load(*a, **k))
    monkeypatch.setattr(RunLock, "acquire", lambda self: locks.append(self.path) or real_acquire(self))
    result = train(cfg, run, touched=None, command="test")
    assert result["resumed"] == 1.0 and result["step"] == 6.0
    assert reads == [str(run / "checkpoints" / "ckpt_00000004.pt")] and len(locks) == 1
    assert load_checkpoint(run)["step"] == 6 and not (run / ".lock").exists()
