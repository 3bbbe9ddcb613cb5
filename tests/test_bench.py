"""dae-gen-bench and its library (dae_gen.benchmark): sampler steps stopped mid-chain, network calls counted, run
projections, the threads probe's workload leaving no trace, and the CLI's JSON record (fields, consistency,
comparison ratios) on a debug preset, run as the README writes it."""

import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch

from conftest import REPO
from dae_gen import benchmark as B
from dae_gen.analytic import AnalyticGaussian
from dae_gen.nets.mlp import ScoreMLP
from dae_gen.noise import geometric_sigmas
from dae_gen.objectives.dsm import DenoisingScoreMatching
from dae_gen.samplers.langevin import sample_annealed_langevin
from dae_gen.samplers.temperature import sample_generator, sample_temperature_langevin


def _gaussian():
    """Data N(0, I) in 2-D: exact score −x/(1 + σ²), exact one-pass generator."""
    return AnalyticGaussian(torch.zeros(2), std=1.0, sigmas=geometric_sigmas(2.0, 0.1, 4))


def test_sampler_steps_stop_mid_chain_and_count_network_calls():
    model = _gaussian()
    driver = partial(sample_annealed_langevin, n_steps_each=25, step_lr=1e-2, init="gaussian")
    timing = B.time_sampler_steps(driver, model, 16, steps=5)
    assert (timing.steps_timed, timing.chain_steps, timing.completed) == (5, 100, False)  # 4 levels × 25
    assert timing.calls_per_step == 1.0  # one score call per Langevin step
    assert timing.step_s > 0 and timing.chain_s == pytest.approx(timing.step_s * 100)
    assert "score" not in model.__dict__  # the counter is removed again


def test_a_short_chain_is_timed_whole():
    model = _gaussian()
    driver = partial(sample_temperature_langevin, n_steps_hot=2, n_steps_anneal=3, n_steps_cool=2)
    timing = B.time_sampler_steps(driver, model, 8, steps=50)
    assert (timing.completed, timing.chain_steps, timing.steps_timed, timing.calls_per_step) == (True, 7, 7, 1.0)
    assert timing.chain_s >= timing.step_s * 6  # measured from start to end, including the final denoising call
    one_pass = B.time_sampler_steps(sample_generator, model, 8, steps=3)
    assert (one_pass.completed, one_pass.chain_steps, one_pass.calls_per_step) == (True, 1, 1.0)


def test_a_sampler_that_never_reports_is_an_error():
    with pytest.raises(RuntimeError, match="callback"):
        B.time_sampler_steps(lambda model, n, generator=None, callback=None: torch.zeros(n, 2), _gaussian(), 4,
                             steps=2)


@pytest.mark.parametrize("steps, every, grids", [(3000, 1500, 2), (4000, 1500, 3), (10, 0, 1), (4, 4, 1)])
def test_grids_counted_as_the_trainer_writes_them(steps, every, grids):
    assert B.count_grids(steps, every) == grids


def test_projection_adds_training_grids_and_evaluations():
    p = B.project_run(steps=3000, train_step_s=0.04, sample_every=1500, grid_s=7.0, eval_every=1000, eval_s=30.0)
    assert (p.n_grids, p.n_evals) == (2, 3)
    assert p.train_s == pytest.approx(120.0) and p.total_s == pytest.approx(120.0 + 14.0 + 90.0)
    assert B.project_run(steps=10, train_step_s=1.0, sample_every=5, grid_s=None).total_s == 10.0


def test_training_workload_leaves_no_trace():
    torch.manual_seed(0)
    model = DenoisingScoreMatching(net=partial(ScoreMLP, hidden=16, depth=2), data_shape=(2,),
                                   sigmas=geometric_sigmas(1.0, 0.1, 3))
    weights = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    run = B.training_workload(model, batch_size=32)
    run()
    run()
    assert torch.equal(torch.get_rng_state(), rng)  # the losses' noise came from a forked generator
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_human_seconds():
    assert [B.human_seconds(s) for s in (0.0123, 12.3, 90, 7200, 3 * 86400)] == \
        ["12.3 ms", "12.3 s", "1.5 min", "2 h", "3 d"]


