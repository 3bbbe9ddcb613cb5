"""Mixed precision: bf16 autocast for training steps and sampler chains, on hardware that computes in bf16.

``amp: bf16`` (the trainer's setting, and the ``amp`` setting every sampler takes) runs the networks' matrix
products in bfloat16 through ``torch.autocast``. The rule, the same for training and sampling:

- **CUDA**: bf16 where the GPU supports it (``torch.cuda.is_bf16_supported()``: Ampere and newer).
- **CPU**: bf16 where the CPU has *native* bf16 arithmetic, AMX-BF16 or AVX512-BF16 on x86 (Intel Sapphire Rapids
  and newer, AMD Zen 4 and newer) or the BF16 extension on ARM, and torch's oneDNN kernels can use it. Without
  native bf16 the conversions are emulated: slower than fp32 and less exact, so fp32 runs instead.
- **anything else** (MPS, ...): fp32.

Falling back is never silent: the first time per process and device kind, a warning says what was asked, what
runs and why (:func:`resolve_amp`). ``amp: none`` is always fp32.

What changes under bf16: autocast's lower-precision operators (convolutions, transposed convolutions, linear
layers, matrix products) take bf16 copies of their inputs and weights and return bf16; the elementwise work
between them follows. What stays fp32: the parameters, their gradients (autocast's casts are differentiable and
give fp32 gradients to fp32 leaves), the optimiser state, the EMA, checkpoints, each objective's per-example loss
arithmetic on the networks' outputs (a bf16 output meeting fp32 data is promoted to fp32; the trainer averages
in fp32), and a sampler's chain state (:class:`AutocastModel` returns the score in the chain's dtype).

Speed, agreement with fp32 and sample quality are measured in ``experiments/bench/README.md`` ("bf16 on the CPU")
and ``experiments/quality_per_compute/README.md`` ("bf16"); ``tests/test_precision.py`` checks small networks.
The presets keep fp32, which runs everywhere.
"""

from __future__ import annotations

import functools
import logging
import platform
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dae_gen.errors import ConfigError
from dae_gen.score import protocol_device

log = logging.getLogger(__name__)

#: The values of ``trainer.amp`` and of the sampler setting ``amp``.
AMP_MODES = ("none", "bf16")

#: x86 ``/proc/cpuinfo`` flags of native bf16 arithmetic, with their names, in order of preference.
_X86_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
#: torch's own probes (the cpuinfo library; also where ``/proc/cpuinfo`` cannot be read), by the same names.
_TORCH_CPU_PROBES = (("_is_amx_tile_supported", "AMX-BF16"), ("_is_avx512_bf16_supported", "AVX512-BF16"))

_warned: set[tuple[str, str]] = set()  # (device kind, requested) pairs whose fall-back was already reported


def check_amp(amp: Any, *, where: str = "amp") -> str:
    """``amp`` if it is one of :data:`AMP_MODES`, else a ConfigError naming ``where``."""
    if amp not in AMP_MODES:
        raise ConfigError(f"{where} must be one of {list(AMP_MODES)} (bf16: autocast where the hardware computes in "
                          f"bf16, else fp32 with a warning), got {amp!r}")
    return str(amp)


def _cpu_flags() -> set[str]:
    """The feature flags of ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def native_cpu_bf16() -> str | None:
    """The CPU's native bf16 instructions (``"AMX-BF16"``, ``"AVX512-BF16"``, ``"ARM BF16"``), or None."""
    flags = _cpu_flags()
    for flag, name in _X86_BF16_FLAGS:
        if flag in flags:
            return name
    if platform.machine().lower() in ("aarch64", "arm64") and "bf16" in flags:
        return "ARM BF16"
    for probe, name in _TORCH_CPU_PROBES:
        if getattr(torch.cpu, probe, lambda: False)():
            return name
    return None


