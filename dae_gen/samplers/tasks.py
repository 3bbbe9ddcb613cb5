"""Image tasks over the score protocol: inpainting, interpolation, trajectory recording, Tweedie denoising per σ.

Each task is built on the existing samplers rather than beside them:

- **inpainting** runs a sampler on a score that reads the known pixels as a noised copy of their true values
  (``KnownPixelsScore``: NCSN's masked sampler, Song & Ermon 2019, Algorithm 3), then puts the true values back;
- **interpolation** runs annealed (or temperature-annealed) Langevin with NCSNv2's noise shared along each row
  (``interpolation_noise``: ``cos θ·p + sin θ·q``);
- **trajectories** are recorded by a sampler callback (``TrajectoryRecorder``) that keeps only chosen steps;
- **denoising** is Tweedie's formula ``x̃ + σ²·score(x̃, σ)`` on noised data, one picture per σ.

Score-level functions take ``(score, x, ..., *, knobs, generator, callback)`` like ``annealed_langevin``; the
model-level drivers (``inpaint``, ``interpolate``, ``record_trajectory``, ``denoise_at_levels``) take a model with
the score protocol and its data, e.g. ``inpaint(run.model, images, mask, n_per_image=4)``, and a sampler given
like ``Run.sample``'s (a config name, a settings dict, or an already built driver) with single-setting overrides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from dae_gen.errors import ConfigError
from dae_gen.samplers.inpainting import inpainting_method
from dae_gen.samplers.langevin import annealed_langevin, denoise_step
from dae_gen.samplers.registry import Sampler, build_sampler
from dae_gen.samplers.temperature import temperature_annealed_langevin, temperature_schedule
from dae_gen.score import Callback, Cond, Score, ScoreModel, Step, Wrapping, expand_sigma, protocol_device

MASK_KINDS = ("half", "bottom", "centre", "random")
KNOWN_NOISE = ("level", "step")
ENDPOINTS = ("shared", "spherical")

#: A sampler as the tasks take it: a registered name, a settings dict (with ``_target_``), a built
#: :class:`~dae_gen.samplers.registry.Sampler`, or any driver callable (``record_trajectory``, ``inpaint``).
SamplerSpec = str | Mapping[str, Any] | Sampler | Callable[..., Tensor] | None


# -- choosing a sampler (as Run.sample does) ----------------------------------------------------------------
def _sampler(sampler: SamplerSpec, overrides: Mapping[str, Any]) -> Sampler | Callable[..., Tensor]:
    """A registered sampler built from a name, settings or a built :class:`Sampler` (``overrides`` checked by the
    registry); any other callable driver ``(model, n, *, generator, callback)`` is used as given."""
    if sampler is None or isinstance(sampler, (str, Mapping, Sampler)):
        return build_sampler(sampler, **overrides)
    if overrides:
        raise ConfigError(f"settings {sorted(overrides)} cannot be applied to an already built driver; pass the "
                          "sampler by name or as settings instead")
    return sampler


def _registered(sampler: Sampler | Callable[..., Tensor], task: str) -> Sampler:
    if not isinstance(sampler, Sampler):
        raise ConfigError(f"{task} needs a registered sampler (a name, settings or a built Sampler), got "
                          f"{sampler!r}")
    return sampler


# -- inpainting -------------------------------------------------------------------------------------------
def inpainting_mask(kind: str, shape: Sequence[int], *, missing_fraction: float = 0.5,
                    generator: torch.Generator | None = None) -> Tensor:
    """A boolean mask of ``shape`` = ``(C, H, W)``: True where a pixel is known, False where it is inpainted.

    kind:              ``"half"`` (right half missing, as NCSN), ``"bottom"`` (bottom half), ``"centre"`` (the centre
                       square of half the side), ``"random"`` (each pixel position missing with probability
                       ``missing_fraction``, all channels alike).
    """
    if len(shape) != 3:
        raise ValueError(f"inpainting masks are for images (C, H, W); got the shape {tuple(shape)}")
    c, h, w = (int(d) for d in shape)
    known = torch.ones(1, h, w, dtype=torch.bool)
    if kind == "half":
        known[..., w // 2:] = False
    elif kind == "bottom":
        known[:, h // 2:, :] = False
    elif kind == "centre":
        top, left = h // 4, w // 4
        known[:, top:top + (h + 1) // 2, left:left + (w + 1) // 2] = False
    elif kind == "random":
        if not 0 <= missing_fraction <= 1:
            raise ValueError(f"missing_fraction must be in [0, 1], got {missing_fraction}")
        known = torch.rand(1, h, w, generator=generator) >= missing_fraction
    else:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
    return known.expand(c, h, w).clone()


class KnownPixelsScore:
    """``score(x, σ)`` read with the known pixels replaced by a noised copy of their true values.

    NCSN's masked sampler (Song & Ermon 2019, Algorithm 3; ermongroup/ncsn ``anneal_Langevin_dynamics_inpainting``):
    at noise level σ the known pixels are ``y = x_known + σ·z``; the score is evaluated at ``(x_unknown, y)``, so a
    Langevin sampler run on this score moves ``x_unknown`` as a chain on ``p_σ(x_unknown | y)``. The known entries of
    the sampler's own state are never read; ``keep_known`` puts the true values back at the end.

    known:         ``(B, ...)`` true values (only the entries under ``mask`` are used).
    mask:          bool, broadcastable to ``known``: True where a pixel is known.
    known_noise:   ``"level"``: one z per noise level (NCSN Algorithm 3); ``"step"``: a fresh z at every call
                   (ermongroup/ncsnv2 ``anneal_Langevin_dynamics_inpainting``; zengyi-li/MDSM
                   ``Annealed_Langevin_E_mask``).
    noise_levels:  the known pixels' noise level at each call (call k uses entry k, later calls the last one)
                   instead of the σ the call is made at: the temperature sampler calls at σ₀ while its chain is at
                   σ₀√T_k.
    """

    def __init__(self, score: Score, known: Tensor, mask: Tensor, *, known_noise: str = "level",
                 noise_levels: Tensor | None = None, generator: torch.Generator | None = None):
        if known_noise not in KNOWN_NOISE:
            raise ValueError(f"known_noise must be one of {KNOWN_NOISE}, got {known_noise!r}")
        self.score, self.known_noise, self.generator = score, known_noise, generator
        self.known = known  # as given; ``_known`` is its copy in the chain's dtype and device
        self._known = known
        self.mask = torch.as_tensor(mask, dtype=torch.bool).expand_as(known)
        self.noise_levels = None if noise_levels is None else torch.as_tensor(noise_levels).flatten()
        self.calls = 0
        self._z: Tensor | None = None
        self._level: Tensor | None = None
        self.noisy_known: Tensor | None = None  # the y of the latest call, (B, ...)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        if self._known.device != x.device or self._known.dtype != x.dtype:
            self._known, self.mask = self.known.to(x.device, x.dtype), self.mask.to(x.device)
        if self.noise_levels is None:
            level = sigma.to(x.dtype)
        else:
            value = self.noise_levels[min(self.calls, len(self.noise_levels) - 1)]
            level = torch.full((x.shape[0],), float(value), dtype=x.dtype, device=x.device)
        self.calls += 1
        z = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        if self.known_noise == "level" and self._z is not None:
            # keep each example's z while its level is unchanged (a tensor comparison: no host sync per step)
            same = (level == self._level).reshape(-1, *([1] * (x.ndim - 1)))
            z = torch.where(same, self._z, z)
        self._z, self._level = z, level
        self.noisy_known = self._known + expand_sigma(level, x) * z
        return self.score(torch.where(self.mask, self.noisy_known, x), sigma, **cond)

    def shown(self, x: Tensor) -> Tensor:
        """The chain's state as the masked sampler holds it: known pixels at their current noised values."""
        return x if self.noisy_known is None else torch.where(self.mask, self.noisy_known, x)


