"""The one trainer: resume determinism, clipping, EMA, skipped non-finite steps, checkpoint safety."""

import json
import math
import os
import pickle
import signal
from functools import partial
from pathlib import Path

import pytest
import torch

from conftest import hooked_trainer
from dae_gen.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, step_checkpoints
from dae_gen.data.toy import two_moons
from dae_gen.errors import TrainingInterrupted
from dae_gen.nets.mlp import ScoreMLP
from dae_gen.noise import geometric_sigmas
from dae_gen.objectives.base import Objective
from dae_gen.objectives.dsm import DenoisingScoreMatching
from dae_gen.train_hooks import Hook
from dae_gen.trainer import EMA, TrainingDiverged, clip_gradients, cosine_schedule, warmup_schedule


def make_trainer(run_dir, *, steps, ckpt_every=5, objective=None, **kwargs):
    torch.manual_seed(123)  # the net's initial weights; the trainer then seeds its own RNG
    objective = objective or DenoisingScoreMatching(net=partial(ScoreMLP, hidden=32, depth=2), data_shape=(2,),
                                                    sigmas=geometric_sigmas(1.0, 0.05, 5))
    return hooked_trainer(objective=objective, data=two_moons(), run_dir=run_dir, steps=steps, batch_size=16,
                          optimizer=partial(torch.optim.Adam, lr=1e-3),
                          lr_schedule=partial(cosine_schedule, final_lr=1e-5), log_every=1, ckpt_every=ckpt_every,
                          sample_every=0, progress=False, tensorboard=False, seed=7, **kwargs)


