"""Noise-conditional denoising score matching (NCSN, Song & Ermon 2019, Eq. 5–6; NCSNv2, Song & Ermon 2020) as a
preset of the one denoising objective.

A network ``s(x̃, σ)`` over a set of noise levels, trained with ``λ(σ)·½‖s(x̃, σ) + (x̃ − x)/σ²‖²`` and
``λ(σ) = σ²``, i.e. ``DenoisingObjective`` with ``NCSNPreconditioning`` (score = F/σ, NCSNv2 Technique 3),
σ uniform over the levels and the ``"ncsn"`` weighting ‖D − x‖²/(2σ²).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from dae_gen.noise import UniformLevels
from dae_gen.objectives.denoising import DenoisingObjective, dsm_losses
from dae_gen.objectives.preconditioning import NCSNPreconditioning


def without_legacy_flag(net: Callable[..., nn.Module], name: str) -> tuple[Callable[..., nn.Module], Any]:
    """Split a flag the networks used to take (``divide_by_sigma``) off a network partial: ``(partial, value)``.

    Checkpoints written before preconditioning moved into the objective hold it in their net config; the value
    is ``None`` when the partial does not set it.
    """
    if not isinstance(net, functools.partial) or name not in net.keywords:
        return net, None
    keywords = {k: v for k, v in net.keywords.items() if k != name}
    return functools.partial(net.func, *net.args, **keywords), net.keywords[name]


class DenoisingScoreMatching(DenoisingObjective):
    """NCSN / NCSNv2 score model: ``score = F(x, ln σ)/σ``; σ is drawn uniformly from ``sigmas`` per example.

    net:             partial building the raw network, called as ``net(data_shape=...)``.
    sigmas:          the noise levels σ_1 > … > σ_L (training draws from them; Langevin anneals over them).
    divide_by_sigma: True: score = F/σ (NCSNv2 Technique 3); False: score = F. A ``divide_by_sigma`` in the net
                     partial (configs written before preconditioning moved here) takes precedence.
    """

    def __init__(self, *, net: Callable[..., nn.Module], data_shape: Sequence[int], sigmas: Sequence[float] | Tensor,
                 divide_by_sigma: bool = True):
        net, legacy = without_legacy_flag(net, "divide_by_sigma")
        divide = divide_by_sigma if legacy is None else bool(legacy)
        super().__init__(net=net, data_shape=data_shape, sigmas=sigmas, training_sigma=UniformLevels(),
                         preconditioning=NCSNPreconditioning(divide_by_sigma=divide), weighting="ncsn")


__all__ = ["DenoisingScoreMatching", "dsm_losses", "without_legacy_flag"]
