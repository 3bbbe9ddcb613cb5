"""The σ range a diffusion sampler runs over, from its settings or the model's own schedule.

Every score model carries descending levels ``sigmas`` (σ_1 > … > σ_L): the levels NCSN and DAE models were
trained on, the geometric schedule an EDM model keeps between its σ_max and σ_min, σ_high → σ_low of an
annealed-DSM energy, or the one σ of a DDE / single-level DAE. The EDM, predictor–corrector and ODE samplers
default to ``(σ_1, σ_L)``.

One-level models (DDE, single-σ DAE) know the score at one σ only. The samplers that transport a Gaussian
through a range of σ (``heun``, ``ode``) have nothing to integrate there and say so; the samplers with
Langevin-like noise (``pc``, ``edm_stochastic``) run at that one σ and end with its denoising step.
"""

from __future__ import annotations

from dae_gen.errors import ConfigError
from dae_gen.score import ScoreModel


def sigma_range(model: ScoreModel, sigma_max: float | None, sigma_min: float | None, *, sampler: str,
                allow_single_level: bool) -> tuple[float, float]:
    """``(σ_max, σ_min)``: the given values, else the model's ``(σ_1, σ_L)``; checked positive and ordered.

    allow_single_level:  whether ``σ_max == σ_min`` (a one-level model) is acceptable to this sampler.
    """
    levels = model.sigmas
    sigma_max = float(levels[0]) if sigma_max is None else float(sigma_max)
    sigma_min = float(levels[-1]) if sigma_min is None else float(sigma_min)
    if not (sigma_min > 0 and sigma_max >= sigma_min):
        raise ConfigError(f"sampler {sampler} needs 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, "
                          f"sigma_max={sigma_max}")
    if sigma_max == sigma_min and not allow_single_level:
        raise ConfigError(
            f"sampler {sampler} integrates the probability-flow ODE from sigma_max down to sigma_min and needs the "
            f"score over that range, but this {type(model).__name__} has one noise level ({sigma_max:g}). Use "
            f"sampler=pc or sampler=edm_stochastic (Langevin-like steps at that sigma, then its denoising step) or "
            f"annealed_langevin; or pass sigma_max and sigma_min to integrate with the score it has"
        )
    return sigma_max, sigma_min


__all__ = ["sigma_range"]
