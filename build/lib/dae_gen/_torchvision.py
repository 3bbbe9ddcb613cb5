"""``torchvision``, importable even when its compiled ops do not match the installed torch.

torchvision's ``_meta_registrations`` registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
at import time. When its C extension cannot load (a CPU torch newer than the one torchvision was built for),
those operators do not exist and ``import torchvision`` fails with ``operator torchvision::nms does not
exist``. We then declare the two schemas ourselves and import again. Datasets, ``transforms.v2`` and the
download helpers work; ``torchvision.ops`` kernels and ``torchvision.io`` decoders do not (use PIL).
On a working install (e.g. torch 2.11 + torchvision 0.26 with CUDA) the first import succeeds and nothing
is defined.

Always import it as ``from dae_gen._torchvision import torchvision``.
"""

from __future__ import annotations

import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# Kept alive for the life of the process: dropping a Library object removes its definitions.
_fallback_library: torch.library.Library | None = None


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _define_missing_schemas() -> None:
    """Declare ``torchvision::nms`` / ``qnms`` (schemas only, no kernels) where the C extension did not."""
    global _fallback_library
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if not missing:
        return
    if _fallback_library is None:
        _fallback_library = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _fallback_library.define(_SCHEMAS[name])


def _forget_partial_import() -> None:
    for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[module]


def _import_torchvision():
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error) or "does not exist" not in str(error):
            raise
        _forget_partial_import()
        _define_missing_schemas()
        import torchvision
    return torchvision


torchvision = _import_torchvision()

__all__ = ["torchvision"]