def keep_known(x: Tensor, known: Tensor, mask: Tensor) -> Tensor:
    """``x`` with the known pixels set exactly to their true values."""
    return torch.where(torch.as_tensor(mask, dtype=torch.bool, device=x.device), known.to(x.device, x.dtype), x)


def _showing_known(callback: Callback, clamped: KnownPixelsScore) -> Callback:
    """Pass the callback the state with its known pixels as the sampler reads them, not the unread entries."""
    if callback is None:
        return None
    return lambda step: callback(replace(step, x=clamped.shown(step.x)))


def inpaint_annealed_langevin(score: Score, x: Tensor, known: Tensor, mask: Tensor, sigmas: Tensor, *,
                              n_steps_each: int, step_lr: float, denoise: bool = True, known_noise: str = "level",
                              generator: torch.Generator | None = None, callback: Callback = None) -> Tensor:
    """Inpainting by annealed Langevin with clamped known pixels (NCSN Algorithm 3); the output keeps them exactly.

    x: initial state ``(B, ...)``; known: true values ``(B, ...)``; mask: True where known (broadcastable).
    At level i the known pixels read ``known + σ_i·z`` (one z per level, or per step with ``known_noise="step"``);
    the final Tweedie step (``denoise``) reads them at σ_L too. Returns ``(B, ...)``.
    """
    clamped = KnownPixelsScore(score, known, mask, known_noise=known_noise, generator=generator)
    x = annealed_langevin(clamped, x, sigmas, n_steps_each=n_steps_each, step_lr=step_lr, denoise=denoise,
                          generator=generator, callback=_showing_known(callback, clamped))
    return keep_known(x, known, mask)


