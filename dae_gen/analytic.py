"""An analytic score model: Gaussian data N(m, Σ) with its exact smoothed score.

It satisfies the score protocol (``dae_gen.score.ScoreModel``) without being a network, so every sampler, task and
likelihood routine can be checked against closed forms: smoothing N(m, Σ) by N(0, σ²I) gives N(m, Σ + σ²I), whose
score is ``−(Σ + σ²I)⁻¹(x − m)``, and its conditionals are Schur complements. Examples are flat vectors or any
shape ``data_shape`` (flattened for the algebra); everything is computed in float64 and returned in ``x``'s dtype.
Gaussian mixtures (with class-conditional scores) are ``dae_gen.density.MixtureScoreModel``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dae_gen.noise import geometric_sigmas


def _levels(sigmas: Tensor | Sequence[float] | None) -> Tensor:
    """Descending noise levels, float64; default: 10 geometric levels from 3 to 0.01."""
    levels = geometric_sigmas(3.0, 0.01, 10) if sigmas is None else torch.as_tensor(sigmas)
    return levels.to(torch.float64).flatten()


def _per_example(sigma: Tensor | float, n: int) -> Tensor:
    """σ as a float64 ``(n,)`` tensor (a scalar is shared by all examples)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).flatten()
    return sigma.expand(n) if sigma.numel() == 1 else sigma


class AnalyticGaussian:
    """N(mean, cov) data as a score model.

    mean:             ``(D,)`` with D = prod(data_shape).
    cov:              ``(D, D)`` symmetric positive definite; or ``std`` for ``std²·I``.
    data_shape:       the shape of one example (default ``(D,)``).
    sigmas:           the descending levels samplers default to (``sigmas``); default 3 … 0.01.
    reference_sigma:  the σ read as the data's own (default: the smallest level).
    """

    def __init__(self, mean: Tensor | Sequence[float], cov: Tensor | Sequence | None = None, *,
                 std: float | None = None, data_shape: Sequence[int] | None = None,
                 sigmas: Tensor | Sequence[float] | None = None, reference_sigma: float | None = None):
        self.mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
        dim = self.mean.numel()
        if (cov is None) == (std is None):
            raise ValueError("give the covariance cov or an isotropic std, not both")
        self.cov = std**2 * torch.eye(dim, dtype=torch.float64) if cov is None else \
            torch.as_tensor(cov, dtype=torch.float64)
        if self.cov.shape != (dim, dim):
            raise ValueError(f"cov must have shape ({dim}, {dim}) to match mean, got {tuple(self.cov.shape)}")
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.cov)  # Σ = Q diag(λ) Qᵀ
        if not (self.eigenvalues > 0).all():
            raise ValueError(f"cov must be positive definite; its smallest eigenvalue is {float(self.eigenvalues[0])}")
        self.data_shape = tuple(int(d) for d in (data_shape or (dim,)))
        if math.prod(self.data_shape) != dim:
            raise ValueError(f"data_shape {self.data_shape} does not hold {dim} values")
        self._sigmas = _levels(sigmas)
        self._reference = float(self._sigmas[-1]) if reference_sigma is None else float(reference_sigma)

    @property
    def sigmas(self) -> Tensor:
        return self._sigmas

    @property
    def reference_sigma(self) -> float:
        return self._reference

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def score(self, x: Tensor, sigma: Tensor | float, **cond: Tensor) -> Tensor:
        """``−(Σ + σ²I)⁻¹(x − m)`` per example, in the eigenbasis of Σ: ``(B, *data_shape)`` → same."""
        if cond:
            raise TypeError(f"a Gaussian takes no conditioning, got {sorted(cond)}")
        flat = self._flat(x)
        q, lam = self.eigenvectors.to(x.device), self.eigenvalues.to(x.device)
        s2 = _per_example(sigma, x.shape[0]).to(x.device)[:, None] ** 2
        coords = (flat - self.mean.to(x.device)) @ q  # (B, D)
        return (-(coords / (lam + s2)) @ q.T).reshape(x.shape).to(x.dtype)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Tweedie: ``E[x_0 | x] = x + σ²·score(x, σ)``."""
        s2 = _per_example(sigma, x.shape[0]).to(x.device).reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return x + (s2 * self.score(x, sigma).to(torch.float64)).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: float = 0.0) -> Tensor:
        """Exact ``log p_σ(x)`` of shape ``(B,)`` (float64)."""
        flat = self._flat(x)
        lam = self.eigenvalues.to(x.device) + float(sigma) ** 2
        coords = (flat - self.mean.to(x.device)) @ self.eigenvectors.to(x.device)
        return -0.5 * ((coords**2 / lam).sum(1) + lam.log().sum() + self.dim * math.log(2 * math.pi))

    def sample(self, n: int, *, sigma: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws of p_σ, ``(n, *data_shape)`` float64 on the CPU."""
        lam = self.eigenvalues + float(sigma) ** 2
        z = torch.randn(int(n), self.dim, generator=generator, dtype=torch.float64)
        return (self.mean + (z * lam.sqrt()) @ self.eigenvectors.T).reshape(int(n), *self.data_shape)

    def generate(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """One-pass exact draws of the data law N(m, Σ), float32 as a generator network's (``GenerativeModel``)."""
        return self.sample(n, generator=generator).float()

    def conditional(self, known: Tensor, values: Tensor, *, sigma: float = 0.0) -> tuple[Tensor, Tensor]:
        """Law of the unknown entries of p_σ given the known ones: ``(mean (U,), covariance (U, U))``.

        known:   bool, ``data_shape`` or ``(D,)``: True where an entry is given.
        values:  the example, ``data_shape`` or ``(D,)`` (only the known entries are read).
        Schur complement: ``m_u + Σ_uk Σ_kk⁻¹ (y − m_k)``, ``Σ_uu − Σ_uk Σ_kk⁻¹ Σ_ku`` with Σ ← Σ + σ²I.
        """
        known = torch.as_tensor(known, dtype=torch.bool).flatten()
        y = torch.as_tensor(values, dtype=torch.float64).flatten()
        cov = self.cov + float(sigma) ** 2 * torch.eye(self.dim, dtype=torch.float64)
        k, u = known.nonzero().flatten(), (~known).nonzero().flatten()
        gain = cov[u][:, k] @ torch.linalg.inv(cov[k][:, k])  # (U, K)
        return self.mean[u] + gain @ (y[k] - self.mean[k]), cov[u][:, u] - gain @ cov[k][:, u]


__all__ = ["AnalyticGaussian"]
