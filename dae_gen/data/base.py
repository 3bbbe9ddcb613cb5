"""Training data held on the training device, batched there with no DataLoader on the hot path.

Every dataset object offers the same small interface the trainer and samplers rely on:

- ``shape``: the shape of one example, e.g. ``(1, 8, 8)`` or ``(2,)``;
- ``kind``: ``"image"`` or ``"points"`` (decides how samples are drawn and shown);
- ``batch(batch_size, generator=...)``: a float batch in the model's range, on ``self.device``;
- ``to(device)``: move the stored data;
- for images, ``to_unit(x)``: model range → [0, 1] (for grids and FID), and ``data_range``;
- ``info``: a :class:`DataInfo`, the description a checkpoint carries so that sampling never rebuilds a dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from dae_gen.errors import DataError

SCALES = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
KINDS = ("image", "points")


@dataclass(frozen=True)
class DataInfo:
    """What a trained model needs to know of its data, stored in every checkpoint (``config["data_info"]``).

    name:        the dataset and split, e.g. ``"digits/train"``.
    kind:        ``"image"`` or ``"points"``.
    shape:       the shape of one example, e.g. ``(1, 8, 8)`` or ``(2,)``.
    data_range:  images: the model range ``(lo, hi)`` that maps to pixel values 0 and 255.
    bounds:      points: the plotting window ``(lo, hi)`` of both axes.
    classes:     labelled images: the class names, label k = ``classes[k]`` (None: no named classes).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    data_range: tuple[float, float] | None = None
    bounds: tuple[float, float] | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"data kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        for field in ("data_range", "bounds"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, (float(value[0]), float(value[1])))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def to_unit(self, x: Tensor) -> Tensor:
        """Images: model range → [0, 1], clamped (for grids and FID)."""
        if self.data_range is None:
            raise ValueError(f"{self.name} is {self.kind!r} data: it has no pixel range")
        lo, hi = self.data_range
        return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)

    def as_dict(self) -> dict:
        """Plain lists and values (``classes`` only when set, so unlabelled data store what they always did)."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if values["classes"] is None:
            del values["classes"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "DataInfo":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(values).items()})


class ImageTensorData:
    """A whole image dataset as one uint8 tensor ``(N, C, H, W)``; batches are drawn by shuffled epochs.

    scale:       ``"unit"`` maps pixels to [0, 1], ``"symmetric"`` to [-1, 1].
    dequantize:  add uniform noise of one grey level before scaling ((x + u)/256 instead of x/255).
    hflip:       flip each example left-right with probability ½ (CIFAR-10, CelebA).
    labels:      optional per-example labels ``(N, ...)``, kept beside the images (moved with them).
    classes:     optional class names of integer labels, recorded in ``info``.
    """

    kind = "image"

    def __init__(self, images: Tensor, *, scale: str = "unit", dequantize: bool = False, hflip: bool = False,
                 labels: Tensor | None = None, name: str = "images", classes: Sequence[str] | None = None):
        if str(images.dtype).removeprefix("torch.") != "uint8" or images.ndim != 4:
            raise DataError(f"{name}: expected uint8 images of shape (N, C, H, W), got {images.dtype} "
                            f"{tuple(images.shape)}")
        if images.shape[0] == 0:
            raise DataError(f"{name}: the dataset is empty (0 images)")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
        self.images, self.labels, self.name = images, labels, name
        self.classes = tuple(classes) if classes is not None else None
        self.scale, self.dequantize, self.hflip = scale, dequantize, hflip
        self.shape = tuple(images.shape[1:])
        self.data_range = SCALES[scale]
        self._order: Tensor | None = None
        self._cursor = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "ImageTensorData":
        self.images = self.images.to(device)
        if self.labels is not None:
            self.labels = self.labels.to(device)
        self._order = None
        return self

    def scale_uint8(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """uint8 ``(B, C, H, W)`` → float in the model's range (with dequantisation if configured)."""
        x = images.float()
        if self.dequantize:
            x = (x + torch.rand(x.shape, generator=generator, device=x.device)) / 256.0
        else:
            x = x / 255.0
        lo, hi = self.data_range
        return x * (hi - lo) + lo

    @property
    def info(self) -> DataInfo:
        return DataInfo(name=self.name, kind=self.kind, shape=self.shape, data_range=self.data_range,
                        classes=self.classes)

    def to_unit(self, x: Tensor) -> Tensor:
        """Model range → [0, 1], clamped (for grids and FID)."""
        return self.info.to_unit(x)

    def _next_indices(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        n = len(self)
        taken: list[Tensor] = []
        while batch_size > 0:
            if self._order is None or self._cursor >= n:
                self._order = torch.randperm(n, generator=generator, device="cpu").to(self.device)
                self._cursor = 0
            take = min(batch_size, n - self._cursor)
            taken.append(self._order[self._cursor:self._cursor + take])
            self._cursor += take
            batch_size -= take
        return torch.cat(taken)

    def _gather(self, indices: Tensor) -> Tensor:
        """uint8 rows ``(B, C, H, W)`` at ``indices``, on the device."""
        return self.images[indices]

    def batch(self, batch_size: int, *, generator: torch.Generator | None = None,
              labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The next ``batch_size`` examples of a shuffled epoch, scaled (and flipped) on the device; with ``labels``
        the pair ``(x, their labels)`` (the same examples and random draws either way)."""
        if labels and self.labels is None:
            raise DataError(f"{self.name} has no labels; a class-conditional model needs a labelled dataset "
                            "(digits, cifar10), or set model.n_classes=0")
        indices = self._next_indices(batch_size, generator)
        x = self.scale_uint8(self._gather(indices), generator=None)
        if self.hflip:
            flip = torch.rand(x.shape[0], generator=generator, device="cpu").to(x.device) < 0.5
            x = torch.where(flip.reshape(-1, 1, 1, 1), x.flip(-1), x)
        if labels:
            return x, self.labels[indices.to(self.labels.device)].to(x.device)
        return x

    def state_dict(self) -> dict:
        """Epoch position, so a resumed run continues the same data order."""
        return {"order": self._order.cpu() if self._order is not None else torch.empty(0, dtype=torch.long),
                "cursor": torch.tensor(self._cursor)}

    def load_state_dict(self, state: dict) -> None:
        order = state["order"]
        self._order = order.to(self.device) if order.numel() else None
        self._cursor = int(state["cursor"])



class MemmapImageData(ImageTensorData):
    """An image dataset too big to hold in memory: a read-only uint8 ``(N, C, H, W)`` memmap on disk.

    Same interface as ``ImageTensorData``; ``batch`` gathers the shuffled indices from the memmap on the CPU,
    then moves only that batch to ``device``.
    """

    def __init__(self, images: np.ndarray, *, scale: str = "unit", dequantize: bool = False, hflip: bool = False,
                 labels: Tensor | None = None, name: str = "images", classes: Sequence[str] | None = None):
        self._device = torch.device("cpu")
        super().__init__(images, scale=scale, dequantize=dequantize, hflip=hflip, labels=labels, name=name,
                         classes=classes)

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "MemmapImageData":
        self._device = torch.device(device)
        self._order = None
        return self

    def _gather(self, indices: Tensor) -> Tensor:
        """Read the rows at ``indices`` from disk and move only them to the device."""
        rows = np.ascontiguousarray(self.images[indices.cpu().numpy()])  # (B, C, H, W) uint8
        return torch.from_numpy(rows).to(self.device)

class PointData:
    """A 2-D (or low-dimensional) distribution we can sample exactly; every batch is fresh samples.

    sampler: ``(n, generator) -> Tensor (n, *shape)`` on the CPU.
    log_prob / score: optional closed forms, used by tests and metrics.
    """

    kind = "points"

    def __init__(self, sampler: Callable[..., Tensor], *, shape: Sequence[int] = (2,), name: str = "points",
                 log_prob: Callable[[Tensor], Tensor] | None = None, bounds: tuple[float, float] = (-4.0, 4.0)):
        self.sampler, self.shape, self.name = sampler, tuple(shape), name
        self.log_prob_fn, self.bounds = log_prob, bounds
        self._device = torch.device("cpu")

    def __len__(self) -> int:
        return 10**9  # a distribution, not a finite set

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "PointData":
        self._device = torch.device(device)
        return self

    @property
    def info(self) -> DataInfo:
        return DataInfo(name=self.name, kind=self.kind, shape=self.shape, bounds=self.bounds)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        return self.sampler(n, generator=generator).to(self._device)

    def batch(self, batch_size: int, *, generator: torch.Generator | None = None, labels: bool = False) -> Tensor:
        if labels:
            raise DataError(f"{self.name} is an unlabelled 2-D distribution; a class-conditional model needs a "
                            "labelled dataset, or set model.n_classes=0")
        return self.sample(batch_size, generator=generator)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