def _temperature_levels(sigma0: float, **schedule: Any) -> Tensor:
    """σ₀√T_k for each step k of the temperature schedule: the annealed-DSM energy at temperature T = σ²/σ₀²
    models the data smoothed at σ = σ₀√T (Li, Chen & Sommer 2019, §3), so the known pixels are noised at that σ."""
    return sigma0 * temperature_schedule(**schedule).clamp(min=0).sqrt()


def inpaint_temperature_langevin(score: Score, x: Tensor, known: Tensor, mask: Tensor, *, sigma0: float,
                                 n_steps_hot: int = 500, temp_hot: float = 100.0, n_steps_anneal: int = 2000,
                                 n_steps_cool: int = 200, step_size: float = 0.02, denoise: bool = True,
                                 known_noise: str = "step", generator: torch.Generator | None = None,
                                 callback: Callback = None) -> Tensor:
    """Masked temperature-annealed Langevin (zengyi-li/MDSM ``Annealed_Langevin_E_mask``); keeps known pixels exactly.

    At step k the known pixels read ``known + σ₀√T_k·z`` with a fresh z (MDSM; its code noises them with
    ``0.1·T^{1/4}`` because it takes the square root of T twice, we use the σ₀√T its own T = σ²/σ₀² implies); the
    final denoising jump reads them at the last step's level (0 after the cooling phase).
    """
    schedule = dict(n_steps_hot=n_steps_hot, temp_hot=temp_hot, n_steps_anneal=n_steps_anneal,
                    n_steps_cool=n_steps_cool)
    clamped = KnownPixelsScore(score, known, mask, known_noise=known_noise, generator=generator,
                               noise_levels=_temperature_levels(sigma0, **schedule))
    x = temperature_annealed_langevin(clamped, x, sigma0=sigma0, **schedule, step_size=step_size, denoise=denoise,
                                      generator=generator, callback=_showing_known(callback, clamped))
    return keep_known(x, known, mask)


class _KnownPixelsModel(Wrapping):
    """A score model whose score is ``KnownPixelsScore`` over another model's: any sampler driver consuming only the
    score protocol (annealed Langevin, temperature Langevin, EDM-style σ schedules) then inpaints."""

    def __init__(self, model: ScoreModel, clamped: KnownPixelsScore):
        self.model, self.clamped = model, clamped
        self.data_shape = tuple(model.data_shape)
        self.device = protocol_device(model)  # the chains start where the model's would

    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        return self.clamped(x, sigma, **cond)