@functools.cache
def bf16_support(device_type: str) -> tuple[bool, str]:
    """Whether bf16 autocast computes natively on devices of this kind (``"cpu"``, ``"cuda"``), and why."""
    if device_type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name()} supports bf16"
        return False, "this GPU has no bf16 arithmetic (it needs an Ampere or newer GPU)"
    if device_type != "cpu":
        return False, f"bf16 autocast is not used on {device_type} devices"
    instructions = native_cpu_bf16()
    if instructions is None:
        return False, ("this CPU has no native bf16 arithmetic (AMX-BF16 / AVX512-BF16 on x86, BF16 on ARM), so bf16 "
                       "would be emulated: slower than fp32")
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False, f"the CPU has {instructions}, but this torch build's oneDNN cannot use bf16"
    return True, f"the CPU has {instructions}"


def resolve_amp(amp: str, device: torch.device | str, *, warn: bool = True, where: str = "amp") -> str:
    """The precision that runs for the requested ``amp`` on ``device``: ``"bf16"`` or ``"none"`` (fp32).

    ``bf16`` on a device without native bf16 (see the module docstring) gives ``"none"``, with one warning per
    process and device kind (``warn=False``: none, e.g. off rank 0). A value other than ``none``/``bf16`` is a
    ConfigError naming ``where``.
    """
    amp = check_amp(amp, where=where)
    if amp == "none":
        return "none"
    kind = torch.device(device).type
    supported, why = bf16_support(kind)
    if supported:
        return amp
    if warn and (kind, amp) not in _warned:
        _warned.add((kind, amp))
        log.warning("amp=%s asked for, but %s: running in fp32 on %s instead", amp, why, kind)
    return "none"


def describe_amp(amp: str, device: torch.device | str) -> str:
    """One line for logs and records: ``bf16 autocast (the CPU has AMX-BF16)`` or ``fp32``."""
    if amp == "none":
        return "fp32"
    return f"{amp} autocast ({bf16_support(torch.device(device).type)[1]})"


def autocast(amp: str, device: torch.device | str) -> torch.autocast:
    """``torch.autocast`` to bf16 on ``device`` when ``amp`` (already resolved) is ``"bf16"``; else a no-op context."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16")


# -- sampling -------------------------------------------------------------------------------------------------
class AutocastModel:
    """A score model whose network calls (``score``, ``generate``) run under bf16 autocast and return fp32.

    It stands in for the model anywhere a sampler takes one and forwards every other attribute (``sigmas``,
    ``data_shape``, ``reference_sigma``, ``parameters`` ...). The score comes back in the dtype of ``x``, so the
    chain's state and its arithmetic (step sizes, noise, Heun's average) stay fp32: only the networks run in bf16.
    """

    def __init__(self, model: Any, *, amp: str = "bf16"):
        self.model, self.amp = model, check_amp(amp)

    def _device(self) -> torch.device:
        return protocol_device(self.model)

    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        with autocast(self.amp, x.device):
            out = self.model.score(x, sigma, **cond)
        return out.to(x.dtype)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.model, name)
        if name != "generate":
            return attribute

        def generate(n: int, **kwargs: Any) -> Tensor:
            with autocast(self.amp, self._device()):
                out = attribute(n, **kwargs)
            return out.float() if out.dtype == torch.bfloat16 else out

        return generate


def sampling_model(model: Any, amp: str) -> Any:
    """``model`` for a sampler at the requested precision: wrapped in :class:`AutocastModel` when bf16 runs on its
    device (see :func:`resolve_amp`), else the model itself."""
    device = protocol_device(model)
    return AutocastModel(model, amp="bf16") if resolve_amp(amp, device) == "bf16" else model


def driver_amp(driver: Callable[..., Tensor]) -> str:
    """The precision a built driver asks for: its ``amp`` (a registered sampler,
    ``dae_gen.samplers.registry.Sampler``), else ``"none"``."""
    amp = getattr(driver, "amp", "none")
    return amp if isinstance(amp, str) else "none"


__all__ = ["AMP_MODES", "AutocastModel", "autocast", "bf16_support", "check_amp", "describe_amp", "driver_amp",
           "native_cpu_bf16", "resolve_amp", "sampling_model"]
