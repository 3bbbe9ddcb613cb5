import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HYDRA_FULL_ERROR", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# one thread per xdist worker (the suite runs with -n 2 on 2 cores); both cores for a plain run
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")


@pytest.fixture
def compose_train():
    """Compose the train config with overrides (Hydra's compose API, as the CLI would)."""
    from hydra import compose, initialize_config_dir

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)

    return _compose
