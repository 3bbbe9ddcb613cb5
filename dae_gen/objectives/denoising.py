"""The one denoising objective: a preconditioned denoiser, a training σ distribution and a loss weighting.

A DAE ``D`` minimising ``E‖D(x + σε; σ) − x‖²`` is ``D* = E[x | x̃] = x̃ + σ²∇log p_σ(x̃)`` (Tweedie's formula), so
every noise-conditional method of the NCSN/DAE/EDM family is this one loss with three choices:

- the **preconditioning** ``D = c_skip·x + c_out·F(c_in·x; c_noise)`` (``dae_gen.objectives.preconditioning``):
  EDM's, NCSN's score network (output/σ), or a residual DAE;
- the **training σ distribution** (``dae_gen.noise``): NCSN's levels drawn uniformly (``UniformLevels``) or
  EDM's log-normal (``LogNormalSigma``);
- the **weighting** λ(σ) on ``‖D − x‖²``: EDM's 1/c_out² = (σ² + σ_d²)/(σσ_d)², NCSN's 1/(2σ²), the DAE's 1/σ²,
  or none.

The score is ``(D − x)/σ² = ((c_skip − 1)·x + c_out·F)/σ²`` (Karras et al. 2022, Eq. 3), computed in that form so
no ``x − x`` cancellation loses digits at small σ; the loss uses ``D(x̃) − x = (c_skip − 1)·x + c_skip·σε + c_out·F``
for the same reason.

**Class-conditional** models (``n_classes`` > 0) take integer labels ``class_labels`` ``(B,)`` in ``losses``,
``denoise`` and ``score``; label ``n_classes`` (or ``class_labels=None``) is the null class, the unconditional
model. Label dropout ``p_uncond`` replaces each training label by the null class with that probability, so one
network learns both ``D(x; σ, c)`` and ``D(x; σ)`` (Ho & Salimans 2021), as classifier-free guidance
(``dae_gen.guidance``) needs.

``sigmas`` (a buffer, ``sigma_levels``) is the model's schedule σ_1 > … > σ_L: the levels NCSN trains on, and for
every model the levels annealed Langevin runs over and the default σ range (σ_1, σ_L) of the EDM, predictor–
corrector and ODE samplers. A model trained on a continuous σ (EDM's log-normal) keeps a geometric schedule
between its σ_max and σ_min there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dae_gen.nets.labels import null_labels
from dae_gen.noise import LogNormalSigma, UniformLevels, as_sigma_schedule
from dae_gen.objectives.base import Objective
from dae_gen.objectives.preconditioning import WEIGHTINGS, Coefficients, Preconditioning, loss_weight
from dae_gen.score import expand_sigma


class DenoisingObjective(Objective):
    """Preconditioned denoiser ``D(x; σ)``; per-example loss ``λ(σ)‖D(x + σε; σ) − x‖²``; score ``(D − x)/σ²``.

    net:              partial building the raw network, called as ``net(data_shape=...)``; forward
                      ``(c_in·x, c_noise) -> (B, ...)``.
    preconditioning:  the c_skip, c_out, c_in, c_noise of ``D`` (``EDMPreconditioning``, ``NCSNPreconditioning``,
                      ``ResidualPreconditioning``).
    sigmas:           the model's schedule σ_1 > … > σ_L (a scalar or list for one level).
    training_sigma:   the σ distribution of the loss: ``UniformLevels()`` (default, NCSN: one of ``sigmas`` per
                      example) or ``LogNormalSigma(p_mean, p_std)`` (EDM).
    weighting:        λ(σ): ``"edm"`` (1/c_out²), ``"ncsn"`` (1/(2σ²)), ``"sigma2"`` (1/σ²) or ``"none"``.
    n_classes:        class-conditional on labels 0..n_classes−1 (index n_classes: null); passed to ``net`` as
                      ``n_classes=`` when > 0; 0 (default): unconditional, ``net`` built as before.
    p_uncond:         label dropout: the probability that a training example's label becomes the null class.
    """

    def __init__(self, *, net: Callable[..., nn.Module], data_shape: Sequence[int], preconditioning: Preconditioning,
                 sigmas: float | Sequence[float] | Tensor, training_sigma: UniformLevels | LogNormalSigma | None = None,
                 weighting: str = "edm", n_classes: int = 0, p_uncond: float = 0.0):
        super().__init__(data_shape=data_shape)
        if int(n_classes) < 0:
            raise ValueError(f"n_classes must be >= 0 (0: unconditional), got {n_classes}")
        if not 0.0 <= p_uncond <= 1.0 or (p_uncond and not n_classes):
            raise ValueError(f"p_uncond must be in [0, 1] and needs n_classes > 0, got p_uncond={p_uncond} with "
                             f"n_classes={n_classes}; set model.n_classes to the number of classes or p_uncond=0")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {sorted(WEIGHTINGS)}, got {weighting!r}")
        if not isinstance(preconditioning, Preconditioning):
            raise TypeError(f"preconditioning must be a dae_gen.objectives.preconditioning.Preconditioning, got "
                            f"{type(preconditioning).__name__}")
        self.n_classes = int(n_classes)
        self.p_uncond = float(p_uncond)
        self.net = net(data_shape=self.data_shape, n_classes=self.n_classes) if n_classes else net(
            data_shape=self.data_shape)
        self.preconditioning = preconditioning
        self.training_sigma = UniformLevels() if training_sigma is None else training_sigma
        self.weighting = weighting
        self.register_buffer("sigma_levels", as_sigma_schedule(sigmas))

    # -- the denoiser ------------------------------------------------------------------------------
    def _shaped(self, values: Tensor, x: Tensor) -> Tensor:
        """A ``(B,)`` float64 coefficient in ``x``'s dtype, broadcast against ``x``."""
        return expand_sigma(values.to(x.dtype), x)

    @property
    def conditioning(self) -> tuple[str, ...]:
        """``("class_labels",)`` for a class-conditional model, else none."""
        return ("class_labels",) if self.n_classes else ()

    def network(self, x: Tensor, c: Coefficients, class_labels: Tensor | None = None) -> Tensor:
        """The raw ``F(c_in·x; c_noise)`` (``F(c_in·x; c_noise, class_labels)`` for a class-conditional net)."""
        labels = {} if class_labels is None else {"class_labels": class_labels}
        return self.net(self._shaped(c.c_in, x) * x, c.c_noise.to(x.dtype), **labels)

    def denoise(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """``D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)``, the estimate of ``E[x₀ | x]`` (``E[x₀ | x, c]``).

        x ``(B, ...)``, σ ``(B,)``, class_labels ``(B,)`` or None (unconditional)."""
        c = self.preconditioning.coefficients(sigma)
        return self._shaped(c.c_skip, x) * x + self._shaped(c.c_out, x) * self.network(x, c, class_labels)

    def score(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """``∇log p_σ(x) ≈ (D(x; σ) − x)/σ² = ((c_skip − 1)·x + c_out·F)/σ²``, coefficients exact in float64;
        ``∇log p_σ(x | c)`` with ``class_labels`` ``(B,)`` (None, or the null label ``n_classes``: unconditional)."""
        c = self.preconditioning.coefficients(sigma)
        var = torch.as_tensor(sigma).to(torch.float64).pow(2)
        return (self._shaped((c.c_skip - 1) / var, x) * x
                + self._shaped(c.c_out / var, x) * self.network(x, c, class_labels))

    # -- training ----------------------------------------------------------------------------------
    def drop_labels(self, class_labels: Tensor) -> Tensor:
        """Label dropout (Ho & Salimans 2021): each label becomes the null class with probability ``p_uncond``."""
        if not self.p_uncond:
            return class_labels
        drop = torch.rand(class_labels.shape, device=class_labels.device) < self.p_uncond  # (B,)
        return torch.where(drop, null_labels(class_labels.shape[0], n_classes=self.n_classes,
                                             device=class_labels.device), class_labels)

    def losses(self, phase: str, x: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if self.n_classes and class_labels is None:
            raise ValueError(f"this model is class-conditional (n_classes={self.n_classes}) but its batch has no "
                             f"class_labels; train it on a labelled dataset, or set model.n_classes=0")
        if class_labels is not None and not self.n_classes:
            raise ValueError("got class_labels for an unconditional model (n_classes=0); set model.n_classes to the "
                             "number of classes to train a class-conditional model")
        labels = None if class_labels is None else self.drop_labels(class_labels)
        sigma = self.training_sigma.sample(x.shape[0], self.sigma_levels).to(x.dtype)  # (B,)
        noise = torch.randn_like(x)
        c = self.preconditioning.coefficients(sigma)
        s = expand_sigma(sigma, x)
        out = self.network(x + s * noise, c, labels)
        c_skip = self._shaped(c.c_skip, x)
        error = self._shaped(c.c_skip - 1, x) * x + c_skip * s * noise + self._shaped(c.c_out, x) * out  # D(x̃) − x
        weight = loss_weight(self.weighting, sigma, c).to(x.dtype)  # λ(σ), (B,)
        return weight * error.pow(2).reshape(x.shape[0], -1).sum(dim=1)


def dsm_losses(score_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, *,
               noise: Tensor | None = None) -> Tensor:
    """NCSN's per-example loss of a score callable, ``½σ²‖s(x + σε, σ) + ε/σ‖²`` summed over dimensions
    (Song & Ermon 2019, Eq. 2 with λ(σ) = σ²). Shapes: x ``(B, ...)``, σ ``(B,)``. For any model whose score is
    ``(D − x)/σ²`` this equals ``DenoisingObjective``'s loss with the ``"ncsn"`` weighting on the same draws."""
    noise = torch.randn_like(x) if noise is None else noise
    s = expand_sigma(sigma, x)
    residual = score_fn(x + s * noise, sigma) * s + noise  # σ·(s(x̃) + (x̃ − x)/σ²)
    return 0.5 * residual.pow(2).reshape(x.shape[0], -1).sum(dim=1)


__all__ = ["DenoisingObjective", "dsm_losses"]