def _bench(tmp_path, *args: str, projected: bool = True) -> dict:
    """``dae-gen-bench ARGS`` in a fresh working directory (no data/fake there: CIFAR-10 must fall back)."""
    out = tmp_path / "bench.json"
    cmd = [os.path.join(os.path.dirname(sys.executable), "dae-gen-bench"), *args, f"bench.out={out}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("projected full run" in done.stdout) == projected and f"record: {out}" in done.stdout
    return json.loads(out.read_text())


def test_bench_cli_writes_a_consistent_record(tmp_path):
    # bench.sampler_steps=8 times the whole 8-step chain whatever the machine's load, so it is measured
    record = _bench(tmp_path, "experiment=mdsm_cifar10_debug", "threads=1", "bench.rounds=2", "bench.round_s=0.2",
                    "bench.sampler_steps=8")
    assert record["preset"] == "mdsm_cifar10_debug" and record["compare"] is None
    assert record["data"]["source"] == "fake" and record["data"]["shape"] == [3, 32, 32]
    assert "dae_gen.data.fakes" in record["data"]["note"]
    assert record["threads"]["threads"] == 1 and record["threads"]["reason"] == "explicit"
    assert record["machine"]["device"] == "cpu" and record["memory_kind"] == "cpu_peak_rss"
    (setting,) = record["settings"]
    train, sampler, projection = setting["train"], setting["sampler"], setting["projection"]
    assert train["batch_size"] == 8 and len(train["rounds_s"]) == 2
    assert train["step_s"] > 0 and train["images_per_s"] == pytest.approx(8 / train["step_s"])
    assert sampler["batch"] == 4 and sampler["calls_per_step"] == 1.0  # trainer.n_samples; one score per step
    assert sampler["chain_steps"] == 8 and sampler["chain_measured"]  # 2 hot + 4 anneal + 2 cool
    assert sampler["network_images_per_s"] == pytest.approx(4 / sampler["step_s"])
    assert sampler["s_per_image"] == pytest.approx(sampler["chain_s"] / 4)
    assert sampler["sample_10k_s"] == pytest.approx(sampler["s_per_image"] * 10_000)
    assert (projection["steps"], projection["n_grids"], projection["n_evals"]) == (4, 1, 0)
    assert projection["train_s"] == pytest.approx(4 * train["step_s"])
    assert projection["total_s"] == pytest.approx(projection["train_s"] + sampler["chain_s"])
    assert all(value > 0 for value in setting["memory"].values())



def test_bench_cli_times_the_adaptive_ode_solver_to_its_end(tmp_path):
    """The ODE solver's steps carry n=None (its length is known only at its end): the chain runs to completion."""
    record = _bench(tmp_path, "dataset=two_moons", "model=ncsn_mlp", "sampler=ode", "bench.train=false", "threads=1",
                    projected=False)  # no training timed: no projection
    (setting,) = record["settings"]
    sampler = setting["sampler"]
    assert "train" not in setting and sampler["target"].endswith("sample_probability_flow_ode")
    assert sampler["chain_measured"] and sampler["calls_per_step"] == 1.0  # one score per function evaluation
    assert sampler["chain_steps"] > 6  # dopri5: 6 evaluations per step, then the denoising call
    assert sampler["s_per_image"] == pytest.approx(sampler["chain_s"] / sampler["batch"])

def test_bench_cli_compares_two_settings_interleaved(tmp_path):
    record = _bench(tmp_path, "experiment=ncsn_toy", "compare=threads", "values=[1,2]", "bench.rounds=2",
                    "bench.round_s=0.1", "trainer.n_samples=16")
    assert record["compare"] == {"key": "threads", "values": [1, 2]}
    first, second = record["settings"]
    assert (first["label"], second["label"]) == ("threads=1", "threads=2")
    assert (first["threads"], second["threads"]) == (1, 2)
    ratio = record["ratios"]["threads=2"]
    for part in ("train", "sampler"):
        assert ratio[f"{part}_step"] == pytest.approx(first[part]["step_s"] / second[part]["step_s"])
        cpu = first[part]["cpu_s_per_step"] / second[part]["cpu_s_per_step"]
        assert ratio[f"{part}_step_cpu"] == pytest.approx(cpu)
        assert second[part]["cpu_s_per_step"] > 0


def test_bench_config_errors_say_what_to_do(tmp_path):
    cmd = [os.path.join(os.path.dirname(sys.executable), "dae-gen-bench"), "experiment=ncsn_toy", "compare=threads",
           f"hydra.run.dir={tmp_path / 'bench'}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "needs at least two settings, e.g. values=[1,2]" in done.stderr
    assert not (tmp_path / "bench").exists()  # a refused command leaves no run folder behind
    cmd[2] = "compare=no_such_key"
    done = subprocess.run([*cmd, "values=[1,2]"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no such key in the composed config" in done.stderr


def test_readme_bench_commands_are_valid(compose_train):
    """The bench commands the README shows compose (the CLI itself is run above)."""
    from hydra import compose, initialize_config_module

    readme = (REPO / "README.md").read_text()
    commands = [line.strip().split("#")[0].split() for line in readme.splitlines()
                if line.strip().startswith("dae-gen-bench ")]
    assert commands, "the README shows no dae-gen-bench command"
    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        for command in commands:
            cfg = compose(config_name="bench", overrides=command[1:])
            assert "bench" in cfg and "trainer" in cfg
