"""The one training loop of dae_gen. It never names a method: it runs an objective's phases.

Each step runs the objective's phase cycle (``(("model", 1),)`` for most methods): for every repeat of a
phase it draws a fresh batch, asks the objective for per-example losses, averages them and back-propagates
(through DistributedDataParallel under several processes, which averages the gradients across ranks), clips,
and steps that phase's optimiser. Then the LR schedules and the EMA of the weights advance once.

Non-finite values: an update whose loss or gradient norm is NaN/inf is skipped (its optimiser does not step).
A step with a skipped update is a *skipped step*: the LR schedules and the EMA do not advance either, but the
step counter does (its batches and noise were drawn, so a resumed run replays exactly the same stream). Skipped
steps are counted in the log; after ``max_nonfinite_steps`` of them in a row the run stops
(:class:`~dae_gen.errors.TrainingDiverged`). Weights only ever receive finite updates, and no checkpoint is
written with a non-finite tensor. Weights that grew huge but stay finite (a learning rate far too high) cannot
be told from large healthy ones by a threshold; what marks them is that their next loss is not finite. So no
checkpoint is written during a run of skipped steps (the current weights have just given a non-finite loss):
after lr=1e6 the newest checkpoint is the last one before the explosion, or none. Each checkpoint records its
largest ``|weight|``, and the divergence message reports it and warns when the newest checkpoint's weights are
the ones that gave the first non-finite loss.

Around the loop (run-directory concerns live in :mod:`dae_gen.run_dir`): the run-directory lock, stop signals
(checkpoint at the finished step, then :class:`~dae_gen.errors.TrainingInterrupted`), checkpoints in rotation
resumed from the newest readable one, sample grids, evaluation, ``metrics.jsonl`` and a progress bar.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dae_gen import distributed as D
from dae_gen.checkpoint import describe_os_error
from dae_gen.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from dae_gen.objectives.base import Objective
from dae_gen.precision import autocast, check_amp, describe_amp, resolve_amp
from dae_gen.run_dir import MetricsLog, RunCheckpoints, RunDirError, StopSignals, parse_signals
from dae_gen.run_folder import ResumePlan, RunDir
from dae_gen.samplers.batches import draw_samples

log = logging.getLogger(__name__)


# -- learning-rate schedules (pure functions of the step) ----------------------------------------------
def cosine_schedule(optimizer: torch.optim.Optimizer, *, total_steps: int, final_lr: float = 1e-6,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay from the optimiser's lr to ``final_lr`` at ``total_steps``."""
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor(step: int, base_lr: float) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return (final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * t))) / base_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda s, b=b: factor(s, b) for b in base_lrs])


def warmup_schedule(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 5000
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the optimiser's lr, then constant (score_sde / NCSN++ style)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))


# -- EMA ----------------------------------------------------------------------------------------------
class EMA(nn.Module):
    """Exponential moving average of a module's parameters (NCSNv2 Technique 5: decay 0.999).

    The decay warms up as ``min(decay, (1 + n)/(10 + n))`` after n updates, so early averages are not
    dominated by the random initial weights (the bias a fixed 0.999 keeps for thousands of steps).
    """

    def __init__(self, model: nn.Module, *, decay: float):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, *, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)


