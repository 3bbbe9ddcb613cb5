"""Real torchrun data parallelism (gloo, 2 CPU processes)."""

import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")


def test_gradient_averaging_and_replica_consistency(tmp_path):
    proc = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", str(REPO / "tests" / "ddp_worker.py"),
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "ckpt_00000005.pt").is_file()


def test_cli_under_torchrun(tmp_path):
    proc = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "-m", "dae_gen.cli.train",
                           "dataset=two_moons", "model=ncsn_mlp", "sampler.init=gaussian", "sampler.n_steps_each=1",
                           "trainer.steps=4", "trainer.ckpt_every=2", "trainer.sample_every=0", "trainer.batch_size=8",
                           "trainer.progress=false", "device=cpu", f"hydra.run.dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "ckpt_00000004.pt").is_file() and (tmp_path / "samples.png").is_file()
