"""Datasets held on the training device: real images and 2-D toy distributions.

Image datasets live in one module each, named as their config ``_target_`` names them (the module name is not
shadowed here, so Hydra can find them): ``dae_gen.data.digits.digits``, ``dae_gen.data.images.fashion_mnist``,
``dae_gen.data.images.cifar10``, ``dae_gen.data.images.celeba``. Every dataset offers ``shape``, ``kind``,
``batch(batch_size, generator=)``, ``to(device)`` and ``info`` (a :class:`DataInfo`).
"""

from dae_gen.data.base import DataInfo, ImageTensorData, PointData
from dae_gen.data.toy import checkerboard, mixture, rings, two_moons
from dae_gen.errors import DataError

__all__ = ["DataError", "DataInfo", "ImageTensorData", "PointData", "checkerboard", "mixture", "rings", "two_moons"]
