"""Post-hoc EMA: the power-function profile, the tracker against the exact weights, the least-squares reconstruction."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dae_gen.errors import CheckpointError, ConfigError
from dae_gen.posthoc_ema import (
    SIGMA_REL_MAX,
    PostHocEMAHook,
    PowerEMA,
    gamma_to_sigma_rel,
    load_snapshots,
    posthoc_weights,
    profile_error,
    reconstruct,
    reconstruction_coefficients,
    save_snapshot,
    sigma_rel_to_gamma,
)


class Tiny(nn.Module):
    """A float64 parameter vector, a floating buffer and an integer buffer (as BatchNorm's counter)."""

    def __init__(self, dim: int = 6):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("scale", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def set(self, i: int, total: int) -> None:
        """θ_i a smooth known function of s = i/total (every component different)."""
        s = i / total
        with torch.no_grad():
            self.theta.copy_(torch.tensor([math.sin(3 * s), math.cos(7 * s), s ** 2, math.exp(-2 * s),
                                           math.sin(11 * s) * s, 1.0 / (1.0 + 5 * s)], dtype=torch.float64))
            self.scale.copy_(torch.tensor([s, 1 - s ** 3], dtype=torch.float64))
            self.count.fill_(i)


def exact_power_ema(trajectory: list[torch.Tensor], gamma: float) -> torch.Tensor:
    """Σ_i w_i θ_i with w_i = ∫_{i-1}^{i} (γ+1) τ^γ / t^(γ+1) dτ = (i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1)."""
    t = len(trajectory)
    i = np.arange(1, t + 1, dtype=np.float64)
    w = (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / t ** (gamma + 1)
    return sum(float(wi) * th for wi, th in zip(w, trajectory))


def train(tracker: PowerEMA | None, model: Tiny, steps: range, total: int, snapshots: list | None = None):
    """Drive the model along its trajectory, updating the tracker after each step t (1-based)."""
    for t in steps:
        model.set(t, total)
        if tracker is not None:
            out = tracker.update(model, step=t)
            if snapshots is not None:
                snapshots.extend(out)


def test_sigma_rel_gamma_round_trip_and_edm2_values():
    for sigma_rel in [0.01, 0.05, 0.075, 0.10, 0.2, 0.29]:
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)
    for gamma in [0.0, 1.0, 6.94, 16.97, 100.0]:
        assert sigma_rel_to_gamma(gamma_to_sigma_rel(gamma)) == pytest.approx(gamma, rel=1e-9)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's two stored profiles
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    # σ_rel is the profile's std over t: (γ+1) ∫_0^1 τ^γ (τ − m)² dτ with mean m = (γ+1)/(γ+2), by quadrature
    gamma = 3.5
    tau = np.linspace(0.0, 1.0, 200001)
    p = (gamma + 1) * tau ** gamma
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz
    m = trapezoid(p * tau, tau)
    var = trapezoid(p * (tau - m) ** 2, tau)
    assert math.sqrt(var) == pytest.approx(gamma_to_sigma_rel(gamma), rel=1e-6)
    assert gamma_to_sigma_rel((math.sqrt(5) - 3) / 2) == pytest.approx(SIGMA_REL_MAX)
    near_max = SIGMA_REL_MAX * (1 - 1e-9)  # the two branches merge: γ tends to the maximiser
    assert sigma_rel_to_gamma(near_max) == pytest.approx((math.sqrt(5) - 3) / 2, abs=1e-3)
    for bad in [0.0, -0.1, 0.31]:
        with pytest.raises(ConfigError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)


def test_tracker_equals_exact_power_function_ema():
    total = 300
    model = Tiny()
    tracker = PowerEMA(model, sigma_rels=(0.05, 0.10, 0.2))
    thetas, scales = [], []
    for t in range(1, total + 1):
        model.set(t, total)
        thetas.append(model.theta.detach().clone())
        scales.append(model.scale.detach().clone())
        tracker.update(model, step=t)
    for average, gamma in zip(tracker.averages, tracker.gammas):
        torch.testing.assert_close(average["theta"], exact_power_ema(thetas, gamma), rtol=0, atol=1e-12)
        torch.testing.assert_close(average["scale"], exact_power_ema(scales, gamma), rtol=0, atol=1e-12)
        assert int(average["count"]) == total  # integer buffers follow the model
    with pytest.raises(ValueError, match="steps must increase"):
        tracker.update(model, step=total)


def test_reconstructing_a_stored_profile_returns_its_snapshot():
    total = 400
    model, snapshots = Tiny(), []
    tracker = PowerEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=100)
    train(tracker, model, range(1, total + 1), total, snapshots)
    assert [(s["step"], s["sigma_rel"]) for s in snapshots] == [(t, r) for t in (100, 200, 300, 400)
                                                                 for r in (0.05, 0.10)]
    for snap in snapshots:
        x = reconstruction_coefficients(snapshots, snap["sigma_rel"], step=snap["step"])
        expected = np.array([1.0 if s is snap else 0.0 for s in snapshots])
        np.testing.assert_allclose(x, expected, atol=1e-8)
        weights = reconstruct(snapshots, snap["sigma_rel"], step=snap["step"])
        torch.testing.assert_close(weights["theta"], snap["weights"]["theta"], rtol=0, atol=1e-9)
        assert profile_error(snapshots, snap["sigma_rel"], step=snap["step"]) < 1e-6


@pytest.mark.parametrize("target", [0.07, 0.15])
def test_reconstruction_matches_direct_ema_and_improves_with_more_snapshots(target):
    """σ_rel = 0.07 between the stored 0.05/0.10, and 0.15 beyond them, at the end of training."""
    total = 2000
    model = Tiny()
    trackers = {every: PowerEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=every) for every in (500, 100, 20)}
    direct = PowerEMA(model, sigma_rels=(target,))
    snapshots = {every: [] for every in trackers}
    for t in range(1, total + 1):
        model.set(t, total)
        for every, tracker in trackers.items():
            snapshots[every].extend(tracker.update(model, step=t))
        direct.update(model, step=t)
    truth = direct.averages[0]["theta"]
    errors, profile_errors = {}, {}
    for every, snaps in snapshots.items():
        weights = reconstruct(snaps, target)
        errors[every] = float((weights["theta"] - truth).abs().max())
        profile_errors[every] = profile_error(snaps, target)
    # measured max |Δθ| (θ components are O(1)) with 4 / 20 / 100 snapshots per length:
    # 0.07: 1.4e-2, 3.4e-5, 5.5e-8 (profile errors 3.4e-2, 2.5e-3, 1.0e-4);
    # 0.15: 3.4e-2, 1.8e-4, 3.4e-7 (profile errors 9.9e-2, 5.8e-3, 2.4e-4)
    assert errors[100] < 1e-3
    assert errors[20] < 1e-6
    assert errors[20] < errors[100] < errors[500]
    assert profile_errors[20] < profile_errors[100] < profile_errors[500]
    # the two stored end-of-training averages alone are a worse fit than the same lengths' history
    ends = [s for s in snapshots[500] if s["step"] == total]
    assert profile_error(ends, target) > profile_errors[500]


