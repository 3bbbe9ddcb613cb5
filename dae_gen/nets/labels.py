"""Class labels for class-conditional networks: a learned embedding with one extra "null" class.

EDM's ``map_label`` (Karras et al. 2022, App. F) is a linear map of the one-hot label added to the noise embedding;
on integer labels that is a lookup table. Index ``n_classes`` is the null class: the unconditional model that
classifier-free guidance trains by label dropout (Ho & Salimans 2021) and guides with.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def null_labels(batch: int, *, n_classes: int, device: torch.device | str | None = None) -> Tensor:
    """The null (unconditional) label ``n_classes`` for ``batch`` examples, ``(batch,)`` int64."""
    return torch.full((int(batch),), int(n_classes), dtype=torch.long, device=device)


class LabelEmbedding(nn.Module):
    """Integer labels ``(B,)`` in ``0 … n_classes`` (``n_classes``: null) → learned vectors ``(B, dim)``.

    ``class_labels=None`` means unconditional: every example gets the null class.
    """

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be a positive integer for a label embedding, got {n_classes}")
        self.n_classes = int(n_classes)
        self.table = nn.Embedding(self.n_classes + 1, dim)

    def forward(self, class_labels: Tensor | None, *, batch: int, device: torch.device) -> Tensor:
        if class_labels is None:
            class_labels = null_labels(batch, n_classes=self.n_classes, device=device)
        class_labels = torch.as_tensor(class_labels, device=device)
        if class_labels.dtype.is_floating_point or class_labels.dtype == torch.bool or class_labels.shape != (batch,):
            raise ValueError(f"class_labels must be integer class indices of shape ({batch},) in 0..{self.n_classes} "
                             f"({self.n_classes}: unconditional), got {class_labels.dtype} of shape "
                             f"{tuple(class_labels.shape)}; pass e.g. torch.tensor([3, 3, 7])")
        return self.table(class_labels.long())  # (B, dim)


def check_unconditional(class_labels: Tensor | None, owner: str) -> None:
    """Refuse labels for a network built without classes (``n_classes=0``)."""
    if class_labels is not None:
        raise ValueError(f"{owner} was built with n_classes=0 (unconditional) but got class_labels; build it with "
                         f"n_classes=<number of classes> to condition on labels, or drop class_labels")


__all__ = ["LabelEmbedding", "check_unconditional", "null_labels"]
