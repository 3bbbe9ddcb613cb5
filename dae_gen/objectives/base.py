"""The contract between a method and the one trainer.

An objective owns its networks, turns a data batch into *per-example* losses, and exposes the score
protocol of DESIGN.md §2: ``score(x, sigma) -> ∇_x log p_sigma(x)`` with the shape of ``x``.

Training is a cycle of *phases*. Each phase names a parameter group with its own optimiser and a number
of repeats; a plain method has the single phase ``("model", 1)``, the DDE generative model has
``(("dde_q", k), ("dde_p", k), ("generator", 1))``. The trainer runs the cycle once per step and never
needs to know which method it is training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a per-example σ of shape ``(B,)`` (or a scalar) against ``x`` of shape ``(B, ...)``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def input_gradient(scalar_fn, x: Tensor, *, create_graph: bool) -> tuple[Tensor, Tensor]:
    """Return ``(f(x), ∇_x Σ_b f(x)_b)`` for a per-example scalar function ``f: (B, ...) -> (B,)``.

    ``create_graph=True`` keeps the graph so a loss containing the gradient can be differentiated
    again with respect to the parameters (double backward), as the energy and DDE losses need.
    """
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        value = scalar_fn(x)
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=create_graph)
    return value, grad


class Objective(nn.Module):
    """Base class of every method: networks + per-example losses + ``score``.

    Subclasses set ``phases`` and ``sigmas`` and implement ``losses`` and ``score``.
    """

    #: ``(phase_name, n_repeats)`` run in order once per training step.
    phases: tuple[tuple[str, int], ...] = (("model", 1),)
    #: True when the loss differentiates through an input gradient (torch.compile cannot do that).
    needs_double_backward: bool = False

    def __init__(self, *, data_shape: Sequence[int]):
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)

    # -- training ---------------------------------------------------------------------------------
    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        """Parameters stepped by ``phase``'s optimiser (all of them for a single-phase method)."""
        if phase != "model":
            raise KeyError(f"{type(self).__name__} has no phase {phase!r}; its phases are {self.phases}")
        return list(self.parameters())

    def losses(self, phase: str, x: Tensor) -> Tensor:
        """Per-example losses of shape ``(B,)`` for data batch ``x`` of shape ``(B, *data_shape)``."""
        raise NotImplementedError

    def forward(self, phase: str, x: Tensor) -> Tensor:
        return self.losses(phase, x)

    # -- the score protocol -----------------------------------------------------------------------
    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``∇_x log p_σ(x)`` with the shape of ``x``; ``sigma`` has shape ``(B,)``."""
        raise NotImplementedError

    @property
    def sigmas(self) -> Tensor:
        """Descending noise levels σ_1 > … > σ_L that annealed Langevin sampling runs over."""
        return self.sigma_levels

    def generate(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """One-pass samples, for methods with a generator network (DDE generative model)."""
        raise NotImplementedError(f"{type(self).__name__} has no generator; sample it with a Langevin sampler")
