"""The one denoising objective: a preconditioned denoiser, a training σ distribution and a loss weighting.

A DAE ``D`` minimising ``E‖D(x + σε; σ) − x‖²`` is ``D* = E[x | x̃] = x̃ + σ²∇log p_σ(x̃)`` (DESIGN.md §1), so
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

``sigmas`` (a buffer, ``sigma_levels``) is the model's schedule σ_1 > … > σ_L: the levels NCSN trains on, and for
every model the levels annealed Langevin runs over and the default σ range (σ_1, σ_L) of the EDM, predictor–
corrector and ODE samplers. A model trained on a continuous σ (EDM's log-normal) keeps a geometric schedule
between its σ_max and σ_min there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

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
    """

    def __init__(self, *, net: Callable[..., nn.Module], data_shape: Sequence[int], preconditioning: Preconditioning,
                 sigmas: float | Sequence[float] | Tensor, training_sigma: UniformLevels | LogNormalSigma | None = None,
                 weighting: str = "edm"):
        super().__init__(data_shape=data_shape)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {sorted(WEIGHTINGS)}, got {weighting!r}")
        if not isinstance(preconditioning, Preconditioning):
            raise TypeError(f"preconditioning must be a dae_gen.objectives.preconditioning.Preconditioning, got "
                            f"{type(preconditioning).__name__}")
        self.net = net(data_shape=self.data_shape)
        self.preconditioning = preconditioning
        self.training_sigma = UniformLevels() if training_sigma is None else training_sigma
        self.weighting = weighting
        self.register_buffer("sigma_levels", as_sigma_schedule(sigmas))

    # -- the denoiser ------------------------------------------------------------------------------
    def _shaped(self, values: Tensor, x: Tensor) -> Tensor:
        """A ``(B,)`` float64 coefficient in ``x``'s dtype, broadcast against ``x``."""
        return expand_sigma(values.to(x.dtype), x)

    def network(self, x: Tensor, c: Coefficients) -> Tensor:
        """The raw ``F(c_in·x; c_noise)``."""
        return self.net(self._shaped(c.c_in, x) * x, c.c_noise.to(x.dtype))

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)``, the estimate of ``E[x₀ | x]``.

        x ``(B, ...)``, σ ``(B,)``."""
        c = self.preconditioning.coefficients(sigma)
        return self._shaped(c.c_skip, x) * x + self._shaped(c.c_out, x) * self.network(x, c)

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``∇log p_σ(x) ≈ (D(x; σ) − x)/σ² = ((c_skip − 1)·x + c_out·F)/σ²``, coefficients exact in float64."""
        c = self.preconditioning.coefficients(sigma)
        var = torch.as_tensor(sigma).to(torch.float64).pow(2)
        return self._shaped((c.c_skip - 1) / var, x) * x + self._shaped(c.c_out / var, x) * self.network(x, c)

    # -- training ----------------------------------------------------------------------------------
    def losses(self, phase: str, x: Tensor) -> Tensor:
        sigma = self.training_sigma.sample(x.shape[0], self.sigma_levels).to(x.dtype)  # (B,)
        noise = torch.randn_like(x)
        c = self.preconditioning.coefficients(sigma)
        s = expand_sigma(sigma, x)
        out = self.network(x + s * noise, c)
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
