"""Class labels and guidance for sampling a trained model: which labels, which guidance weight, which guide, checked
against the model before any work, and the score model and ``cond`` a sampler driver then takes.

Guidance follows ``dae_gen.guidance.Guided``: ``s = (1 + w)·s_main − w·s_guide`` with w ≥ 0, w = 0 the main model
alone; with no guide it is classifier-free guidance (the guide is the same model with the null label), with a guide
model it is autoguidance (the guide gets the same labels). ``labels`` are integer classes ``0 … n_classes − 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dae_gen.errors import ConfigError
from dae_gen.score import Cond


def n_classes_of(model: Any) -> int:
    """The number of classes a score model is conditional on (0: unconditional)."""
    return int(getattr(model, "n_classes", 0) or 0)


def class_list(spec: Any, *, n_classes: int, where: str = "class_labels") -> list[int] | None:
    """The classes a command line asks for: ``None`` → None (unconditional), ``"all"`` → ``[0 … n_classes − 1]``,
    an int or a list of ints → those; a ConfigError naming ``where`` if the model has no classes or a label is out
    of range."""
    if spec is None:
        return None
    if n_classes < 1:
        raise ConfigError(f"{where}: this run's model is unconditional (model.n_classes=0), so it takes no class "
                          f"labels; drop {where}, or train with model.n_classes=<number of classes>")
    if isinstance(spec, str):
        if spec != "all":
            raise ConfigError(f"{where}: expected a list of classes such as [0,1,2], an integer, or 'all'; "
                              f"got {spec!r}")
        return list(range(n_classes))
    values = [spec] if isinstance(spec, int) else list(spec)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: expected integer classes in 0..{n_classes - 1} such as [0,1,2], or 'all'; "
                          f"got {spec!r}")
    if bad := [v for v in values if not 0 <= v < n_classes]:
        raise ConfigError(f"{where}: classes must lie in 0..{n_classes - 1} (this model has {n_classes}); got {bad}")
    return values


def uniform_labels(n: int, classes: Sequence[int], *, seed: int = 0) -> Tensor:
    """``n`` labels ``(n,)`` int64 drawn uniformly from ``classes`` with a generator seeded by ``seed``."""
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    pick = torch.randint(len(classes), (int(n),), generator=torch.Generator().manual_seed(int(seed)))
    return classes[pick]


def as_labels(labels: Any, n: int, *, n_classes: int, where: str = "labels") -> Tensor:
    """Labels for ``n`` samples as ``(n,)`` int64: an int (every sample that class), or ``n`` integers."""
    if n_classes < 1:
        raise ConfigError(f"{where}: the model is unconditional (n_classes=0), so it takes no class labels; drop "
                          f"{where}, or train with model.n_classes=<number of classes>")
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = [labels] * int(n)
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (int(n),):
        raise ConfigError(f"{where}: expected one integer class per sample, shape ({n},), got {labels.dtype} of "
                          f"shape {tuple(labels.shape)}")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < n_classes):
        raise ConfigError(f"{where}: classes must lie in 0..{n_classes - 1} (this model has {n_classes}); got "
                          f"{sorted(set(labels.tolist()) - set(range(n_classes)))}")
    return labels.long()


def check_guidance(model: Any, *, guidance: float = 0.0, guide: Any | None = None, where: str = "guidance",
                   guide_where: str = "guide") -> None:
    """Guidance ``w`` must be a number ≥ 0; classifier-free guidance (w > 0, no guide) needs a class-conditional
    model; a guide must model the same data shape with the same classes. ConfigErrors name ``where``/``guide_where``."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not float(guidance) >= 0:
        raise ConfigError(f"{where}: expected a number w >= 0 (s = (1+w)·s_cond − w·s_guide; 0: no guidance), got "
                          f"{guidance!r}")
    n_classes = n_classes_of(model)
    if guide is None:
        if float(guidance) > 0 and n_classes < 1:
            raise ConfigError(f"{where}={guidance}: classifier-free guidance needs a class-conditional run "
                              f"(model.n_classes > 0, trained with model.p_uncond > 0), this one is unconditional; "
                              f"set {where}=0, or give {guide_where}=<another run> for autoguidance")
        return
    if tuple(guide.data_shape) != tuple(model.data_shape):
        raise ConfigError(f"{guide_where}: the guide must model the same data: shape {tuple(model.data_shape)} "
                          f"expected, got {tuple(guide.data_shape)}; use a checkpoint of the same task")
    if n_classes_of(guide) != n_classes:
        raise ConfigError(f"{guide_where}: the guide gets the main model's labels, so it needs the same classes: "
                          f"n_classes={n_classes} expected, got {n_classes_of(guide)}; use a checkpoint of the "
                          f"same (conditional or unconditional) task")


def conditioned(model: Any, *, labels: Tensor | None = None, guidance: float = 0.0,
                guide: Any | None = None) -> tuple[Any, Cond | None]:
    """The score model and ``cond`` to sample with: ``model`` itself with w = 0 and no guide, else
    ``Guided(model, guidance=w, guide=guide)``; ``cond`` is ``{"class_labels": labels}`` or None. Checked first
    (``check_guidance``)."""
    from dae_gen.guidance import Guided

    check_guidance(model, guidance=guidance, guide=guide)
    cond = None if labels is None else {"class_labels": labels}
    if not float(guidance) and guide is None:
        return model, cond
    return Guided(model, guidance=float(guidance), guide=guide), cond


__all__ = ["as_labels", "check_guidance", "class_list", "conditioned", "n_classes_of", "uniform_labels"]