def losses_of(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss/model"] for row in rows}


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path / "a", steps=20)
    straight.fit()
    # interrupted: a run that stops after 10 steps (its last checkpoint), then the same command again
    first = make_trainer(tmp_path / "b", steps=20)
    first.steps = 10  # simulate a run killed right after its step-10 checkpoint
    first.fit()
    resumed = make_trainer(tmp_path / "b", steps=20)
    result = resumed.fit()
    assert result["resumed"] == 1.0 and resumed.step == 20
    a, b = losses_of(tmp_path / "a"), losses_of(tmp_path / "b")
    assert sorted(b) == list(range(1, 21))
    for step in range(1, 21):
        assert a[step] == b[step], (step, a[step], b[step])
    for p, q in zip(straight.objective.parameters(), resumed.objective.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_holds_named_state_and_loads_safely(tmp_path):
    trainer = make_trainer(tmp_path, steps=5)
    trainer.fit()
    state = load_checkpoint(tmp_path)
    assert state["step"] == 5
    assert set(state) >= {"model", "ema", "optimizers", "schedulers", "rng", "config"}
    assert set(state["optimizers"]) == {"model"}
    assert any(key.startswith("net.") for key in state["model"])


def test_missing_and_corrupt_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    good = save_checkpoint({"step": 1, "model": {}, "ema": {}, "config": {}}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a dae_gen checkpoint"):
        load_checkpoint(foreign)


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_hostile_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    hostile = tmp_path / "hostile.pt"
    with open(hostile, "wb") as f:  # a torch.save-style file whose pickle runs os.system on load
        torch.save({"format": "dae_gen.checkpoint/1", "step": 0, "model": {}, "ema": {}, "config": {},
                    "evil": payload}, f)
    with pytest.raises(CheckpointError, match="never unpickled") as info:
        load_checkpoint(hostile)
    assert not marker.exists()
    # torch's own message advises weights_only=False, which would run the payload: never passed on, nor chained
    assert "weights_only" not in str(info.value) and info.value.__cause__ is None
    assert info.value.__suppress_context__
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_clip_gradients_both_forms():
    p = torch.nn.Parameter(torch.zeros(2))
    for mode, gamma, expected_scale in [("norm", 1.0, 0.2), ("norm", 10.0, 1.0), ("soft", 5.0, 5 / 10)]:
        p.grad = torch.tensor([3.0, 4.0])  # norm 5
        norm = clip_gradients([p], max_norm=gamma, mode=mode)
        assert norm.item() == pytest.approx(5.0)
        assert torch.allclose(p.grad, torch.tensor([3.0, 4.0]) * expected_scale)


def test_ema_is_an_exponential_average_after_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.module.weight.fill_(0.0)
    ema.update(model, step=10_000)  # warm-up over: decay 0.9
    assert ema.module.weight.item() == pytest.approx(0.1)
    ema.update(model, step=0)  # first update: decay min(0.9, 1/10) = 0.1
    assert ema.module.weight.item() == pytest.approx(0.1 * 0.1 + 0.9)


class _Injected(Objective):
    """A quadratic loss ``‖w ⊙ x‖²`` made NaN at chosen steps (one loss evaluation per step)."""

    def __init__(self, nan_steps):
        super().__init__(data_shape=(2,))
        self.w = torch.nn.Parameter(torch.ones(2))
        self.nan_steps, self.calls = set(nan_steps), 0
        self.register_buffer("sigma_levels", torch.tensor([1.0]))

    def losses(self, phase, x):
        self.calls += 1
        value = (x * self.w).pow(2).sum(1)
        return value * (float("nan") if self.calls in self.nan_steps else 1.0)


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_after_k_in_a_row(tmp_path):
    trainer = make_trainer(tmp_path, steps=40, objective=_Injected({8, 9, 14, 15, 16, 17}), max_nonfinite_steps=4)
    weights, ema, lrs = {}, {}, {}
    for _ in range(13):
        trainer.train_step()
        weights[trainer.step] = trainer.objective.w.detach().clone()
        ema[trainer.step] = trainer.ema.module.w.detach().clone()
        lrs[trainer.step] = trainer.optimizers["model"].param_groups[0]["lr"]
    for skipped in (8, 9):  # no optimiser step, no EMA update, no LR-schedule advance
        assert torch.equal(weights[skipped], weights[skipped - 1]) and torch.equal(ema[skipped], ema[skipped - 1])
        assert lrs[skipped] == lrs[skipped - 1]
    assert not torch.equal(weights[10], weights[9]) and lrs[10] != lrs[9]
    assert trainer.skipped_steps == 2 and trainer.nonfinite_streak == 0

    run_dir = tmp_path / "run"
    trainer = make_trainer(run_dir, steps=40, objective=_Injected({8, 9, 14, 15, 16, 17}), max_nonfinite_steps=4)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    message = str(info.value)
    newest = run_dir / "checkpoints" / "ckpt_00000010.pt"
    assert message.startswith("4 steps in a row (14–17) had a non-finite loss or gradient (last: phase 'model', "
                              "loss=nan, grad_norm=nan)")
    assert f"The newest checkpoint is {newest} (step 10, largest |weight| " in message
    assert "resumes from the newest checkpoint" in message and "\n" not in message
    # step 15 was a checkpoint step inside the run of NaNs: not written (those weights had just given a NaN loss)
    assert [s for s, _ in step_checkpoints(run_dir)] == [5, 10]
    state = load_checkpoint(run_dir)
    assert all(torch.isfinite(t).all() for t in [*state["model"].values(), *state["ema"].values()])
    rows = {row["step"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert [rows[s]["skipped_steps"] for s in (7, 8, 9, 10, 13, 14, 17)] == [0, 1, 2, 2, 2, 3, 6]
    assert math.isnan(rows[8]["loss/model"]) and sorted(rows) == list(range(1, 18))


def test_divergence_before_the_first_checkpoint_says_that_none_exists(tmp_path):
    trainer = make_trainer(tmp_path, steps=20, objective=_Injected(range(1, 100)), max_nonfinite_steps=3)
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row \(1–3\).*No checkpoint has been written yet\. "
                                               r".*starts the run afresh"):
        trainer.fit()
    assert step_checkpoints(tmp_path) == []


def test_exploded_weights_are_not_checkpointed(tmp_path):
    """lr = 1e6: the first update makes |w| ≈ 1e6 with a finite loss, every later loss is inf. The checkpoint due
    at step 5 falls inside the run of non-finite steps and is not written, so no exploded weights reach disk."""
    torch.manual_seed(123)
    objective = DenoisingScoreMatching(net=partial(ScoreMLP, hidden=32, depth=2), data_shape=(2,),
                                       sigmas=geometric_sigmas(1.0, 0.05, 5))
    trainer = hooked_trainer(objective=objective, data=two_moons(), run_dir=tmp_path, steps=50, batch_size=16,
                             optimizer=partial(torch.optim.Adam, lr=1e6), log_every=1, ckpt_every=5,
                             sample_every=0, progress=False, tensorboard=False, max_nonfinite_steps=5)
    with pytest.raises(TrainingDiverged, match=r"5 steps in a row \(2–6\).*No checkpoint has been written yet"):
        trainer.fit()
    assert max(p.abs().max().item() for p in trainer.objective.parameters()) > 1e5  # they did explode
    assert step_checkpoints(tmp_path) == []


def test_a_stop_signal_during_a_run_of_non_finite_steps_does_not_claim_a_checkpoint(tmp_path):
    def evaluator(model, step):
        if step == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    trainer = make_trainer(tmp_path, steps=40, objective=_Injected({9, 10}), eval_every=1, evaluator=evaluator,
                           max_nonfinite_steps=4)
    with pytest.raises(TrainingInterrupted, match=r"stopped after step 9/40; no checkpoint at this step \(its loss "
                                                  r"was not finite\)\. The newest checkpoint is .*ckpt_00000005\.pt"):
        trainer.fit()


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"steps": 5, "grad_clip": -1.0}, "grad_clip must be positive"),
    ({"steps": 5, "amp": "fp8"}, "amp must be"),
    ({"steps": 5, "phase_lr": {"generator": 1e-3}}, "phase_lr names phases"),
    ({"steps": 5, "keep_checkpoints": 0}, "keep_checkpoints must be at least 1"),
    ({"steps": 5, "keep_checkpoints": -1}, "keep_checkpoints must be at least 1"),
    ({"steps": 5, "max_nonfinite_steps": 0}, "max_nonfinite_steps must be at least 1"),
    ({"steps": 5, "eval_every": -1}, "eval_every must be >= 0"),
])
def test_bad_trainer_settings(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, **kwargs)


