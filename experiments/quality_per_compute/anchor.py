"""Re-measure the sweep's anchor (EDM Heun, 18 steps) on a retrained Fashion-MNIST EDM model, in the sweep's protocol:

    python experiments/quality_per_compute/anchor.py      # -> results/fmnist_sweep_anchor.json
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as Q  # noqa: E402  (this folder's run.py)

from dae_gen.run import load_run  # noqa: E402

torch.set_num_threads(1)
model = load_run(Q.HERE / "runs" / "fmnist" / "edm")
evaluator = Q.Evaluator(model, cache_dir=Q.CACHE)
grid = Q.HERE / "grids" / "sweep" / "fmnist_heun_anchor_retrained.png"
row = Q.sample_and_score(model, evaluator, "heun", {"n_steps": 18}, n=1000, grid=grid)
print("heun 18:", row["fid"], row["nfe_per_image"], flush=True)
record = [{"sampler_name": "heun", "n_steps": 18, **row, "model": "retrained edm_fmnist_cpu, 6221 steps"}]
(Q.HERE / "results" / "fmnist_sweep_anchor.json").write_text(json.dumps(record, indent=2, default=str))
