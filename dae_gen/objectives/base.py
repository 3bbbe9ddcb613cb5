"""The contract between a method and the one trainer.

An objective owns its networks, turns a data batch into *per-example* losses, and satisfies the score
protocol of ``dae_gen.score`` (``score``, ``sigmas``, ``data_shape``, ``reference_sigma``).

Training is a cycle of *phases*. Each phase names a parameter group with its own optimiser and a number
of repeats; a plain method has the single phase ``("model", 1)``, the DDE generative model has
``(("dde_q", k), ("dde_p", k), ("generator", 1))``. The trainer runs the cycle once per step and never
needs to know which method it is training.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class Objective(nn.Module):
    """Base class of every method: networks + per-example losses + ``score``.

    Subclasses set ``phases`` and ``sigmas`` and implement ``losses`` and ``score``.
    """

    #: ``(phase_name, n_repeats)`` run in order once per training step.
    phases: tuple[tuple[str, int], ...] = (("model", 1),)
    #: True when the loss differentiates through an input gradient (torch.compile cannot do that).
    needs_double_backward: bool = False
    #: The conditioning keywords ``score`` and ``losses`` take (``("class_labels",)`` for a class-conditional model);
    #: the trainer passes a batch's labels as ``class_labels`` when it is listed.
    conditioning: tuple[str, ...] = ()

    def __init__(self, *, data_shape: Sequence[int]):
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)

    # -- training ---------------------------------------------------------------------------------
    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        """Parameters stepped by ``phase``'s optimiser (all of them for a single-phase method)."""
        if phase != "model":
            raise KeyError(f"{type(self).__name__} has no phase {phase!r}; its phases are {self.phases}")
        return list(self.parameters())

    def losses(self, phase: str, x: Tensor, **cond: Tensor) -> Tensor:
        """Per-example losses of shape ``(B,)`` for data batch ``x`` of shape ``(B, *data_shape)``."""
        raise NotImplementedError

    def forward(self, phase: str, x: Tensor, **cond: Tensor) -> Tensor:
        return self.losses(phase, x, **cond)

    def refuse_conditioning(self, cond: dict) -> None:
        """Raise a clear error for conditioning keywords this (unconditional) model does not know."""
        if cond:
            raise TypeError(f"{type(self).__name__} is unconditional and takes no conditioning, got "
                            f"{sorted(cond)}; a class-conditional model (model.n_classes > 0) takes class_labels")

    # -- the score protocol -----------------------------------------------------------------------
    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        """``∇_x log p_σ(x | cond)`` with the shape of ``x``; ``sigma`` has shape ``(B,)``."""
        raise NotImplementedError

    @property
    def sigmas(self) -> Tensor:
        """Descending noise levels σ_1 > … > σ_L that annealed Langevin sampling runs over."""
        return self.sigma_levels

    @property
    def reference_sigma(self) -> float:
        """The σ at which the score is read as the data's own: σ_L here; σ₀ for energies, σ for DDEs."""
        return float(self.sigmas[-1])