# -- gradient clipping --------------------------------------------------------------------------------
def clip_gradients(params: list[nn.Parameter], *, max_norm: float | None, mode: str = "norm") -> Tensor:
    """Clip in place and return the pre-clipping global norm.

    ``norm``: scale by ``min(1, γ/‖g‖)`` (torch's clip_grad_norm_); ``soft``: scale by ``γ/(‖g‖ + γ)``.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if max_norm is None:
        return norm
    if mode == "norm":
        scale = (max_norm / (norm + 1e-12)).clamp(max=1.0)
    elif mode == "soft":
        scale = max_norm / (norm + max_norm)
    else:
        raise ValueError(f"grad_clip_mode must be 'norm' or 'soft', got {mode!r}")
    for g in grads:
        g.mul_(scale)
    return norm


class _GridAborted(Exception):
    """A stop signal arrived while a sample grid was being drawn."""


# -- the trainer --------------------------------------------------------------------------------------
class Trainer:
    """Train any :class:`~dae_gen.objectives.base.Objective` on any dataset object.

    objective:       the method (nets + per-example losses + score).
    data:            dataset object with ``batch(batch_size, generator=)`` (see ``dae_gen.data.base``).
    run_dir:         output directory; if it holds a checkpoint the run resumes from the newest readable one.
    steps:           total optimisation steps (one pass over the objective's phase cycle each).
    batch_size:      examples per phase repeat, per process.
    optimizer:       partial ``(params, lr=...) -> Optimizer``, e.g. ``partial(torch.optim.Adam, lr=1e-3)``.
    phase_lr:        per-phase learning-rate overrides, e.g. ``{"generator": 3e-3}``.
    lr_schedule:     partial ``(optimizer, total_steps=) -> LRScheduler``, or None for a constant lr.
    ema_decay:       EMA decay of the weights (0 keeps the EMA equal to the current weights).
    grad_clip:       γ for gradient clipping, None for none; grad_clip_mode ``norm`` or ``soft``.
    amp:             ``"none"`` or ``"bf16"``: the networks under bf16 autocast where the device computes in bf16
                     (CUDA; CPUs with AMX-BF16 / AVX512-BF16), else fp32 with one warning (``dae_gen.precision``).
                     Weights, gradients, optimiser state, EMA and checkpoints stay fp32; losses are averaged in fp32.
    compile:         ``torch.compile`` the objective's networks (first-order objectives only).
    log_every / ckpt_every / sample_every / eval_every: periods in steps (0 disables the periodic work;
                     a final checkpoint and sample grid are always written at the end).
    keep_checkpoints: how many step checkpoints to keep (``best.pt`` is extra).
    sampler:         driver ``(model, n, generator=, callback=) -> Tensor`` for periodic samples.
    save_samples:    ``(samples, path) -> None`` writing a grid or scatter plot.
    evaluator:       ``(model, step) -> dict`` of metrics (e.g. FID), run every ``eval_every`` steps.
    best_metric:     key of the evaluator's output to keep ``best.pt`` by (lower is better).
    stop_signals:    signals that stop training after the step in flight, with a checkpoint at that step
                     (SIGTERM: schedulers and ``kill``; SIGINT: Ctrl-C; SIGUSR1/SIGUSR2: SLURM's pre-timeout
                     signal, ``--signal=USR1@120`` in a batch script, USR2 from submitit).
    max_nonfinite_steps: stop after this many consecutive steps with a non-finite loss or gradient (1: stop at
                     the first one); isolated ones are skipped and counted (``skipped_steps`` in the log).
    seed, device, run_config: RNG seed (offset by rank), torch device, resolved config stored in checkpoints.
    """

    def __init__(self, *, objective: Objective, data, run_dir: str | Path, steps: int, batch_size: int,
                 optimizer: Callable[..., torch.optim.Optimizer], phase_lr: dict[str, float] | None = None,
                 lr_schedule: Callable[..., Any] | None = None, ema_decay: float = 0.999,
                 grad_clip: float | None = None, grad_clip_mode: str = "norm", amp: str = "none",
                 compile: bool = False, log_every: int = 100, ckpt_every: int = 1000, sample_every: int = 1000,
                 eval_every: int = 0, keep_checkpoints: int = 2, n_samples: int = 64,
                 sampler: Callable[..., Tensor] | None = None,
                 save_samples: Callable[[Tensor, Path], None] | None = None,
                 evaluator: Callable[[nn.Module, int], dict[str, float]] | None = None, best_metric: str = "fid",
                 stop_signals: Sequence[str] = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"),
                 max_nonfinite_steps: int = 10, seed: int = 0, device: str | torch.device = "cpu",
                 run_config: dict | None = None, progress: bool = True, tensorboard: bool = True):
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        check_amp(amp, where="trainer.amp")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or null, got {grad_clip}")
        if grad_clip_mode not in ("norm", "soft"):
            raise ValueError(f"grad_clip_mode must be 'norm' or 'soft', got {grad_clip_mode!r}")
        for name, every in [("log_every", log_every), ("ckpt_every", ckpt_every), ("sample_every", sample_every),
                            ("eval_every", eval_every)]:
            if int(every) < 0:
                raise ValueError(f"{name} must be >= 0 (0 disables), got {every}")
        if int(max_nonfinite_steps) < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1, got {max_nonfinite_steps}")
        if compile and objective.needs_double_backward:
            raise ValueError(f"compile=true is not possible for {type(objective).__name__}: its loss differentiates "
                             "through an input gradient (double backward), which torch.compile does not support")
        parse_signals(stop_signals)  # a misspelt signal fails now, not at the first Ctrl-C
        self.device = torch.device(device)
        self.objective = objective.to(self.device)
        self.data = data.to(self.device)
        self.run_dir = Path(run_dir)
        self.steps, self.batch_size = int(steps), int(batch_size)
        self.grad_clip, self.grad_clip_mode = grad_clip, grad_clip_mode
        self.amp = resolve_amp(amp, self.device, warn=D.is_main_process())  # the precision that runs
        self.log_every, self.ckpt_every = int(log_every), int(ckpt_every)
        self.sample_every, self.eval_every = int(sample_every), int(eval_every)
        self.n_samples = int(n_samples)
        self.sampler, self.save_samples = sampler, save_samples
        self.evaluator, self.best_metric = evaluator, best_metric
        self.stop_signals, self.max_nonfinite_steps = list(stop_signals), int(max_nonfinite_steps)
        self.seed, self.config = int(seed), run_config or {}
        self.progress, self.tensorboard = progress, tensorboard
        self.checkpoints = RunCheckpoints(self.run_dir, keep=keep_checkpoints)

        phase_lr = dict(phase_lr or {})
        unknown = set(phase_lr) - {name for name, _ in objective.phases}
        if unknown:
            raise ValueError(f"phase_lr names phases {sorted(unknown)}, but {type(objective).__name__} has "
                             f"phases {[name for name, _ in objective.phases]}")
        self.phase_params: dict[str, list[nn.Parameter]] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        for name, repeats in objective.phases:
            if int(repeats) < 1:
                raise ValueError(f"phase {name!r} repeats {repeats} times; it must be at least 1")
            self.phase_params[name] = objective.phase_parameters(name)
            kwargs = {"lr": phase_lr[name]} if name in phase_lr else {}
            self.optimizers[name] = optimizer(self.phase_params[name], **kwargs)
            if lr_schedule is not None:
                self.schedulers[name] = lr_schedule(self.optimizers[name], total_steps=self.steps)
        D.broadcast_module(self.objective)  # every rank starts from rank 0's weights
        self.ema = EMA(self.objective, decay=ema_decay)
        if compile:
            for module in objective.children():
                module.compile()
        # what a step calls per phase: the objective itself, or DDP over the phase's parameters
        self.parallel = {name: D.data_parallel(self.objective, self.phase_params[name], self.device)
                         for name, _ in objective.phases}
        self.step = 0
        self.best = math.inf
        self.skipped_steps, self.nonfinite_streak = 0, 0
        self.last_nonfinite: dict[str, Any] = {}
        self.newest_grid: Path | None = None
        self.data_generator = torch.Generator(device="cpu")
        self.data_generator.manual_seed(self.seed * 1000 + D.rank())
        torch.manual_seed(self.seed * 1000 + D.rank())

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "data": self.data_generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step,
            "model": self.objective.state_dict(),
            "ema": self.ema.module.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "rng": rng,
            "data": self.data.state_dict(),
            "best": self.best,
            "nonfinite": {"skipped_steps": self.skipped_steps, "streak": self.nonfinite_streak},
            "world_size": D.world_size(),
            "config": self.config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.objective.load_state_dict(state["model"])
            self.ema.module.load_state_dict(state["ema"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            for name, sched in self.schedulers.items():
                sched.load_state_dict(state["schedulers"][name])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"the checkpoint does not fit this model/optimiser configuration: {err}") from err
        self.step = int(state["step"])
        self.best = float(state.get("best", math.inf))
        nonfinite = state.get("nonfinite", {})
        self.skipped_steps = int(nonfinite.get("skipped_steps", 0))
        self.nonfinite_streak = int(nonfinite.get("streak", 0))
        if D.world_size() == 1:
            torch.set_rng_state(state["rng"]["torch"])
            self.data_generator.set_state(state["rng"]["data"])
            if self.device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
            self.data.load_state_dict(state.get("data", {}))
        else:
            # only rank 0's RNG states are saved: give every rank its own fresh streams for the rest of the run
            stream = (self.seed * 1000 + D.rank()) * 1_000_003 + self.step
            torch.manual_seed(stream)
            self.data_generator.manual_seed(stream)

    def save(self) -> Path:
        """Checkpoint the current state as ``ckpt_<step>.pt`` (rank 0 writes; every rank calls it)."""
        return self.checkpoints.save(self.state_dict())

    def _checkpoint_step(self) -> bool:
        """Checkpoint the step just finished, unless it already is, or its weights have just given a non-finite
        loss (a run of skipped steps: see the module docstring). Returns whether a checkpoint of it exists."""
        if self.checkpoints.newest_step == self.step:
            return True
        if self.nonfinite_streak:
            if D.is_main_process():
                log.warning("no checkpoint at step %d: its weights gave a non-finite loss. %s", self.step,
                            self.checkpoints.describe_newest())
            return False
        self.save()
        return True

    def maybe_resume(self) -> bool:
        """Load the newest readable checkpoint of the run directory, if there is one (see ``RunCheckpoints``)."""
        # RNG states must stay CPU byte tensors; load_state_dict moves weights and optimiser state itself
        state = self.checkpoints.resume(map_location="cpu")
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    # -- one step -----------------------------------------------------------------------------------
    def _phase_step(self, name: str) -> tuple[dict[str, Any], bool]:
        """One optimiser update of phase ``name`` on a fresh batch; returns its logs and whether it was applied."""
        params = self.phase_params[name]
        self.objective.zero_grad(set_to_none=True)
        x = self.data.batch(self.batch_size, generator=self.data_generator)
        with autocast(self.amp, self.device):
            losses = self.parallel[name](name, x)
        if losses.ndim != 1 or losses.shape[0] != x.shape[0]:
            raise RuntimeError(f"{type(self.objective).__name__}.losses({name!r}) must return per-example losses of "
                               f"shape ({x.shape[0]},), got {tuple(losses.shape)}")
        loss = losses.float().mean()
        loss.backward()  # under DDP the gradients arrive averaged over ranks
        grad_norm = clip_gradients(params, max_norm=self.grad_clip, mode=self.grad_clip_mode)
        finite = not D.any_rank(~(torch.isfinite(loss) & torch.isfinite(grad_norm)), self.device)
        if finite:
            self.optimizers[name].step()
        else:
            self.last_nonfinite = {"phase": name, "loss": loss.item(), "grad_norm": grad_norm.item()}
        return {f"loss/{name}": loss.detach(), f"grad_norm/{name}": grad_norm.detach(),
                f"lr/{name}": self.optimizers[name].param_groups[0]["lr"]}, finite

    def train_step(self) -> dict[str, Any]:
        """One pass over the objective's phase cycle; returns the last value of each logged quantity."""
        self.objective.train()
        logs: dict[str, Any] = {}
        skipped = False
        for name, repeats in self.objective.phases:
            for _ in range(int(repeats)):
                update_logs, applied = self._phase_step(name)
                logs.update(update_logs)
                skipped |= not applied
        if skipped:  # see the module docstring: schedules and EMA wait, the step counter moves on
            self.skipped_steps += 1
            self.nonfinite_streak += 1
            last = self.last_nonfinite
            if D.is_main_process():
                log.warning("step %d: non-finite loss or gradient in phase %r (loss %.4g, gradient norm %.4g); "
                            "update skipped (%d in a row, %d in this run)", self.step + 1, last["phase"],
                            last["loss"], last["grad_norm"], self.nonfinite_streak, self.skipped_steps)
        else:
            self.nonfinite_streak = 0
            for scheduler in self.schedulers.values():  # once per step, however many repeats a phase has
                scheduler.step()
            self.ema.update(self.objective, step=self.step)
        self.step += 1
        logs["skipped_steps"] = self.skipped_steps
        return logs

    # -- periodic work ------------------------------------------------------------------------------
    def sample(self, n: int, *, seed: int = 0, progress: bool = False, callback=None) -> Tensor:
        """``n`` samples from the EMA model with a fixed seed (so grids are comparable across steps), on the CPU."""
        if self.sampler is None:
            raise RuntimeError("no sampler was given to the trainer")
        return draw_samples(self.ema.module, self.sampler, n, batch_size=n, seed=seed, progress=progress,
                            callback=callback, desc=f"grid at step {self.step}")

    def _write_samples(self, stop: StopSignals | None = None) -> None:
        """Draw and save a grid (on rank 0), with its own progress bar; a stop signal abandons it."""
        if self.sampler is None or self.save_samples is None:
            return

        def abort_on_stop(info: dict) -> None:
            if stop is not None and stop.received is not None:
                raise _GridAborted

        try:
            samples = self.sample(self.n_samples, progress=self.progress, callback=abort_on_stop)
        except _GridAborted:
            log.info("sample grid at step %d abandoned: stopping", self.step)
            return
        path = self.run_dir / "samples" / f"samples_{self.step:08d}.png"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.save_samples(samples, path)
            shutil.copyfile(path, self.run_dir / "samples.png")  # the newest grid, under a fixed name
        except OSError as err:
            raise RunDirError(f"cannot write the sample grid {path}: {describe_os_error(err)}") from None
        self.newest_grid = path

    def _evaluate(self, metrics_log: MetricsLog) -> None:
        """Run the evaluator on the EMA model (on rank 0); log its metrics; keep ``best.pt`` by ``best_metric``."""
        if self.evaluator is None:
            return
        metrics = self.evaluator(self.ema.module, self.step)
        metrics_log.write(self.step, {f"eval/{k}": float(v) for k, v in metrics.items()})
        value = metrics.get(self.best_metric)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.checkpoints.save_as(self.state_dict(), "best.pt")

    # -- stopping -----------------------------------------------------------------------------------
    def _stop_on_signal(self, stop: StopSignals, received: signal.Signals) -> None:
        """Checkpoint the step just finished, hand the signal on (submitit requeues), raise TrainingInterrupted."""
        written = self._checkpoint_step()
        D.barrier()  # every rank leaves only once the checkpoint is on disk
        stop.forward()
        where = (f"checkpoint {self.checkpoints.newest} written." if written else
                 f"no checkpoint at this step (its loss was not finite). {self.checkpoints.describe_newest()}")
        raise TrainingInterrupted(f"{received.name} received: stopped after step {self.step}/{self.steps}; {where} "
                                  "Run the same command to resume.", int(received))

    def _stop_diverged(self) -> None:
        first = self.step - self.nonfinite_streak + 1
        last = self.last_nonfinite
        suspect = ""
        if self.checkpoints.newest_step == first - 1:  # written just before the first non-finite loss
            suspect = (" Its weights gave the first non-finite loss, so resuming from it will likely diverge again: "
                       "move it aside to resume from the one before.")
        raise TrainingDiverged(
            f"{self.nonfinite_streak} steps in a row ({first}–{self.step}) had a non-finite loss or gradient (last: "
            f"phase {last.get('phase')!r}, loss={last.get('loss')}, grad_norm={last.get('grad_norm')}); their updates "
            f"were skipped and training stopped. {self.checkpoints.describe_newest()}{suspect} Lower "
            "trainer.optimizer.lr or set trainer.grad_clip; the same command then "
            f"{'starts the run afresh' if self.checkpoints.newest is None else 'resumes from the newest checkpoint'}.")

    # -- the loop -----------------------------------------------------------------------------------
    def _log_step(self, logs: dict[str, Any], metrics_log: MetricsLog | None, bar, started: float,
                  start_step: int) -> dict[str, float]:
        values = {k: float(D.all_mean(v) if isinstance(v, Tensor) else v) for k, v in logs.items()}
        values["steps_per_s"] = (self.step - start_step) / max(time.perf_counter() - started, 1e-9)
        D.on_main(lambda: metrics_log.write(self.step, values))
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k.startswith("loss/")})
        return values

    def _announce(self, resumed: bool) -> None:
        if not D.is_main_process():
            return
        n_params = sum(p.numel() for p in self.objective.parameters())
        log.info("run directory %s; device %s%s; %s parameters; %s", self.run_dir, self.device,
                 f" × {D.world_size()} processes" if D.world_size() > 1 else "", f"{n_params:,}",
                 describe_amp(self.amp, self.device))
        if resumed:
            log.info("resumed from step %d (%s)", self.step, self.checkpoints.newest)
        else:
            log.info("new run: %d steps", self.steps)

    def _stop_if_asked(self, stop: StopSignals) -> None:
        """After each step: a stop signal (on any rank) or too many non-finite steps in a row end training."""
        received = D.max_over_ranks(int(stop.received or 0), self.device)  # all ranks stop at the same step
        if received:
            self._stop_on_signal(stop, signal.Signals(int(received)))
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            self._stop_diverged()

    def _periodic_work(self, stop: StopSignals, metrics_log: MetricsLog | None) -> None:
        if self.ckpt_every and self.step % self.ckpt_every == 0:
            self._checkpoint_step()
        if self.sample_every and self.step % self.sample_every == 0:
            D.on_main(lambda: self._write_samples(stop))
        if self.eval_every and self.step % self.eval_every == 0:
            D.on_main(lambda: self._evaluate(metrics_log))

    def _summarise(self, last: dict[str, float], seconds: float, start_step: int) -> None:
        if not D.is_main_process():
            return
        losses = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("loss/"))
        log.info("finished %d steps (%d this session) in %.1f s%s%s; newest checkpoint %s; newest grid %s",
                 self.step, self.step - start_step, seconds, f"; {losses}" if losses else "",
                 f"; {self.skipped_steps} non-finite steps skipped" if self.skipped_steps else "",
                 self.checkpoints.newest, self.newest_grid)

    def fit(self, *, plan: ResumePlan | None = None) -> dict[str, float]:
        """Train until ``steps``, resuming from the run directory's newest readable checkpoint if there is one.

        plan:  a launch's :class:`~dae_gen.run_folder.ResumePlan` whose state this trainer has already loaded
               (``load_state_dict(plan.state)``), with the caller holding the run directory's lock
               (:meth:`~dae_gen.run_folder.RunDir.lock`): nothing is read again, the lock is not taken again.
               None: take the lock and resume from the newest readable checkpoint here.

        Raises :class:`~dae_gen.errors.TrainingInterrupted` after a stop signal (a checkpoint at the finished
        step is on disk), :class:`~dae_gen.errors.TrainingDiverged` after ``max_nonfinite_steps`` non-finite
        steps in a row, :class:`~dae_gen.run_dir.RunLocked` when another process is using the run directory.
        """
        main = D.is_main_process()
        with contextlib.ExitStack() as held:
            if plan is None:
                held.enter_context(RunDir(self.run_dir).lock())
                resumed = self.maybe_resume()
            else:
                if self.step != plan.step:
                    raise RuntimeError(f"the plan resumes step {plan.step} but the trainer is at step {self.step}: "
                                       "load_state_dict(plan.state) first")
                RunDir(self.run_dir).start(plan, self.checkpoints)
                resumed = plan.state is not None
            stop = held.enter_context(StopSignals(self.stop_signals))
            self._announce(resumed)
            metrics_log = D.on_main(lambda: MetricsLog(self.run_dir, resume_step=self.step,
                                                       tensorboard=self.tensorboard))  # None off rank 0
            bar = tqdm(total=self.steps, initial=self.step, desc="train", dynamic_ncols=True,
                       disable=not (self.progress and main))
            started, start_step, last = time.perf_counter(), self.step, {}
            try:
                while self.step < self.steps:
                    logs = self.train_step()
                    if self.log_every and (self.step % self.log_every == 0 or self.step == self.steps):
                        last = self._log_step(logs, metrics_log, bar, started, start_step)
                    bar.update(1)
                    self._stop_if_asked(stop)
                    self._periodic_work(stop, metrics_log)
                self._checkpoint_step()
                if self.sample_every == 0 or self.step % self.sample_every:
                    D.on_main(lambda: self._write_samples(stop))
            finally:
                bar.close()
                if metrics_log is not None:
                    metrics_log.close()
            D.barrier()
        self._summarise(last, time.perf_counter() - started, start_step)
        return {**last, "resumed": float(resumed), "step": float(self.step)}
