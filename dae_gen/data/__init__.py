"""Datasets held on the training device: real images and 2-D toy distributions.

Image datasets live in one module each, named as their config ``_target_`` names them:
``dae_gen.data.digits.digits``, ``dae_gen.data.fashion_mnist.fashion_mnist``, ``dae_gen.data.cifar10.cifar10``,
``dae_gen.data.celeba.celeba``, ``dae_gen.data.image_folder.image_folder`` (a folder of your own images). These
functions are NOT imported here: a function bound in this package under its module's name would shadow the
module, and Hydra could no longer locate ``dae_gen.data.digits.digits``. Shared file-finding helpers are in
``dae_gen.data.files``, the decoded-image cache in ``dae_gen.data.image_cache``. Every dataset offers ``shape``,
``kind``, ``batch(batch_size, generator=)``, ``to(device)`` and ``info`` (a :class:`DataInfo`).
"""

from dae_gen.data.base import DataInfo, ImageTensorData, MemmapImageData, PointData
from dae_gen.data.toy import checkerboard, mixture, rings, two_moons
from dae_gen.errors import DataError

__all__ = ["DataError", "DataInfo", "ImageTensorData", "MemmapImageData", "PointData", "checkerboard", "mixture",
           "rings", "two_moons"]