def test_cosine_schedule_reaches_final_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = cosine_schedule(opt, total_steps=100, final_lr=1e-3)
    lrs = []
    for _ in range(100):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[-1] == pytest.approx(1e-3)
    assert lrs[49] == pytest.approx(1e-3 + 0.5 * (0.1 - 1e-3) * (1 + math.cos(math.pi * 0.5)), rel=1e-6)


def test_periodic_evaluation_logs_metrics_and_keeps_the_best_checkpoint(tmp_path):
    fids = iter([5.0, 3.0, 4.0, 6.0])
    calls = []

    def evaluator(model, step):
        calls.append(step)
        return {"fid": next(fids), "kid_mean": 0.0}

    trainer = make_trainer(tmp_path, steps=8, eval_every=2, evaluator=evaluator)
    trainer.fit()
    assert calls == [2, 4, 6, 8]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["eval/fid"]) for r in rows if "eval/fid" in r] == [(2, 5.0), (4, 3.0), (6, 4.0), (8, 6.0)]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 4 and best["best"] == 3.0


class _TwoPhase(Objective):
    phases = (("a", 3), ("b", 1))

    def __init__(self):
        super().__init__(data_shape=(2,))
        self.wa, self.wb = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
        self.register_buffer("sigma_levels", torch.tensor([1.0]))

    def phase_parameters(self, phase):
        return [self.wa] if phase == "a" else [self.wb]

    def losses(self, phase, x):
        w = self.wa if phase == "a" else self.wb
        return (x * w).pow(2).sum(1)


def test_lr_schedules_advance_once_per_step_whatever_the_repeats(tmp_path):
    trainer = make_trainer(tmp_path, steps=10, objective=_TwoPhase())
    for _ in range(5):
        trainer.train_step()
    expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5))
    for name in ("a", "b"):
        assert trainer.optimizers[name].param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)


def test_warmup_schedule_ramps_linearly_then_holds():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = warmup_schedule(opt, total_steps=100, warmup_steps=4)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(6):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2, 0.2])


class _Snapshots(Hook):
    """What a post-hoc EMA hook sees: a copy of the weights after every step, and how the fit ended."""

    def __init__(self):
        self.steps, self.weights, self.closed = [], {}, None

    def on_step_end(self, trainer, logs):
        self.steps.append(trainer.step)
        self.weights = {k: v.detach().clone() for k, v in trainer.objective.state_dict().items()}

    def on_close(self, trainer, failed):
        self.closed = failed


def test_the_trainer_takes_the_step_mechanics_and_the_hooks_take_the_rest():
    """Every key of the shipped ``trainer:`` node is an argument of the trainer or a setting of the default hooks,
    never both; the objects the CLI supplies complete each signature."""
    import inspect

    import yaml

    from dae_gen.train_hooks import HOOK_SETTINGS, default_hooks
    from dae_gen.trainer import Trainer

    node = yaml.safe_load((Path(__file__).parents[1] / "configs" / "trainer" / "default.yaml").read_text())
    keys = {k for k in node if not k.startswith("_")}
    mechanics = set(inspect.signature(Trainer).parameters) - {"objective", "data", "run_dir", "seed", "device",
                                                              "run_config", "hooks"}
    settings = set(inspect.signature(default_hooks).parameters) - {"sampler", "save_samples", "evaluator"}
    assert settings == set(HOOK_SETTINGS) and not mechanics & settings
    # posthoc_ema: the settings of the trainer's own stateful hook (PostHocEMAHook), built by the CLI
    assert keys == mechanics | settings | {"posthoc_ema"}


def test_hooks_see_every_step_and_the_step_mechanics_do_not_depend_on_them(tmp_path):
    default = make_trainer(tmp_path / "default", steps=6)
    snapshots = _Snapshots()
    default.fit(hooks=[*default.default_hooks(), snapshots])
    assert snapshots.steps == [1, 2, 3, 4, 5, 6] and snapshots.closed is False
    final = load_checkpoint(tmp_path / "default")
    assert final["step"] == 6 and all(torch.equal(final["model"][k], v) for k, v in snapshots.weights.items())

    bare = make_trainer(tmp_path / "bare", steps=6)
    assert bare.fit(hooks=[])["step"] == 6.0
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == []  # no hook: nothing written, lock released
    assert all(torch.equal(bare.objective.state_dict()[k], v) for k, v in snapshots.weights.items())


def test_a_hook_learns_that_the_fit_failed(tmp_path):
    snapshots = _Snapshots()
    trainer = make_trainer(tmp_path, steps=20, objective=_Injected(range(1, 100)), max_nonfinite_steps=3)
    with pytest.raises(TrainingDiverged):
        trainer.fit(hooks=[*trainer.default_hooks(), snapshots])
    assert snapshots.steps == [1, 2] and snapshots.closed is True  # the stop policy, before it, ended step 3
