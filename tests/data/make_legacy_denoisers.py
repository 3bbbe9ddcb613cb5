"""Writes legacy_denoisers.pt: the NCSN/DAE models of the model configs as they were before preconditioning moved
into the objective (commit ceaab71), with their state dicts, and their losses and scores on fixed inputs and
seeds. tests/test_denoising.py loads each old config + state dict with today's code (as load_run would) and
checks the same losses and scores. Run on commit ceaab71 only: python tests/data/make_legacy_denoisers.py
"""

from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

CASES = {  # name: (model config, overrides, data_shape)
    "ncsn_unet": ("ncsn_unet", ["model.net.channels=4"], [1, 8, 8]),
    "ncsn_mlp": ("ncsn_mlp", ["model.net.hidden=16", "model.net.depth=2"], [2]),
    "ncsn_mlp_raw": ("ncsn_mlp", ["model.net.hidden=16", "model.net.depth=2", "model.net.divide_by_sigma=false"],
                     [2]),
    "dae": ("dae", ["model.net.channels=4"], [1, 8, 8]),
    "dae_mlp": ("dae_mlp", ["model.net.hidden=16", "model.net.depth=2"], [2]),
    "dae_mlp_unscaled": ("dae_mlp", ["model.net.hidden=16", "model.net.depth=2", "model.scale_residual=false",
                                     "model.weighting=none"], [2]),
    "dae_mlp_direct": ("dae_mlp", ["model.net.hidden=16", "model.net.depth=2", "model.residual=false"], [2]),
    "dae_single": ("dae_single", ["model.net.hidden=16", "model.net.depth=2"], [2]),
}


def main() -> None:
    out = {}
    for name, (model, overrides, shape) in CASES.items():
        with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"model={model}", *overrides])
        config = OmegaConf.to_container(cfg.model, resolve=True)
        torch.manual_seed(0)
        objective = instantiate(cfg.model, data_shape=shape)
        x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(1))
        sigmas = objective.sigmas
        sigma = sigmas[torch.arange(6) % len(sigmas)]
        with torch.no_grad():
            score = objective.score(x, sigma)
            torch.manual_seed(2)
            losses = objective.losses("model", x)
        out[name] = {"config": config, "data_shape": shape, "state_dict": objective.state_dict(), "x": x,
                     "sigma": sigma, "score": score, "losses": losses}
    torch.save(out, Path(__file__).with_name("legacy_denoisers.pt"))


if __name__ == "__main__":
    main()
