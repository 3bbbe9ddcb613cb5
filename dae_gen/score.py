"""The score protocol: the one seam between trained models and samplers.

A score model is anything with ``score(x, sigma, **cond) -> ∇_x log p_σ(x | cond)`` (shape of ``x``; ``x`` is
``(B, ...)``, ``sigma`` a tensor ``(B,)``, ``cond`` keyword tensors such as ``class_labels`` that samplers pass
through untouched), its descending noise levels ``sigmas``, the shape of one example ``data_shape``,
and ``reference_sigma``: the noise level at which its score is closest to the data's own (σ₀ for the annealed-DSM
energy, the trained σ for a DDE, σ_L for NCSN and DAE models). Samplers and metrics depend on this module only,
never on each other or on a particular method; an analytic score (a Gaussian, a mixture) that satisfies the
protocol runs through every sampler.

Optional parts, each its own protocol so that code asks ``isinstance(model, EnergyModel)`` rather than probing
attributes: ``generate`` (one-pass samples), ``energy`` (a scalar energy), ``log_density`` (an unnormalised
log-density).

Conventions every sampler keeps: it reports each step to its callback as a :class:`Step`; it passes its ``cond``
to each score call as given; its arithmetic follows ``x``'s device, and a driver that creates the initial state
puts it on :func:`protocol_device` of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

#: ``score(x, sigma, **cond)``: ``(B, ...)``, ``(B,)`` → ``(B, ...)``.
Score = Callable[..., Tensor]
#: Conditioning passed through untouched to ``score(x, sigma, **cond)``: keyword tensors with a leading batch
#: dimension, e.g. ``{"class_labels": labels}`` (k-diffusion's ``extra_args``).
Cond = Mapping[str, Tensor]


@dataclass(frozen=True)
class Step:
    """One sampler step as a callback sees it. Tensors, never floats: a host sync per step would stall a GPU chain.

    i:         the step, counted from 1.
    n:         the number of steps, or None where it is not known in advance (an adaptive ODE solver).
    x:         the chain's state after the step, ``(B, ...)``.
    sigma:     the noise level of ``x`` (``(B,)`` or a scalar tensor), where the sampler has one.
    denoised:  the denoiser's estimate ``E[x_0 | x]`` computed in the step, where the sampler computes it.
    batch:     which batch of a multi-batch draw the step belongs to.
    extras:    sampler-specific tensors (``grad``, ``temperature``, ``nfe``, ...).
    """

    i: int
    n: int | None
    x: Tensor
    sigma: Tensor | None = None
    denoised: Tensor | None = None
    batch: int = 0
    extras: Mapping[str, Tensor] = field(default_factory=dict)


#: Sampler progress: called once per step with a :class:`Step`.
Callback = Callable[[Step], None] | None


@runtime_checkable
class ScoreModel(Protocol):
    """What every trained model exposes and every sampler consumes."""

    data_shape: tuple[int, ...]

    @property
    def sigmas(self) -> Tensor:
        """Descending noise levels σ_1 > … > σ_L, shape ``(L,)``."""

    @property
    def reference_sigma(self) -> float:
        """The σ at which ``score`` is read as the data's score (energy: σ₀; DDE: its σ; NCSN/DAE: σ_L)."""

    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        """``∇_x log p_σ(x | cond)``, the shape of ``x``; ``cond``: the conditioning keywords the model knows."""


@runtime_checkable
class GenerativeModel(Protocol):
    """A model with a generator network: ``generate(n, generator=) -> (n, *data_shape)`` in one pass."""

    def generate(self, n: int, *, generator: torch.Generator | None = None) -> Tensor: ...


@runtime_checkable
class EnergyModel(Protocol):
    """A scalar energy ``E(x)`` of shape ``(B,)``; the model density is ``∝ exp(−E)``."""

    def energy(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class DensityModel(Protocol):
    """An unnormalised log-density ``f(x)`` of shape ``(B,)``; the model density is ``∝ exp(f)``."""

    def log_density(self, x: Tensor) -> Tensor: ...


def expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a per-example σ of shape ``(B,)`` (or a scalar) against ``x`` of shape ``(B, ...)``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """One noise level as the ``(B,)`` tensor the protocol takes, in ``x``'s dtype and on its device."""
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(()).expand(x.shape[0])


_GRAPH_INPUT_GRADIENTS: ContextVar[bool] = ContextVar("graph_input_gradients", default=False)


@contextmanager
def differentiable_input_gradients() -> Iterator[None]:
    """Within this block ``input_gradient`` keeps its graph, so the scores of energy and density models (gradients
    of a scalar network) can be differentiated in ``x`` again: the divergence of a likelihood ODE needs that."""
    token = _GRAPH_INPUT_GRADIENTS.set(True)
    try:
        yield
    finally:
        _GRAPH_INPUT_GRADIENTS.reset(token)


def input_gradient(scalar_fn: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool) -> tuple[Tensor, Tensor]:
    """Return ``(f(x), ∇_x Σ_b f(x)_b)`` for a per-example scalar function ``f: (B, ...) -> (B,)``.

    ``create_graph=True`` keeps the graph so a loss containing the gradient can be differentiated
    again with respect to the parameters (double backward), as the energy and DDE losses need.
    Works inside ``torch.no_grad`` / ``torch.inference_mode`` callers (it enables grad locally on a fresh leaf).
    A network that writes its input gradient out, ``scalar_fn.value_and_input_grad(x, create_graph=)`` (the
    ResNet energy does, so that its double backward runs native conv kernels), is asked for it instead.
    Inside ``differentiable_input_gradients()`` the graph is always kept.
    """
    create_graph = create_graph or _GRAPH_INPUT_GRADIENTS.get()
    explicit = getattr(scalar_fn, "value_and_input_grad", None)
    if callable(explicit):
        return explicit(x, create_graph=create_graph)
    with torch.inference_mode(False), torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().clone() if x.is_inference() else x.detach()
            x.requires_grad_(True)
        value = scalar_fn(x)
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=create_graph)
    return value, grad


class Wrapping:
    """A score model built over another, ``self.model`` (guidance, known-pixel inpainting): its noise levels
    ``sigmas`` and ``reference_sigma`` are the wrapped model's; the subclass sets ``data_shape`` and ``score``."""

    model: Any

    @property
    def sigmas(self) -> Tensor:
        return self.model.sigmas

    @property
    def reference_sigma(self) -> float:
        return self.model.reference_sigma


def protocol_device(model: object) -> torch.device:
    """Where a driver creates a chain's initial state for ``model``: its ``device`` attribute, else the device of
    its first parameter (or buffer), else the CPU. Everything after the initial state follows ``x``'s device.

    Any object with the score protocol qualifies: an analytic score with neither attribute samples on the CPU.
    """
    device = getattr(model, "device", None)
    if isinstance(device, (torch.device, str)):
        return torch.device(device)
    for name in ("parameters", "buffers"):
        tensors = getattr(model, name, None)
        tensor = next(iter(tensors()), None) if callable(tensors) else None
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")


#: The former name of :func:`protocol_device`.
model_device = protocol_device


__all__ = ["Callback", "DensityModel", "EnergyModel", "GenerativeModel", "Score", "ScoreModel", "Wrapping",
           "differentiable_input_gradients", "expand_sigma", "input_gradient", "model_device", "protocol_device",
           "sigma_batch"]
