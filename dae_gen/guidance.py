"""Guidance as a score model: classifier-free guidance and autoguidance, one wrapper for both.

With a main model ``D_main`` and a guide ``D_guide`` of the same task, guidance extrapolates away from the guide:

    D = D_main + w·(D_main − D_guide) = (1 + w)·D_main − w·D_guide,    s = (1 + w)·s_main − w·s_guide

(the weights sum to one and ``D = x + σ²·s``, so the denoiser and the score combine alike; w = 0 is the main model
alone). Two choices of guide:

- **classifier-free guidance** (Ho & Salimans 2021, Eq. 6): the guide is the same class-conditional model with
  the null label, ``D_guide = D(x; σ)``, ``D_main = D(x; σ, c)``; with exact scores this is the score of
  ``p_σ(x | c)^{1+w} p_σ(x)^{−w}``. Both halves run as one batch of 2B through the network.
- **autoguidance** (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", Eq. 2 with
  their weight w' = 1 + w): the guide is another model of the same task and conditioning, a smaller or earlier
  checkpoint, called with the same labels.

``Guided`` satisfies the score protocol (``score``, ``sigmas``, ``data_shape``, ``reference_sigma``, all but
``score`` the main model's), so every sampler runs on it. One guided score costs two network evaluations per
example (one when w = 0; ``evaluations_per_score``; ``dae_gen.samplers.nfe.CountingModel`` counts them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dae_gen.nets.labels import null_labels
from dae_gen.score import Wrapping


class Guided(Wrapping, nn.Module):
    """The guided score ``(1 + w)·s_main(x, σ, c) − w·s_guide(x, σ, c')`` of a main model and a guide.

    model:     the main score model, ``score(x, sigma, class_labels=...)``.
    guidance:  w ≥ 0; 0: the main model alone (plain conditional sampling).
    guide:     None: classifier-free guidance, the guide is ``model`` with the null label ``model.n_classes``
               (the model must be class-conditional, trained with label dropout); a score model: autoguidance,
               called with the same conditioning as ``model``.
    """

    def __init__(self, model: Any, *, guidance: float, guide: Any | None = None):
        super().__init__()
        if not float(guidance) >= 0:
            raise ValueError(f"guidance must be a number >= 0 (0: no guidance), got {guidance}")
        n_classes = int(getattr(model, "n_classes", 0))
        if guide is None and n_classes < 1:
            raise ValueError(f"classifier-free guidance needs a class-conditional model (n_classes > 0), got "
                             f"{type(model).__name__} with n_classes={n_classes}; train with model.n_classes and "
                             f"model.p_uncond > 0, or pass guide= (autoguidance) instead")
        if guide is not None and tuple(guide.data_shape) != tuple(model.data_shape):
            raise ValueError(f"the guide must model the same data as the main model: data_shape "
                             f"{tuple(model.data_shape)} expected, got {tuple(guide.data_shape)}")
        if guide is not None and int(getattr(guide, "n_classes", 0)) != n_classes:
            raise ValueError(f"the guide is called with the main model's labels, so it must have the same classes: "
                             f"n_classes={n_classes} expected, got {int(getattr(guide, 'n_classes', 0))}; use a "
                             f"smaller or earlier checkpoint of the same (conditional or unconditional) task")
        self.model = model
        self.guide = guide
        self.guidance = float(guidance)
        self.n_classes = n_classes
        self.data_shape = tuple(model.data_shape)

    @property
    def evaluations_per_score(self) -> int:
        """Network evaluations per example of one ``score`` call: main and guide (the main alone when w = 0)."""
        return 2 if self.guidance else 1

    def scores(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None,
               **cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(s_main, s_guide)`` at ``x`` ``(B, ...)``, σ ``(B,)``; extra conditioning ``cond`` goes to both."""
        labels = {} if class_labels is None else {"class_labels": class_labels}
        if self.guide is not None:  # autoguidance: two models, the same conditioning
            return self.model.score(x, sigma, **labels, **cond), self.guide.score(x, sigma, **labels, **cond)
        batch = x.shape[0]
        if class_labels is None:
            class_labels = null_labels(batch, n_classes=self.n_classes, device=x.device)
        both = torch.cat([class_labels, null_labels(batch, n_classes=self.n_classes, device=x.device)])  # (2B,)
        doubled = {key: torch.cat([value, value]) for key, value in cond.items()}
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(batch)
        out = self.model.score(torch.cat([x, x]), torch.cat([sigma, sigma]), class_labels=both, **doubled)
        return out[:batch], out[batch:]

    def score(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None, **cond: Tensor) -> Tensor:
        """``(1 + w)·s_main − w·s_guide``; shapes as ``score(x, sigma)``, ``class_labels`` ``(B,)``."""
        if not self.guidance:
            labels = {} if class_labels is None else {"class_labels": class_labels}
            return self.model.score(x, sigma, **labels, **cond)
        main, guide = self.scores(x, sigma, class_labels, **cond)
        return main + self.guidance * (main - guide)


__all__ = ["Guided"]