def inpaint(model: ScoreModel, images: Tensor, mask: Tensor, *, n_per_image: int = 1, sampler: SamplerSpec = None,
            known_noise: str | None = None, resample: int | None = None, generator: torch.Generator | None = None,
            callback: Callback = None, cond: Cond | None = None, **overrides: Any) -> Tensor:
    """Complete the masked pixels of ``images`` ``(N, *data_shape)``: ``(N, n_per_image, *data_shape)`` on the model's
    device, the known pixels equal to ``images`` exactly.

    mask:         True where a pixel is known; broadcastable to ``images`` (e.g. ``inpainting_mask("half", shape)``).
    sampler:      a sampler config name (default ``"annealed_langevin"``), settings, or a built driver, with
                  ``overrides`` of single settings, as ``Run.sample`` takes it. Its initial state and steps are
                  the sampler's own; only the score changes (``KnownPixelsScore``). A temperature-Langevin sampler
                  noises the known pixels at σ₀√T_k (``inpaint_temperature_langevin``); every other sampler at the
                  σ it calls the score with.
    known_noise:  ``"level"`` or ``"step"``; None: ``"step"`` for temperature Langevin (MDSM), else ``"level"`` (NCSN).
    resample:     the diffusion samplers (``heun``, ``edm_stochastic``, ``pc``): r, how often each step is taken
                  with the state renoised in between (RePaint); clamping the known pixels in a deterministic or
                  single-pass chain does not sample the conditional law. None: the measured default
                  (``dae_gen.samplers.inpainting.DEFAULTS``). The adaptive ``ode`` and ``generator`` are refused.
    cond:         conditioning of the ``N·n_per_image`` chains (image-major), passed to every score call as it is.

    Every method samples the conditional law of the missing pixels given the known ones (``inpainting_method``
    says which runs for which sampler, and why); the Langevin samplers run on a score reading the known pixels
    noised at each level.
    """
    driver = _sampler(sampler, overrides)
    method = inpainting_method(driver.name) if isinstance(driver, Sampler) else None
    if int(n_per_image) < 1:
        raise ValueError(f"n_per_image must be at least 1, got {n_per_image}")
    if tuple(images.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"images must have the model's data shape (N, {', '.join(map(str, model.data_shape))}), "
                         f"got {tuple(images.shape)}")
    device = protocol_device(model)
    known = images.to(device).repeat_interleave(int(n_per_image), dim=0)  # (N·K, ...), image-major
    mask = torch.as_tensor(mask, dtype=torch.bool).to(device).expand_as(images).repeat_interleave(int(n_per_image), 0)
    if method is not None and driver.spec.inpaint is not None:  # replacement with RePaint resampling
        r = method.settings.get("resample", 1) if resample is None else resample
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ConfigError(f"inpaint.resample: must be an integer of at least 1, got {r!r}")
        chain_model = driver.model_for_chain(model)
        x = driver.initial_state(model, known.shape[0], generator=generator)
        x = driver.inpaint(chain_model.score, x, known, mask, model=chain_model, resample=r, generator=generator,
                           callback=callback, cond=cond)
        return keep_known(x, known, mask).reshape(images.shape[0], int(n_per_image), *images.shape[1:])
    levels = driver.known_noise_levels(model) if isinstance(driver, Sampler) else None
    default_noise = "level" if levels is None else "step"  # per call where the levels change every step (MDSM)
    clamped = KnownPixelsScore(model.score, known, mask, known_noise=known_noise or default_noise,
                               noise_levels=levels, generator=generator)
    x = driver(_KnownPixelsModel(model, clamped), known.shape[0], generator=generator,
               callback=_showing_known(callback, clamped), **({} if cond is None else {"cond": cond}))
    return keep_known(x, known, mask).reshape(images.shape[0], int(n_per_image), *images.shape[1:])


# -- interpolation ----------------------------------------------------------------------------------------
def _angles(n_interpolations: int, x: Tensor) -> Tensor:
    """θ_j = jπ / (2(J − 1)), j = 0 … J − 1, shaped ``(1, J, 1, …)`` to broadcast over ``(R, J, *shape)``."""
    angles = torch.linspace(0.0, math.pi / 2, int(n_interpolations), device=x.device, dtype=x.dtype)
    return angles.reshape(1, -1, *([1] * (x.ndim - 2)))


