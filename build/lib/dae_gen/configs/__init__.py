"""dae_gen's Hydra configs, installed as the package ``dae_gen.configs`` (Hydra: ``pkg://dae_gen.configs``)."""
