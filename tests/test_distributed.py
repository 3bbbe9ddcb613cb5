"""Real torchrun data parallelism (gloo, 2 CPU processes): DDP equals one process, for every method."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from dae_gen.checkpoint import load_checkpoint

# torch 2.13 CPU: now and then (about 1 run in 10 with another torchrun job on the machine) a gloo rank aborts
# at process exit with "terminate called without an active exception", after all its work is done. A run that
# dies that way, and only that way, is retried once.
GLOO_EXIT_ABORT = "terminate called without an active exception"
# torchrun is `python -m torch.distributed.run`; run through this interpreter so the workers import this dae_gen
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--tee", "3"]


def torchrun(args, *, out_dir, done_marker=None):
    """Run ``args`` under torchrun writing into ``out_dir``; a retry starts from an empty ``out_dir`` (the first
    attempt's files would turn the second into a resume, and a folder it creates would already exist)."""
    for attempt in range(2):
        shutil.rmtree(out_dir, ignore_errors=True)
        proc = subprocess.run([*TORCHRUN, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        finished = done_marker is None or done_marker()
        if proc.returncode == 0 or not (GLOO_EXIT_ABORT in proc.stdout + proc.stderr and finished):
            return proc
    return proc


@pytest.mark.slow
def test_data_parallel_training_with_torchrun(tmp_path):
    # 1. the worker: DDP vs one process for each method, replica consistency, per-rank streams, the lock
    worker_dir = tmp_path / "worker"
    proc = torchrun([str(REPO / "tests" / "ddp_worker.py"), str(worker_dir)], out_dir=worker_dir,
                    done_marker=lambda: all((worker_dir / f"asserts_passed_rank{r}").exists() for r in (0, 1)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    differences = json.loads((worker_dir / "ddp_vs_single.json").read_text())
    assert sorted(differences) == ["dae", "dde", "dde_generator", "mdsm_energy", "ncsn_dsm"]
    assert all(d < 1e-5 for d in differences.values()), differences
    assert (worker_dir / "streams" / "checkpoints" / "ckpt_00000005.pt").is_file()
    # 2. the CLI under torchrun (run after the worker, never beside it)
    cli_dir = tmp_path / "cli"
    proc = torchrun(["-m", "dae_gen.cli.train", "dataset=two_moons", "model=ncsn_mlp", "sampler.init=gaussian",
                     "sampler.n_steps_each=1", "trainer.steps=4", "trainer.ckpt_every=2", "trainer.sample_every=0",
                     "trainer.batch_size=8", "trainer.progress=false", "device=cpu", f"hydra.run.dir={cli_dir}"],
                    out_dir=cli_dir, done_marker=lambda: (cli_dir / "samples.png").is_file())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cli_dir / "checkpoints" / "ckpt_00000004.pt").is_file() and (cli_dir / "samples.png").is_file()


SMALL_RUN = ["dataset=two_moons", "model=ncsn_mlp", "model.net.hidden=16", "model.net.depth=2", "sampler.init=gaussian",
             "sampler.n_steps_each=1", "trainer.steps=4", "trainer.ckpt_every=2", "trainer.sample_every=0",
             "trainer.batch_size=8", "trainer.progress=false", "trainer.tensorboard=false", "device=cpu", "threads=1"]


@pytest.mark.slow
def test_submitit_tasks_join_one_process_group(tmp_path):
    """hydra-submitit-launcher, local executor, 2 tasks: what a SLURM job with 2 GPUs per node runs, on CPUs.
    Each task runs dae-gen-train; init_distributed finds rank, world size and master in submitit's environment."""
    pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / "0"
    for attempt in range(2):
        shutil.rmtree(sweep_dir, ignore_errors=True)  # a retry starts afresh, never as a resume
        proc = subprocess.run([sys.executable, "-m", "dae_gen.cli.train", "--multirun", "hydra/launcher=submitit_local",
                               "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5",
                               f"hydra.sweep.dir={sweep_dir}", *SMALL_RUN], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        task_logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
        if proc.returncode == 0 or GLOO_EXIT_ABORT not in task_logs or not (run_dir / "samples.png").is_file():
            break
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + task_logs[-3000:]
    state = load_checkpoint(run_dir)
    assert state["step"] == 4 and state["world_size"] == 2  # one group of two, not two runs of one
    assert sorted(p.name.split("_")[1] for p in (sweep_dir / ".submitit").rglob("*_result.pkl")) == ["0", "1"]


def test_slurm_launcher_preset_runs_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm_ddp", "hydra.launcher.gpus_per_node=4",
                                                      "hydra.launcher.nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # requeued after a time-out, checkpointed first