def interpolation_noise(n_rows: int, n_interpolations: int, *, generator: torch.Generator | None = None
                        ) -> Callable[[Tensor], Tensor]:
    """NCSNv2's shared Langevin noise (ermongroup/ncsnv2 ``anneal_Langevin_dynamics_interpolation``), as a sampler's
    ``noise`` hook over ``x`` of shape ``(R·J, ...)`` (row-major: chain ``r·J + j``).

    At every step two fresh draws ``p_r, q_r ~ N(0, I)`` per row give chain j the noise
    ``ξ_{r,j} = cos θ_j·p_r + sin θ_j·q_r`` with ``θ_j = jπ/(2(J − 1))``. Each ξ_{r,j} is exactly N(0, I)
    (cos² + sin² = 1), so every chain is a correct Langevin chain; neighbouring chains' noises have correlation
    ``cos(π/(2(J − 1)))``, so a row changes smoothly from the chain driven by p alone to the one driven by q alone.
    """
    rows, columns = int(n_rows), int(n_interpolations)

    def noise(x: Tensor) -> Tensor:
        if x.shape[0] != rows * columns:
            raise ValueError(f"interpolation noise is for {rows}×{columns} chains, got a batch of {x.shape[0]}")
        shape = (rows, 1, *x.shape[1:])
        p = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        q = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        angles = _angles(columns, p)
        return (p * angles.cos() + q * angles.sin()).reshape(x.shape)

    return noise


def interpolation_starts(start: Tensor, n_interpolations: int, *, end: Tensor | None = None,
                         center: float = 0.0) -> Tensor:
    """Initial states ``(R, J, ...)`` of interpolation rows from ``start`` ``(R, ...)``.

    end=None: every chain of row r starts at ``start_r`` (NCSNv2). Otherwise the starts turn from ``start_r`` to
    ``end_r`` about ``center`` with the noise's angles: ``c + cos θ_j (start_r − c) + sin θ_j (end_r − c)`` (for
    Gaussian starts about their mean this keeps every start's law).
    """
    if end is None:
        return start.unsqueeze(1).expand(-1, int(n_interpolations), *start.shape[1:]).clone()
    angles = _angles(n_interpolations, start.unsqueeze(1))
    return center + angles.cos() * (start - center).unsqueeze(1) + angles.sin() * (end - center).unsqueeze(1)


def interpolate(model: ScoreModel, n_rows: int, *, n_interpolations: int = 8, sampler: SamplerSpec = None,
                endpoints: str = "shared", generator: torch.Generator | None = None, callback: Callback = None,
                cond: Cond | None = None, **overrides: Any) -> Tensor:
    """NCSNv2 interpolation rows ``(n_rows, n_interpolations, *data_shape)`` on the model's device.

    Each row's chains run annealed Langevin (or temperature-annealed Langevin) with the sampler's own settings and
    initial law, driven by ``interpolation_noise``, so neighbouring images change smoothly along a row. (NCSNv2's
    interpolation ends without the Tweedie step; here the sampler's ``denoise`` setting decides, ``denoise=False``
    as an override reproduces it.)
    endpoints:  ``"shared"``: one initial state per row (NCSNv2); ``"spherical"``: two, turned into each other
                (``interpolation_starts``) about the initial law's centre.
    """
    if endpoints not in ENDPOINTS:
        raise ValueError(f"endpoints must be one of {ENDPOINTS}, got {endpoints!r}")
    if int(n_rows) < 1 or int(n_interpolations) < 1:
        raise ValueError(f"n_rows and n_interpolations must be positive, got {n_rows} and {n_interpolations}")
    chosen = _registered(_sampler(sampler, overrides), "interpolation")
    if not chosen.spec.noise_hook:
        raise ConfigError(f"interpolation drives Langevin noise, so it needs sampler=annealed_langevin or "
                          f"temperature_langevin (a sampler with a noise hook); got {chosen.name}")
    start = chosen.initial_state(model, int(n_rows), generator=generator)
    end = chosen.initial_state(model, int(n_rows), generator=generator) if endpoints == "spherical" else None
    x = interpolation_starts(start, n_interpolations, end=end, center=chosen.center()).flatten(0, 1)
    model = chosen.model_for_chain(model)  # the chains below call its score directly: amp= applies here
    noise = interpolation_noise(n_rows, n_interpolations, generator=generator)
    x = chosen.chain(model.score, x, model=model, generator=generator, callback=callback, cond=cond, noise=noise)
    return x.reshape(int(n_rows), int(n_interpolations), *model.data_shape)