def test_state_dict_round_trip_through_weights_only_load(tmp_path):
    total = 120
    model = Tiny()
    continuous = PowerEMA(model, sigma_rels=(0.05, 0.10))
    train(continuous, model, range(1, total + 1), total)

    model = Tiny()
    first = PowerEMA(model, sigma_rels=(0.05, 0.10))
    train(first, model, range(1, 61), total)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = PowerEMA(Tiny(), sigma_rels=(0.05, 0.10))
    resumed.load_state_dict(state)
    assert resumed.step == 60
    train(resumed, model, range(61, total + 1), total)
    for a, b in zip(continuous.averages, resumed.averages):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="sigma_rels"):
        PowerEMA(Tiny(), sigma_rels=(0.05, 0.2)).load_state_dict(state)
    with pytest.raises(ConfigError, match="sigma_rels"):
        PowerEMA(Tiny(), sigma_rels=(0.05,)).load_state_dict(state)


def test_snapshot_files_and_posthoc_weights(tmp_path):
    total = 600
    model, snapshots = Tiny(), []
    tracker = PowerEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=50)
    train(tracker, model, range(1, total + 1), total, snapshots)
    paths = [save_snapshot(s, tmp_path / "posthoc_ema") for s in snapshots]
    assert paths[-1].name == "ema-000000600-0.100.pt"
    loaded = torch.load(paths[-1], weights_only=True)
    assert set(loaded) == {"weights", "gamma", "sigma_rel", "step"} and loaded["step"] == total
    from_folder = posthoc_weights(tmp_path / "posthoc_ema", 0.08)
    from_dicts = posthoc_weights(snapshots, 0.08)
    from_files = posthoc_weights([str(p) for p in paths], 0.08)
    for name in from_dicts:
        torch.testing.assert_close(from_folder[name], from_dicts[name], rtol=0, atol=0)
        torch.testing.assert_close(from_files[name], from_dicts[name], rtol=0, atol=0)
    model.load_state_dict(from_folder)  # the same keys as the model's state dict
    assert int(from_folder["count"]) == total
    torch.testing.assert_close(posthoc_weights(snapshots, 0.10)["theta"], snapshots[-1]["weights"]["theta"],
                               rtol=0, atol=1e-9)
    with pytest.raises(ConfigError, match="profile error"):
        posthoc_weights(snapshots[-2:], 0.25, max_profile_error=1e-3)
    with pytest.raises(CheckpointError, match="no ema-"):
        load_snapshots(tmp_path)
    other = dict(snapshots[0], weights={"other": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="other weight entries"):
        posthoc_weights([snapshots[0], other], 0.08)
    (tmp_path / "posthoc_ema" / "ema-000000700-0.050.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        posthoc_weights(tmp_path / "posthoc_ema", 0.08)


def test_hook_averages_completed_steps_and_writes_snapshots(tmp_path):
    total = 40
    model = Tiny()
    trainer = SimpleNamespace(objective=model, step=0, run_dir=tmp_path)
    hook = PostHocEMAHook(sigma_rels=(0.05, 0.10), snapshot_every=10)
    reference = PowerEMA(Tiny(), sigma_rels=(0.05, 0.10))
    for t in range(1, total + 1):
        model.set(t, total)
        trainer.step = t
        hook.on_step_end(trainer, {"skipped_steps": 0})
        reference.update(model, step=t)
    assert sorted(p.name for p in (tmp_path / "posthoc_ema").iterdir()) == [
        f"ema-{t:09d}-{r:.3f}.pt" for t in (10, 20, 30, 40) for r in (0.05, 0.10)]
    for a, b in zip(hook.tracker.averages, reference.averages):
        torch.testing.assert_close(a["theta"], b["theta"], rtol=0, atol=0)
    state = hook.state_dict()
    trainer.step += 1
    hook.on_step_end(trainer, {"skipped_steps": 1})  # a skipped step is not averaged
    assert hook.tracker.step == total
    fresh = PostHocEMAHook(sigma_rels=(0.05, 0.10), snapshot_every=10)
    fresh.load_state_dict(state)
    trainer.step += 1
    fresh.on_step_end(trainer, {"skipped_steps": 0})
    assert fresh.tracker.step == total + 2


def test_hook_on_the_real_trainer_averages_its_weights_exactly(tmp_path):
    """Driven by Trainer.train_step: the hook's averages are the exact power EMAs of the weights after each step."""
    from functools import partial

    from dae_gen.data.toy import two_moons
    from dae_gen.nets.mlp import ScoreMLP
    from dae_gen.noise import geometric_sigmas
    from dae_gen.objectives.dsm import DenoisingScoreMatching
    from dae_gen.trainer import Trainer

    torch.manual_seed(0)
    objective = DenoisingScoreMatching(net=partial(ScoreMLP, hidden=16, depth=2), data_shape=(2,),
                                       sigmas=geometric_sigmas(1.0, 0.05, 5))
    trainer = Trainer(objective=objective, data=two_moons(), run_dir=tmp_path, steps=30, batch_size=16,
                      optimizer=partial(torch.optim.Adam, lr=1e-2), seed=1)
    hook = PostHocEMAHook(sigma_rels=(0.05, 0.10), snapshot_every=10)
    trajectory = []
    for _ in range(30):
        logs = trainer.train_step()
        hook.on_step_end(trainer, logs)
        trajectory.append({k: v.detach().clone().double() for k, v in trainer.objective.state_dict().items()})
    assert hook.tracker.step == trainer.step == 30
    name = next(k for k, v in trajectory[0].items() if v.is_floating_point() and v.numel() > 1)
    for average, gamma in zip(hook.tracker.averages, hook.tracker.gammas):
        exact = exact_power_ema([state[name] for state in trajectory], gamma)
        torch.testing.assert_close(average[name].double(), exact, rtol=1e-5, atol=1e-6)  # fp32 running average
    snapshots = load_snapshots(tmp_path / "posthoc_ema")
    assert sorted((s["step"], s["sigma_rel"]) for s in snapshots) == [(t, r) for t in (10, 20, 30) for r in (0.05, 0.1)]
    trainer.objective.load_state_dict(posthoc_weights(tmp_path / "posthoc_ema", 0.07))  # loads into the model
