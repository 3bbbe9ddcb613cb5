"""Counting network function evaluations (NFE): how many times a sampler called the model per image.

``CountingModel(model)`` stands in for a model anywhere a sampler driver takes one: it forwards every attribute
and counts the examples passed through ``score`` (and ``generate``). After drawing ``n`` images,
``nfe_per_image(n)`` is the exact average number of network calls each image cost, whatever the sampler —
annealed Langevin (L·T + 1 with the denoising step), Heun (2N − 1), predictor–corrector (N·(k + 1)), an adaptive
ODE solver (its function evaluations + 1) or a generator (1). For energy and DDE models one score evaluation is
one forward and one backward pass of the scalar network; a model that evaluates several networks per score
(guidance, ``dae_gen.guidance.Guided``) says how many in ``evaluations_per_score``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


class CountingModel:
    """A score model wrapper that counts evaluations: ``evaluations`` is the number of examples scored."""

    def __init__(self, model: Any):
        self.model = model
        self.evaluations = 0

    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        self.evaluations += int(x.shape[0]) * int(getattr(self.model, "evaluations_per_score", 1))
        return self.model.score(x, sigma, **cond)

    def __getattr__(self, name: str) -> Any:  # everything else is the model's (``generate`` is counted too)
        attribute = getattr(self.model, name)
        if name != "generate":
            return attribute

        def generate(n: int, **kwargs: Any) -> Tensor:
            self.evaluations += int(n)
            return attribute(n, **kwargs)

        return generate

    def nfe_per_image(self, n_images: int) -> float:
        """Network evaluations per image after drawing ``n_images``."""
        if int(n_images) < 1:
            raise ValueError(f"n_images must be positive, got {n_images}")
        return self.evaluations / int(n_images)


__all__ = ["CountingModel"]
