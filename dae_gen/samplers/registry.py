"""The sampler registry: every sampler's name, settings, checks and construction in one place.

A sampler is a driver ``sample_*(model, n, *, generator, callback, cond, **settings)`` in its module, a config
``configs/sampler/<name>.yaml`` (its preset settings, and the ``_target_`` naming the driver for Hydra), and one
:func:`register` line below. :func:`build_sampler` turns a name or settings into a :class:`Sampler`: every
setting is checked (its name, its type, its range) before any work, so a bad value is one ``ConfigError``
naming the key (``sampler.rho: must be positive, got 0``).

Each entry also declares what the image tasks (``dae_gen.samplers.tasks``) need of it, so that they never look
inside a driver: ``initial_state`` (the chains' starting law) and ``center`` (its centre), ``chain`` (the chain
over a score callable from a given state), ``noise_hook`` (whether ``chain`` takes a ``noise`` draw function),
``known_noise_levels`` (the σ at which inpainting noises the known pixels at each score call, where it differs
from the σ of the call) and ``one_pass`` (no chain at all).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from torch import Tensor

from dae_gen.errors import ConfigError
from dae_gen.noise import geometric_sigmas
from dae_gen.precision import check_amp, sampling_model
from dae_gen.samplers import edm, fast, inpainting, langevin, ode, pc, temperature
from dae_gen.samplers.schedule import sigma_range
from dae_gen.score import Callback, Cond, GenerativeModel, protocol_device
from dae_gen.settings import check_keywords

#: Arguments every driver takes that are not settings.
DRIVER_ARGUMENTS = ("model", "n", "generator", "callback", "cond")

#: A setting's check: ``value -> None`` when fine, else what is wrong (``"must be positive"``).
Check = Callable[[Any], str | None]


# -- checks --------------------------------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def positive(value: Any) -> str | None:
    return None if _number(value) and value > 0 else "must be positive"


def non_negative(value: Any) -> str | None:
    return None if _number(value) and value >= 0 else "must be non-negative"


def at_least(low: int) -> Check:
    def check(value: Any) -> str | None:
        return None if isinstance(value, int) and not isinstance(value, bool) and value >= low else \
            f"must be an integer of at least {low}"
    return check


def one_of(*choices: Any) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {list(choices)}"
    return check


def optional(check: Check) -> Check:
    """``check``, or null (the model's own value)."""
    def maybe(value: Any) -> str | None:
        return None if value is None else check(value)
    return maybe


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


_SIGMA_RANGE = {"sigma_min": optional(positive), "sigma_max": optional(positive)}


# -- entries -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerEntry:
    """One registered sampler.

    name:                the config name (``configs/sampler/<name>.yaml``).
    driver:              ``(model, n, *, generator, callback, cond, **settings) -> (n, *data_shape)``.
    checks:              setting → :data:`Check`, run on the resolved settings before any work.
    initial_state:       ``(model, n, settings, generator) -> x``: the chains' start on the model's device.
    center:              ``settings -> c``: the centre of that law (spherical interpolation turns starts about it).
    chain:               ``(score, x, *, model, settings, generator, callback, cond, noise) -> x`` from state ``x``.
    noise_hook:          ``chain`` takes ``noise`` (``x -> ξ``, each step's standard normal draw).
    known_noise_levels:  ``(model, settings) -> (calls,)``: the σ of the known pixels at each score call in
                         inpainting, where it differs from the σ of the call (temperature Langevin: σ₀√T_k).
    one_pass:            no chain: a generator network draws in one pass (nothing to hold fixed or to drive).
    inpaint:             ``(score, x, known, mask, *, model, settings, resample, generator, callback, cond) -> x``:
                         the chain that samples the conditional law of the missing pixels (replacement with RePaint
                         resampling, ``dae_gen.samplers.inpainting``); None: inpainting runs ``chain`` on a score
                         reading the known pixels noised (the Langevin samplers, which mix at every level).
    """

    name: str
    driver: Callable[..., Tensor]
    checks: Mapping[str, Check] = field(default_factory=dict)
    initial_state: Callable[..., Tensor] | None = None
    center: Callable[[Mapping[str, Any]], float] | None = None
    chain: Callable[..., Tensor] | None = None
    noise_hook: bool = False
    known_noise_levels: Callable[[Any, Mapping[str, Any]], Tensor] | None = None
    one_pass: bool = False
    inpaint: Callable[..., Tensor] | None = None

    @property
    def target(self) -> str:
        """The driver's import path, as a config's ``_target_`` names it."""
        return f"{self.driver.__module__}.{self.driver.__qualname__}"

    @property
    def defaults(self) -> dict[str, Any]:
        """Every setting of the driver with its default value."""
        return {name: p.default for name, p in inspect.signature(self.driver).parameters.items()
                if name not in DRIVER_ARGUMENTS and p.default is not inspect.Parameter.empty}


_REGISTRY: dict[str, SamplerEntry] = {}


def register(entry: SamplerEntry) -> SamplerEntry:
    """Add a sampler to the registry (its name must be new)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"a sampler named {entry.name!r} is registered already")
    _REGISTRY[entry.name] = entry
    return entry


def entry(name: str) -> SamplerEntry:
    """The registered sampler ``name`` (a ConfigError listing the names otherwise)."""
    if name not in _REGISTRY:
        raise ConfigError(f"no sampler named {name!r}; choose one of {sampler_names()}")
    return _REGISTRY[name]


def sampler_names() -> list[str]:
    """The registered samplers' names."""
    return sorted(_REGISTRY)


def _by_target(target: str) -> SamplerEntry:
    for candidate in _REGISTRY.values():
        if candidate.target == target:
            return candidate
    raise ConfigError(f"sampler _target_ {target!r} names no registered sampler; the registered drivers are "
                      f"{sorted(e.target for e in _REGISTRY.values())} (dae_gen.samplers.registry registers a new one)")


def sampler_config(name: str) -> dict[str, Any]:
    """The preset settings of sampler ``name``, its ``configs/sampler/<name>.yaml`` (with ``_target_``)."""
    import yaml

    entry(name)
    path = resources.files("dae_gen.configs").joinpath("sampler", f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"the registered sampler {name!r} has no config configs/sampler/{name}.yaml")
    with path.open(encoding="utf-8") as handle:
        return dict(yaml.safe_load(handle) or {})


# -- the built sampler ---------------------------------------------------------------------------------------
class Sampler:
    """A registered sampler with checked settings: ``sampler(model, n, *, generator, callback, cond)``.

    name:      the registry name.
    settings:  every setting of the driver with the value it runs with, and ``amp``.
    config:    the settings as a config node: ``_target_``, ``_partial_`` and the settings that were given
               (what a run records, and what Hydra can instantiate).
    amp:       the precision of the model's network calls (``"none"`` or ``"bf16"``, ``dae_gen.precision``).
    """

    def __init__(self, spec: SamplerEntry, settings: Mapping[str, Any], config: Mapping[str, Any], amp: str):
        self.spec, self.name, self.amp = spec, spec.name, amp
        self.settings = {**settings, "amp": amp}
        self.config = dict(config)
        self._driver_settings = dict(settings)

    def __call__(self, model: Any, n: int, *, generator: torch.Generator | None = None, callback: Callback = None,
                 cond: Cond | None = None) -> Tensor:
        return self.spec.driver(sampling_model(model, self.amp), n, generator=generator, callback=callback,
                                cond=cond, **self._driver_settings)

    def __repr__(self) -> str:
        return f"Sampler({self.name!r}, {self.settings})"

    def check_model(self, model: Any) -> None:
        """A ``ConfigError`` before any work where this sampler cannot draw from ``model`` (a one-pass sampler
        needs a generator network)."""
        if self.spec.one_pass and not isinstance(model, GenerativeModel):
            raise ConfigError(f"sampler={self.name} needs a model with a generator network; "
                              f"{type(model).__name__} has none: use a Langevin sampler")

    # -- what the image tasks use ----------------------------------------------------------------------------
    def model_for_chain(self, model: Any) -> Any:
        """``model`` at this sampler's precision, for tasks that call ``chain`` with its score."""
        return sampling_model(model, self.amp)

    def initial_state(self, model: Any, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        if self.spec.initial_state is None:
            raise ConfigError(f"sampler {self.name} declares no initial state")
        return self.spec.initial_state(model, int(n), self._driver_settings, generator)

    def center(self) -> float:
        return 0.0 if self.spec.center is None else float(self.spec.center(self._driver_settings))

    def chain(self, score: Callable[..., Tensor], x: Tensor, *, model: Any, generator: torch.Generator | None = None,
              callback: Callback = None, cond: Cond | None = None, noise: Callable[[Tensor], Tensor] | None = None
              ) -> Tensor:
        if self.spec.chain is None:
            raise ConfigError(f"sampler {self.name} declares no chain over a score")
        extra = {"noise": noise} if self.spec.noise_hook else {}
        if noise is not None and not self.spec.noise_hook:
            raise ConfigError(f"sampler {self.name} draws its own noise and takes no noise hook")
        return self.spec.chain(score, x, model=model, settings=self._driver_settings, generator=generator,
                               callback=callback, cond=cond, **extra)

    def inpaint(self, score: Callable[..., Tensor], x: Tensor, known: Tensor, mask: Tensor, *, model: Any,
                resample: int, generator: torch.Generator | None = None, callback: Callback = None,
                cond: Cond | None = None) -> Tensor:
        """The sampler's conditional chain for inpainting from state ``x`` (see :class:`SamplerEntry`)."""
        if self.spec.inpaint is None:
            raise ConfigError(f"sampler {self.name} declares no inpainting chain")
        return self.spec.inpaint(score, x, known, mask, model=model, settings=self._driver_settings,
                                 resample=int(resample), generator=generator, callback=callback, cond=cond)

    def known_noise_levels(self, model: Any) -> Tensor | None:
        fn = self.spec.known_noise_levels
        return None if fn is None else fn(model, self._driver_settings)


def _problem(key: str, message: str, value: Any) -> ConfigError:
    return ConfigError(f"sampler.{key}: {message}, got {value!r}")


def build_sampler(name_or_settings: str | Mapping[str, Any] | Sampler | None, **overrides: Any) -> Sampler:
    """A :class:`Sampler` from a registered name (its config's presets), settings (with ``_target_`` naming a
    registered driver, as configs and old checkpoints hold them) or a built sampler; ``overrides`` replace single
    settings. Every setting is checked before anything runs."""
    if isinstance(name_or_settings, Sampler):
        spec, given = name_or_settings.spec, {**name_or_settings.config}
    elif name_or_settings is None or isinstance(name_or_settings, str):
        spec = entry(name_or_settings or "annealed_langevin")
        given = sampler_config(spec.name)
    elif isinstance(name_or_settings, Mapping):
        given = dict(name_or_settings)
        target = given.get("_target_")
        if not target:
            raise ConfigError(f"a sampler config needs a _target_ naming its driver function, got {given}")
        spec = _by_target(str(target))
    else:
        raise ConfigError(f"a sampler is a name, settings or a built Sampler, got {type(name_or_settings).__name__}")
    given = {**given, **overrides}
    config = {"_target_": spec.target, **{k: v for k, v in given.items() if k != "_target_"}, "_partial_": True}
    amp = check_amp(given.get("amp", "none"), where="sampler.amp")
    settings = {k: v for k, v in given.items() if not str(k).startswith("_") and k != "amp"}
    check_keywords(spec.driver, settings, where="sampler", noun="setting", exclude=DRIVER_ARGUMENTS)
    resolved = {**spec.defaults, **settings}
    for key, check in spec.checks.items():
        if key in resolved and (message := check(resolved[key])) is not None:
            raise _problem(key, message, resolved[key])
    return Sampler(spec, resolved, config, amp)


# -- what the registered samplers declare --------------------------------------------------------------------
def _langevin_start(model: Any, n: int, s: Mapping[str, Any], generator: torch.Generator | None) -> Tensor:
    sigmas = model.sigmas if s["sigmas"] is None else torch.as_tensor(s["sigmas"])
    return langevin.initial_state((n, *model.data_shape), init=s["init"], init_low=s["init_low"],
                                  init_high=s["init_high"], sigma_max=float(sigmas[0]),
                                  device=protocol_device(model), generator=generator)


def _langevin_chain(score, x, *, model, settings, generator, callback, cond, noise=None) -> Tensor:
    sigmas = model.sigmas if settings["sigmas"] is None else torch.as_tensor(settings["sigmas"])
    return langevin.annealed_langevin(score, x, sigmas.to(x.device), n_steps_each=settings["n_steps_each"],
                                      step_lr=settings["step_lr"], denoise=settings["denoise"], generator=generator,
                                      callback=callback, noise=noise, cond=cond)


_SCHEDULE = ("n_steps_hot", "temp_hot", "n_steps_anneal", "n_steps_cool")


def _sigma0(model: Any, s: Mapping[str, Any]) -> float:
    return float(model.reference_sigma) if s["sigma0"] is None else float(s["sigma0"])


def _temperature_start(model: Any, n: int, s: Mapping[str, Any], generator: torch.Generator | None) -> Tensor:
    return s["init_mean"] + s["init_std"] * torch.randn((n, *model.data_shape), generator=generator,
                                                        device=protocol_device(model))


def _temperature_chain(score, x, *, model, settings, generator, callback, cond, noise=None) -> Tensor:
    return temperature.temperature_annealed_langevin(
        score, x, sigma0=_sigma0(model, settings), **{k: settings[k] for k in _SCHEDULE},
        step_size=settings["step_size"], denoise=settings["denoise"], generator=generator, callback=callback,
        noise=noise, cond=cond)


def _temperature_levels(model: Any, s: Mapping[str, Any]) -> Tensor:
    """σ₀√T_k for each step k: the annealed-DSM energy at temperature T = σ²/σ₀² models the data smoothed at
    σ = σ₀√T (Li, Chen & Sommer 2019, §3), so inpainting noises the known pixels at that σ."""
    return _sigma0(model, s) * temperature.temperature_schedule(**{k: s[k] for k in _SCHEDULE}).clamp(min=0).sqrt()


def _prior_start(name: str, *, single_level: bool) -> Callable[..., Tensor]:
    """N(0, σ_max² I), σ_max from the settings or the model (the diffusion samplers' start)."""
    def start(model: Any, n: int, s: Mapping[str, Any], generator: torch.Generator | None) -> Tensor:
        sigma_max, _ = sigma_range(model, s["sigma_max"], s["sigma_min"], sampler=name,
                                   allow_single_level=single_level)
        return sigma_max * torch.randn((n, *model.data_shape), generator=generator, device=protocol_device(model))
    return start


def _karras_chain(name: str, function: Callable[..., Tensor], *keys: str,
                  single_level: bool = False) -> Callable[..., Tensor]:
    """A chain on the ρ-schedule (EDM, DPM-Solver++, Euler ancestral) from a state at σ_max."""
    from dae_gen.noise import karras_sigmas

    def chain(score, x, *, model, settings, generator, callback, cond, noise=None) -> Tensor:
        sigma_max, sigma_min = sigma_range(model, settings["sigma_max"], settings["sigma_min"], sampler=name,
                                           allow_single_level=single_level)
        sigmas = karras_sigmas(settings["n_steps"], sigma_min, sigma_max, settings["rho"])
        extra = {"generator": generator} if name != "dpm_solver_2m" else {}
        return function(score, x, sigmas, callback=callback, cond=cond, **extra, **{k: settings[k] for k in keys})
    return chain


def _karras_inpaint(name: str, *keys: str, single_level: bool = False) -> Callable[..., Tensor]:
    """EDM's sampler on the ρ-schedule with replacement and RePaint resampling (``inpainting.inpaint_edm``)."""
    from dae_gen.noise import karras_sigmas

    def chain(score, x, known, mask, *, model, settings, resample, generator, callback, cond) -> Tensor:
        sigma_max, sigma_min = sigma_range(model, settings["sigma_max"], settings["sigma_min"], sampler=name,
                                           allow_single_level=single_level)
        sigmas = karras_sigmas(settings["n_steps"], sigma_min, sigma_max, settings["rho"])
        return inpainting.inpaint_edm(score, x, known, mask, sigmas.to(x.device, x.dtype), resample=resample,
                                      generator=generator, callback=callback, cond=cond,
                                      **{k: settings[k] for k in keys})
    return chain


def _ode_chain(score, x, *, model, settings, generator, callback, cond, noise=None) -> Tensor:
    sigma_max, sigma_min = sigma_range(model, settings["sigma_max"], settings["sigma_min"], sampler="ode",
                                       allow_single_level=False)
    return ode.probability_flow_ode(score, x, sigma_max=sigma_max, sigma_min=sigma_min, rtol=settings["rtol"],
                                    atol=settings["atol"], method=settings["method"], denoise=settings["denoise"],
                                    callback=callback, cond=cond)


def _pc_levels(model: Any, s: Mapping[str, Any]) -> Tensor:
    """The levels ``sample_predictor_corrector`` runs over (its ``n_steps`` rule)."""
    sigma_max, sigma_min = sigma_range(model, s["sigma_max"], s["sigma_min"], sampler="pc", allow_single_level=True)
    n_steps = s["n_steps"]
    if n_steps is None and sigma_max == float(model.sigmas[0]) and sigma_min == float(model.sigmas[-1]):
        return model.sigmas.detach().cpu().double()
    if sigma_max == sigma_min:
        return torch.full((int(n_steps or 1),), sigma_max, dtype=torch.float64)
    return geometric_sigmas(sigma_max, sigma_min, int(n_steps or len(model.sigmas)))


def _pc_chain(score, x, *, model, settings, generator, callback, cond, noise=None) -> Tensor:
    return pc.predictor_corrector(score, x, _pc_levels(model, settings), snr=settings["snr"],
                                  n_corrector_steps=settings["n_corrector_steps"],
                                  corrector_norm=settings["corrector_norm"], denoise=settings["denoise"],
                                  generator=generator, callback=callback, cond=cond)


def _pc_inpaint(score, x, known, mask, *, model, settings, resample, generator, callback, cond) -> Tensor:
    """PC with imputation in predictor and corrector and RePaint resampling (``inpainting.inpaint_pc``)."""
    return inpainting.inpaint_pc(score, x, known, mask, _pc_levels(model, settings).to(x.device, x.dtype),
                                 resample=resample, snr=settings["snr"],
                                 n_corrector_steps=settings["n_corrector_steps"],
                                 corrector_norm=settings["corrector_norm"], denoise=settings["denoise"],
                                 generator=generator, callback=callback, cond=cond)


def _uniform_center(s: Mapping[str, Any]) -> float:
    return 0.5 * (s["init_low"] + s["init_high"]) if s["init"] == "uniform" else 0.0


_EDM = {"n_steps": at_least(1), "rho": positive, **_SIGMA_RANGE}
_ODE_METHODS = ("dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8")

register(SamplerEntry(
    "annealed_langevin", langevin.sample_annealed_langevin,
    checks={"n_steps_each": at_least(1), "step_lr": positive, "denoise": boolean,
            "init": one_of("uniform", "gaussian")},
    initial_state=_langevin_start, center=_uniform_center, chain=_langevin_chain, noise_hook=True))
register(SamplerEntry(
    "temperature_langevin", temperature.sample_temperature_langevin,
    checks={"n_steps_hot": at_least(0), "n_steps_anneal": at_least(0), "n_steps_cool": at_least(0),
            "temp_hot": lambda v: None if _number(v) and v >= 1 else "must be at least 1 (the schedule anneals to 1)",
            "step_size": positive, "denoise": boolean, "init_std": non_negative, "sigma0": optional(positive)},
    initial_state=_temperature_start, center=lambda s: s["init_mean"], chain=_temperature_chain, noise_hook=True,
    known_noise_levels=_temperature_levels))
register(SamplerEntry(
    "heun", edm.sample_heun, checks=_EDM, initial_state=_prior_start("heun", single_level=False),
    chain=_karras_chain("heun", edm.edm_sampler), inpaint=_karras_inpaint("heun")))
register(SamplerEntry(
    "edm_stochastic", edm.sample_edm_stochastic,
    checks={**_EDM, "s_churn": non_negative, "s_tmin": non_negative, "s_tmax": non_negative, "s_noise": non_negative},
    initial_state=_prior_start("edm_stochastic", single_level=True),
    chain=_karras_chain("edm_stochastic", edm.edm_sampler, "s_churn", "s_tmin", "s_tmax", "s_noise",
                        single_level=True),
    inpaint=_karras_inpaint("edm_stochastic", "s_churn", "s_tmin", "s_tmax", "s_noise", single_level=True)))
register(SamplerEntry(
    "pc", pc.sample_predictor_corrector,
    checks={"n_steps": optional(at_least(1)), "snr": positive, "n_corrector_steps": at_least(0),
            "corrector_norm": one_of(*pc.CORRECTOR_NORMS), "denoise": boolean, **_SIGMA_RANGE},
    initial_state=_prior_start("pc", single_level=True), chain=_pc_chain, inpaint=_pc_inpaint))
register(SamplerEntry(
    "ode", ode.sample_probability_flow_ode,
    checks={"rtol": positive, "atol": positive, "method": one_of(*_ODE_METHODS), "denoise": boolean, **_SIGMA_RANGE},
    initial_state=_prior_start("ode", single_level=False), chain=_ode_chain))
register(SamplerEntry(
    "dpm_solver_2m", fast.sample_dpm_solver_2m, checks=_EDM,
    initial_state=_prior_start("dpm_solver_2m", single_level=False),
    chain=_karras_chain("dpm_solver_2m", fast.dpm_solver_2m)))
register(SamplerEntry(
    "euler_ancestral", fast.sample_euler_ancestral, checks={**_EDM, "eta": non_negative, "s_noise": non_negative},
    initial_state=_prior_start("euler_ancestral", single_level=False),
    chain=_karras_chain("euler_ancestral", fast.euler_ancestral, "eta", "s_noise")))
register(SamplerEntry("generator", temperature.sample_generator, one_pass=True))


__all__ = ["Check", "Sampler", "SamplerEntry", "at_least", "boolean", "build_sampler", "entry", "non_negative",
           "one_of", "optional", "positive", "register", "sampler_config", "sampler_names"]