# -- trajectories -----------------------------------------------------------------------------------------
def frame_steps(n_steps: int, n_frames: int) -> list[int]:
    """``n_frames`` steps spread evenly over 1 … ``n_steps``, the first and the last included (all steps when the
    sampler has fewer than ``n_frames``)."""
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if int(n_frames) == 1:
        return [int(n_steps)]
    return sorted({round(1 + k * (n_steps - 1) / (n_frames - 1)) for k in range(int(n_frames))})


class TrajectoryRecorder:
    """A sampler callback that keeps the chain's state ``x`` at chosen steps, and nothing else.

    steps:     1-based step numbers as the samplers count them (``Step.i``); or
    n_frames:  that many steps spread evenly over the run (``frame_steps``), known once the sampler reports ``n``;
               where it reports ``n=None`` (an adaptive ODE solver: its length is known only at its end) every
               state is kept and the frames are chosen from the steps it took.
    device:    where the kept copies go (the CPU by default, so a GPU chain keeps no extra memory).

    It never draws random numbers or changes ``x``, so a recorded run gives the samples of an unrecorded one.
    Works with ``draw_samples`` / ``Run.sample`` too: states of successive batches are concatenated.
    """

    def __init__(self, steps: Sequence[int] | None = None, *, n_frames: int | None = None,
                 device: torch.device | str = "cpu"):
        if (steps is None) == (n_frames is None):
            raise ValueError("give the steps to record or n_frames, not both")
        self.n_frames, self.device = n_frames, torch.device(device)
        self._steps = None if steps is None else sorted({int(s) for s in steps})
        if self._steps is not None and (not self._steps or self._steps[0] < 1):
            raise ValueError(f"steps must be one or more step numbers counted from 1, got {list(steps)}")
        self._states: dict[tuple[int, int], Tensor] = {}
        self._open = False  # n_frames over a chain of unknown length: keeping every state until it ends
        self._last: dict[int, int] = {}  # batch → its last step

    @property
    def steps(self) -> list[int]:
        """The recorded step numbers (resolved from ``n_frames`` at the first step, or at the end of a chain of
        unknown length)."""
        if self._open:
            self._close()
        if self._steps is None:
            raise RuntimeError("the steps of n_frames are known once the sampler has run")
        return list(self._steps)

    def _close(self) -> None:
        """Choose ``n_frames`` steps of the shortest batch's chain and drop the other kept states."""
        self._steps = frame_steps(min(self._last.values()), self.n_frames)
        self._states = {key: x for key, x in self._states.items() if key[1] in self._steps}
        self._open = False

    def __call__(self, step: Step) -> None:
        i, total = int(step.i), step.n
        if self._steps is None and not self._open:
            if total is None:
                self._open = True
            else:
                self._steps = frame_steps(int(total), self.n_frames)
        elif total is not None and i == 1 and self._steps is not None and self._steps[-1] > total:
            raise ValueError(f"cannot record step {self._steps[-1]}: the sampler runs {total} steps")
        self._last[step.batch] = i
        if self._open or i in self._steps:
            self._states[(step.batch, i)] = step.x.detach().to(self.device, copy=True)

    def frames(self) -> Tensor:
        """The recorded states ``(T, N, ...)``: T steps, the chains of all batches in order."""
        if not self._states:
            raise RuntimeError("nothing recorded yet: pass the recorder as a sampler's callback and run it")
        steps = self.steps
        batches = sorted({b for b, _ in self._states})
        missing = [(b, s) for b in batches for s in steps if (b, s) not in self._states]
        if missing:
            raise ValueError(f"batch {missing[0][0]} did not reach step {missing[0][1]}: the batches' chains differ "
                             "in length (an adaptive solver); record one batch, or give steps they all reach")
        return torch.stack([torch.cat([self._states[(b, s)] for b in batches]) for s in steps])


