"""Post-hoc EMA (Karras et al. 2024, EDM2, Sec. 3 and App. C): choose the EMA length after training.

During training a :class:`PowerEMA` keeps power-function averages of the weights and exports *snapshots* of them
every ``snapshot_every`` steps; after training :func:`reconstruct` combines the snapshots into the average of any
other EMA length by a least-squares fit of averaging profiles (App. C.3).

The maths (EDM2 Eq. 3 and App. C.1). A power-function EMA of exponent γ > -1 after t steps averages the weights
θ(τ), τ ∈ [0, t], with the profile p_t(τ) = (γ+1) τ^γ / t^(γ+1); its *relative standard deviation* (the width of
the profile over t) is σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))), independent of t. It is kept online by
``ema ← β_t ema + (1 − β_t) θ_t`` with β_t = (1 − 1/t)^(γ+1). Unrolling the recursion gives θ_i the weight
w_i = (i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1) = ∫_{i−1}^{i} p_t(τ) dτ: the average is *exactly* ∫ p_t(τ) θ(τ) dτ for the
piecewise-constant trajectory θ(τ) = θ_i on (i−1, i]. Every snapshot is therefore a known linear functional of the
one trajectory, and any target profile that is a combination Σ x_k p_k of the snapshots' profiles has its average
equal to Σ x_k snapshot_k; the x minimising ‖Σ x_k p_k − p_target‖₂ solve the normal equations A x = b with
A_jk = ⟨p_j, p_k⟩ and b_k = ⟨p_k, p_target⟩, in closed form (App. C.3).

Snapshot format (a plain dict, saved by :func:`save_snapshot` with ``torch.save``, read back with
``weights_only=True``): ``{"weights": {name: Tensor}, "gamma": float, "sigma_rel": float, "step": int}``; the weights
have the keys of the model's ``state_dict()`` (floating entries averaged, others copied from the current model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dae_gen.distributed import is_main_process
from dae_gen.errors import CheckpointError, ConfigError

__all__ = ["sigma_rel_to_gamma", "gamma_to_sigma_rel", "PowerEMA", "profile_inner", "reconstruction_coefficients",
           "profile_error", "reconstruct", "save_snapshot", "load_snapshots", "posthoc_weights", "PostHocEMAHook",
           "SIGMA_REL_MAX"]

# σ_rel(γ) rises from 0 at γ = −1 to a maximum, then falls to 0; the EMA lengths EDM2 uses (0.01–0.3) lie on the
# falling branch, where larger γ means a shorter average. d/dγ log σ_rel² = 0 ⇔ γ² + 3γ + 1 = 0.
_GAMMA_AT_MAX = (math.sqrt(5.0) - 3.0) / 2.0
SIGMA_REL_MAX = math.sqrt((_GAMMA_AT_MAX + 1) / ((_GAMMA_AT_MAX + 2) ** 2 * (_GAMMA_AT_MAX + 3)))


# -- the power-function profile (EDM2 Eq. 3, App. C.1) --------------------------------------------------
def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))) (EDM2 Eq. 3), for γ > −1."""
    gamma = float(gamma)
    if not gamma > -1.0:
        raise ConfigError(f"power EMA exponent gamma: must be > -1, got {gamma}")
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """γ for a relative EMA length: the largest real root of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²) (EDM2 App. C.1)."""
    sigma_rel = float(sigma_rel)
    if not 0.0 < sigma_rel < SIGMA_REL_MAX:
        raise ConfigError(f"EMA length sigma_rel: must be in (0, {SIGMA_REL_MAX:.4f}) (the widest power-function "
                          f"profile), got {sigma_rel}; EDM2 uses 0.01-0.3")
    t = sigma_rel ** -2  # (γ+2)²(γ+3) σ² = γ+1 expanded: γ³ + 7γ² + 16γ + 12 = (γ+1)/σ²
    # one root lies below −3 (the cubic minus (γ+1)/σ² is positive at −3, −2, −1), the other two in (−1, ∞), merging
    # at σ_rel = SIGMA_REL_MAX; the largest is on the falling branch (near the maximum its tiny imaginary part is noise)
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def _beta(step: int, gamma: float) -> float:
    """β_t = (1 − 1/t)^(γ+1) (EDM2 App. C.1); β_1 = 0, so the first update copies the weights."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


# -- the tracker ----------------------------------------------------------------------------------------
class PowerEMA:
    """Power-function EMAs (EDM2 App. C.1) of a model's floating ``state_dict`` entries, one per σ_rel.

    sigma_rels:      the relative EMA lengths kept (EDM2: 0.05 and 0.10; any length in between or around is
                     reconstructed from their snapshots).
    snapshot_every:  export a snapshot of every profile every this many steps (None: never; :meth:`snapshots`
                     exports one any time).

    ``update(model, step=t)`` takes t = the number of training steps completed, counting this one (1 for the first).
    """

    def __init__(self, model: nn.Module, *, sigma_rels: Sequence[float] = (0.05, 0.10),
                 snapshot_every: int | None = None):
        sigma_rels = [float(s) for s in sigma_rels]
        if not sigma_rels:
            raise ConfigError("posthoc_ema.sigma_rels: expected at least one EMA length, got []")
        if snapshot_every is not None and (isinstance(snapshot_every, bool) or int(snapshot_every) != snapshot_every
                                           or snapshot_every < 1):
            raise ConfigError(f"posthoc_ema.snapshot_every: must be a positive integer or null, got {snapshot_every!r}")
        self.sigma_rels = sigma_rels
        self.gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
        self.snapshot_every = None if snapshot_every is None else int(snapshot_every)
        self.step = 0
        # one {name: Tensor} per profile, same keys/dtypes/devices as model.state_dict(), detached copies
        self.averages = [{k: v.detach().clone() for k, v in model.state_dict().items()} for _ in sigma_rels]

    @torch.no_grad()
    def update(self, model: nn.Module, *, step: int) -> list[dict[str, Any]]:
        """ema ← β_t ema + (1 − β_t) θ_t for each profile; returns the snapshots due at step t (often [])."""
        step = int(step)
        if step <= self.step:
            raise ValueError(f"PowerEMA.update: steps must increase (the number of steps completed, 1 for the "
                             f"first); got step {step} after step {self.step}")
        state = model.state_dict()
        for average, gamma in zip(self.averages, self.gammas):
            weight = 1.0 - _beta(step, gamma)  # a step skipped by the caller keeps its predecessor's weight
            for name, value in state.items():
                if value.is_floating_point():
                    average[name].lerp_(value.detach(), weight)
                else:
                    average[name].copy_(value)
        self.step = step
        if self.snapshot_every is not None and step % self.snapshot_every == 0:
            return self.snapshots()
        return []

    def snapshots(self) -> list[dict[str, Any]]:
        """One snapshot per profile, of the averages now: {"weights", "gamma", "sigma_rel", "step"} (copied)."""
        return [{"weights": {k: v.detach().clone() for k, v in average.items()}, "gamma": gamma,
                 "sigma_rel": sigma_rel, "step": self.step}
                for average, gamma, sigma_rel in zip(self.averages, self.gammas, self.sigma_rels)]

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, lists and tensors only (loadable with ``torch.load(weights_only=True)``)."""
        return {"sigma_rels": list(self.sigma_rels), "snapshot_every": self.snapshot_every, "step": self.step,
                "averages": [dict(average) for average in self.averages]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the EMA lengths must be the ones this tracker was built with."""
        saved = [float(s) for s in state["sigma_rels"]]
        if len(saved) != len(self.sigma_rels) or not np.allclose(saved, self.sigma_rels, rtol=0, atol=1e-12):
            raise ConfigError(f"posthoc_ema.sigma_rels: the checkpoint's averages are for {saved}, the config asks "
                              f"for {self.sigma_rels}; keep the run's lengths (any other is reconstructed after "
                              f"training) or start a new run")
        for average, saved_average in zip(self.averages, state["averages"]):
            if set(saved_average) != set(average):
                raise CheckpointError(f"post-hoc EMA state: expected the entries {sorted(average)[:4]}..., found "
                                      f"{sorted(saved_average)[:4]}...; the checkpoint is from another model")
            for name, value in saved_average.items():
                average[name].copy_(value)
        self.step = int(state["step"])


# -- least-squares reconstruction (EDM2 App. C.3) --------------------------------------------------------
def profile_inner(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """⟨p_a, p_b⟩ = (γa+1)(γb+1) min(ta,tb)^(γa+γb+1) / ((γa+γb+1) ta^(γa+1) tb^(γb+1)) (EDM2 App. C.3)."""
    # written with the ratio r = min/max ≤ 1 so large exponents cannot overflow: min^(γa+γb+1)/(ta^(γa+1) tb^(γb+1))
    # = r^(γ of the longer profile) / max(ta, tb)
    t_min, t_max = min(t_a, t_b), max(t_a, t_b)
    gamma_long = gamma_b if t_a <= t_b else gamma_a
    return ((gamma_a + 1.0) * (gamma_b + 1.0) * (t_min / t_max) ** gamma_long
            / ((gamma_a + gamma_b + 1.0) * t_max))


def _gram(snapshots: Sequence[tuple[float, float]], target: tuple[float, float]
          ) -> tuple[np.ndarray, np.ndarray, float]:
    """A (K, K) = ⟨p_j, p_k⟩, b (K,) = ⟨p_k, p_target⟩ and ⟨p_target, p_target⟩, for (t, γ) pairs, in float64."""
    A = np.array([[profile_inner(tj, gj, tk, gk) for tk, gk in snapshots] for tj, gj in snapshots])
    b = np.array([profile_inner(tk, gk, *target) for tk, gk in snapshots])
    return A, b, profile_inner(*target, *target)


def _profiles(snapshots: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """(t, γ) of each snapshot, checked: t ≥ 1, γ > −1 and the same weight entries in all."""
    keys = set(snapshots[0]["weights"])
    for s in snapshots:
        if not (float(s["step"]) >= 1 and float(s["gamma"]) > -1):
            raise CheckpointError(f"post-hoc EMA snapshot: expected step >= 1 and gamma > -1, found step "
                                  f"{s['step']} and gamma {s['gamma']}; re-export it from a PowerEMA")
        if set(s["weights"]) != keys:
            raise CheckpointError(f"post-hoc EMA snapshots: the step-{s['step']} snapshot has other weight entries "
                                  f"than the first; keep only one run's snapshots in the folder")
    return [(float(s["step"]), float(s["gamma"])) for s in snapshots]


def _solve(snapshots: Sequence[Mapping[str, Any]], sigma_rel: float, step: int | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """x, A, b, ⟨p_target, p_target⟩ for the target (t = ``step`` or the latest snapshot's, γ of ``sigma_rel``)."""
    if not snapshots:
        raise ConfigError("post-hoc EMA: no snapshots to reconstruct from; train with posthoc_ema.snapshot_every set")
    profiles = _profiles(snapshots)
    target = (float(step) if step is not None else max(t for t, _ in profiles), sigma_rel_to_gamma(sigma_rel))
    A, b, c = _gram(profiles, target)
    x = np.linalg.lstsq(A, b, rcond=None)[0]  # lstsq, not solve: duplicated snapshots make A singular
    return x, A, b, c


def reconstruction_coefficients(snapshots: Sequence[Mapping[str, Any]], sigma_rel: float, *,
                                step: int | None = None) -> np.ndarray:
    """x (K,) minimising ‖Σ_k x_k p_k − p_target‖₂: least-squares solution of A x = b (EDM2 App. C.3).

    step: the target profile's t (default: the latest snapshot's step, i.e. the end of training).
    """
    return _solve(snapshots, sigma_rel, step)[0]


def profile_error(snapshots: Sequence[Mapping[str, Any]], sigma_rel: float, *, step: int | None = None) -> float:
    """Relative L2 error ‖Σ x_k p_k − p_target‖ / ‖p_target‖ of the reconstruction (0 = the target is matched)."""
    x, A, b, c = _solve(snapshots, sigma_rel, step)
    residual_sq = float(x @ A @ x - 2.0 * x @ b + c)  # ‖Σ x p − p_r‖² expanded in inner products
    return math.sqrt(max(residual_sq, 0.0) / c)


@torch.no_grad()
def reconstruct(snapshots: Sequence[Mapping[str, Any]], sigma_rel: float, *,
                step: int | None = None) -> dict[str, Tensor]:
    """The weights of a power EMA of length ``sigma_rel`` at ``step`` (default: the last snapshot's): Σ_k x_k θ̂_k.

    Floating entries are combined in float64 and cast back; other entries come from the latest snapshot.
    """
    x = reconstruction_coefficients(snapshots, sigma_rel, step=step)
    latest = max(snapshots, key=lambda s: int(s["step"]))["weights"]
    out: dict[str, Tensor] = {}
    for name, value in latest.items():
        if value.is_floating_point():  # Σ_k x_k W_k, each W_k of the entry's shape
            total = sum(float(xk) * s["weights"][name].double() for xk, s in zip(x, snapshots))
            out[name] = total.to(value.dtype)
        else:
            out[name] = value.clone()
    return out


# -- files and the CLI entry point ------------------------------------------------------------------------
def save_snapshot(snapshot: Mapping[str, Any], directory: str | Path) -> Path:
    """Write one snapshot as ``<directory>/ema-<step:09d>-<sigma_rel:.3f>.pt`` (atomic rename); returns the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ema-{int(snapshot['step']):09d}-{float(snapshot['sigma_rel']):.3f}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"weights": dict(snapshot["weights"]), "gamma": float(snapshot["gamma"]),
                "sigma_rel": float(snapshot["sigma_rel"]), "step": int(snapshot["step"])}, tmp)
    tmp.replace(path)
    return path


def load_snapshots(sources: str | Path | Iterable[str | Path | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Snapshots from a folder of ``ema-*.pt``, a list of files, or dicts (passed through); weights_only loading."""
    if isinstance(sources, (str, Path)):
        folder = Path(sources)
        if not folder.is_dir():
            raise CheckpointError(f"post-hoc EMA: expected a folder of ema-*.pt snapshots, found no folder {folder}")
        sources = sorted(folder.glob("ema-*.pt"))
        if not sources:
            raise CheckpointError(f"post-hoc EMA: no ema-*.pt snapshots in {folder}; train with "
                                  f"trainer.posthoc_ema.snapshot_every set")
    snapshots = []
    for source in sources:
        if isinstance(source, Mapping):
            snapshots.append(dict(source))
            continue
        try:
            snapshot = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise CheckpointError(f"post-hoc EMA snapshot {source}: unreadable ({type(error).__name__}: {error}); "
                                  f"delete it or re-export it") from None
        missing = {"weights", "gamma", "sigma_rel", "step"} - set(snapshot) if isinstance(snapshot, dict) else {"all"}
        if missing:
            raise CheckpointError(f"post-hoc EMA snapshot {source}: expected the keys weights, gamma, sigma_rel, "
                                  f"step; missing {sorted(missing)}")
        snapshots.append(snapshot)
    return snapshots


def posthoc_weights(snapshot_files_or_dicts: str | Path | Iterable[str | Path | Mapping[str, Any]],
                    ema_length: float, *, step: int | None = None,
                    max_profile_error: float | None = None) -> dict[str, Tensor]:
    """The state dict of EMA length ``ema_length`` (σ_rel) from a run's snapshots (a folder, files or dicts).

    max_profile_error: refuse (ConfigError) when the snapshots cannot match the target profile this well.
    """
    snapshots = load_snapshots(snapshot_files_or_dicts)
    if max_profile_error is not None:
        error = profile_error(snapshots, ema_length, step=step)
        if error > max_profile_error:
            lengths = sorted({round(float(s["sigma_rel"]), 4) for s in snapshots})
            raise ConfigError(f"ema_length: {ema_length} is reconstructed with profile error {error:.3g} > "
                              f"{max_profile_error} from snapshots of lengths {lengths}; choose a length nearer "
                              f"those, or train with more snapshots")
    return reconstruct(snapshots, ema_length, step=step)


# -- the training hook ------------------------------------------------------------------------------------
class PostHocEMAHook:
    """Keeps a :class:`PowerEMA` of ``trainer.objective`` and writes its snapshots to ``<run_dir>/posthoc_ema``.

    Call ``on_step_end(trainer, logs)`` after the step counter has advanced (``trainer.step`` = steps completed);
    it reads only ``trainer.objective``, ``trainer.step``, ``trainer.run_dir`` and ``logs["skipped_steps"]``. A skipped
    step (non-finite loss) is not averaged, as the trainer's own EMA; rank 0 writes the snapshots.
    ``state_dict``/``load_state_dict`` are for the checkpoint (plain tensors and numbers).
    """

    def __init__(self, *, sigma_rels: Sequence[float] = (0.05, 0.10), snapshot_every: int | None = None,
                 folder: str = "posthoc_ema"):
        self.sigma_rels = list(sigma_rels)
        self.snapshot_every = snapshot_every
        self.folder = folder
        self.tracker: PowerEMA | None = None
        self._pending_state: Mapping[str, Any] | None = None
        self._last_skipped = 0

    def _tracker(self, trainer: Any) -> PowerEMA:
        if self.tracker is None:
            self.tracker = PowerEMA(trainer.objective, sigma_rels=self.sigma_rels, snapshot_every=self.snapshot_every)
            if self._pending_state is not None:
                self.tracker.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.tracker

    def on_step_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        """Average the weights after a completed step, and save the snapshots that are due."""
        tracker = self._tracker(trainer)
        skipped = int(logs.get("skipped_steps", 0))
        was_skipped, self._last_skipped = skipped > self._last_skipped, skipped
        if was_skipped:
            return
        snapshots = tracker.update(trainer.objective, step=int(trainer.step))
        if is_main_process():  # the weights are the same on every rank
            for snapshot in snapshots:
                save_snapshot(snapshot, Path(trainer.run_dir) / self.folder)

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state (plain tensors and numbers)."""
        if self.tracker is None:
            return dict(self._pending_state) if self._pending_state is not None else {}
        return {**self.tracker.state_dict(), "last_skipped": self._last_skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore on the first step (the tracker is built from the trainer's model then)."""
        if state:
            self._last_skipped = int(state.get("last_skipped", 0))
            self._pending_state = state