@dataclass
class Trajectory:
    """Chains recorded at ``steps``: ``frames`` ``(T, n, ...)`` and the sampler's output ``samples`` ``(n, ...)``."""

    steps: list[int]
    frames: Tensor
    samples: Tensor


def record_trajectory(model: ScoreModel, n: int, *, sampler: SamplerSpec = None, steps: Sequence[int] | None = None,
                      n_frames: int | None = 10, generator: torch.Generator | None = None, callback: Callback = None,
                      cond: Cond | None = None, **overrides: Any) -> Trajectory:
    """Run any sampler driver for ``n`` chains and keep their states at ``steps`` (or ``n_frames`` even steps).

    The samples equal those of the same driver run unrecorded with the same generator.
    """
    recorder = TrajectoryRecorder(steps, n_frames=None if steps is not None else n_frames)
    driver = _sampler(sampler, overrides)

    def on_step(step: Step) -> None:
        recorder(step)
        if callback is not None:
            callback(step)

    samples = driver(model, int(n), generator=generator, callback=on_step, **({} if cond is None else {"cond": cond}))
    return Trajectory(steps=recorder.steps, frames=recorder.frames(), samples=samples.detach())


# -- denoising --------------------------------------------------------------------------------------------
class Denoised(NamedTuple):
    """Tweedie denoising at each σ: ``noisy`` and ``denoised`` ``(S, B, ...)`` for ``sigmas`` ``(S,)``."""

    sigmas: Tensor
    noisy: Tensor
    denoised: Tensor


@torch.no_grad()
def tweedie_denoising(score: Score, x: Tensor, sigmas: Tensor | Sequence[float], *,
                      generator: torch.Generator | None = None, cond: Cond | None = None) -> Denoised:
    """What a DAE sees and returns at each σ: ``x̃ = x + σ·ε`` and ``E[x | x̃] = x̃ + σ²·score(x̃, σ)`` (Tweedie's
    formula: the DAE optimum ``r*(x̃)``). One ε for every σ, so the pictures differ only in σ."""
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device).flatten()
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    noisy = torch.stack([x + sigma * eps for sigma in sigmas])
    denoised = torch.stack([denoise_step(score, y, sigma, cond=cond) for y, sigma in zip(noisy, sigmas)])
    return Denoised(sigmas=sigmas, noisy=noisy, denoised=denoised)


def denoise_at_levels(model: ScoreModel, images: Tensor, *, sigmas: Tensor | Sequence[float] | None = None,
                      n_sigmas: int = 6, generator: torch.Generator | None = None, cond: Cond | None = None
                      ) -> Denoised:
    """``tweedie_denoising`` of ``images`` with a model's score; ``sigmas`` default to ``n_sigmas`` of its own
    levels, evenly spread by index from σ_1 to σ_L."""
    if sigmas is None:
        levels = model.sigmas
        index = torch.linspace(0, len(levels) - 1, min(int(n_sigmas), len(levels))).round().long()
        sigmas = levels[index.to(levels.device)]
    device = protocol_device(model)
    return tweedie_denoising(model.score, images.to(device), torch.as_tensor(sigmas).to(device), generator=generator,
                             cond=cond)


__all__ = ["Denoised", "KnownPixelsScore", "MASK_KINDS", "Trajectory", "TrajectoryRecorder", "denoise_at_levels",
           "frame_steps", "inpaint", "inpaint_annealed_langevin", "inpaint_temperature_langevin", "inpainting_mask",
           "interpolate", "interpolation_noise", "interpolation_starts", "keep_known", "record_trajectory",
           "tweedie_denoising"]
