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

Around the loop: the run-directory lock and the resume (:mod:`dae_gen.run_folder`), and hooks
(:mod:`dae_gen.train_hooks`) for everything that is not a step: the log and progress bar, the stop policy (stop
signals: a checkpoint at the finished step, then :class:`~dae_gen.errors.TrainingInterrupted`; divergence),
periodic checkpoints, sample grids and evaluation with ``best.pt``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dae_gen import distributed as D
from dae_gen.errors import CheckpointError, TrainingDiverged, TrainingInterrupted  # noqa: F401 (raised by hooks)
from dae_gen.objectives.base import Objective
from dae_gen.precision import autocast, check_amp, describe_amp, resolve_amp
from dae_gen.run_dir import parse_signals
from dae_gen.run_folder import ResumePlan, RunDir
from dae_gen.samplers.batches import draw_samples
from dae_gen.train_hooks import Checkpointing, Evaluation, Hook, ProgressLog, SampleGrids, StopPolicy, call_hooks

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
        self.checkpoints = RunDir(self.run_dir).checkpoints(keep=keep_checkpoints)

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
        self.newest_grid: Path | None = None  # set by the SampleGrids hook
        self.resumed = False
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

    def checkpoint_step(self) -> bool:
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
        cond = {}
        if "class_labels" in getattr(self.objective, "conditioning", ()):  # a class-conditional model: labelled batches
            x, cond["class_labels"] = self.data.batch(self.batch_size, generator=self.data_generator, labels=True)
        else:
            x = self.data.batch(self.batch_size, generator=self.data_generator)
        with autocast(self.amp, self.device):
            losses = self.parallel[name](name, x, **cond)
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

    # -- what hooks call ------------------------------------------------------------------------------
    def sample(self, n: int, *, sampler: Callable[..., Tensor] | None = None, seed: int = 0, progress: bool = False,
               callback=None) -> Tensor:
        """``n`` samples from the EMA model with a fixed seed (so grids are comparable across steps), on the CPU;
        ``sampler``: a driver (default: the trainer's own)."""
        sampler = sampler if sampler is not None else self.sampler
        if sampler is None:
            raise RuntimeError("no sampler was given to the trainer")
        return draw_samples(self.ema.module, sampler, n, batch_size=n, seed=seed, progress=progress,
                            callback=callback, desc=f"grid at step {self.step}")

    def announce(self) -> None:
        """Log the run directory, device, size and precision, and whether this session resumed (rank 0)."""
        if not D.is_main_process():
            return
        n_params = sum(p.numel() for p in self.objective.parameters())
        log.info("run directory %s; device %s%s; %s parameters; %s", self.run_dir, self.device,
                 f" × {D.world_size()} processes" if D.world_size() > 1 else "", f"{n_params:,}",
                 describe_amp(self.amp, self.device))
        if self.resumed:
            log.info("resumed from step %d (%s)", self.step, self.checkpoints.newest)
        else:
            log.info("new run: %d steps", self.steps)

    def default_hooks(self) -> list[Hook]:
        """The hooks built from this trainer's run-folder settings (periods, sampler, evaluator, stop policy), in
        the order they run: log, stop policy, checkpoint, grid, evaluation."""
        progress = ProgressLog(log_every=self.log_every, progress=self.progress, tensorboard=self.tensorboard)
        stop = StopPolicy(signals=self.stop_signals, max_nonfinite_steps=self.max_nonfinite_steps)
        hooks: list[Hook] = [progress, stop, Checkpointing(every=self.ckpt_every)]
        if self.sampler is not None and self.save_samples is not None:
            hooks.append(SampleGrids(sampler=self.sampler, save_samples=self.save_samples, every=self.sample_every,
                                     n_samples=self.n_samples, progress=self.progress, stop=stop))
        if self.evaluator is not None:
            hooks.append(Evaluation(evaluator=self.evaluator, every=self.eval_every, best_metric=self.best_metric,
                                    metrics=progress))
        return hooks

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self, *, plan: ResumePlan | None = None, hooks: Sequence[Any] | None = None) -> dict[str, float]:
        """Train until ``steps``, resuming from the run directory's newest readable checkpoint if there is one.

        plan:   a launch's :class:`~dae_gen.run_folder.ResumePlan` whose state this trainer has already loaded
                (``load_state_dict(plan.state)``), with the caller holding the run directory's lock
                (:meth:`~dae_gen.run_folder.RunDir.lock`): nothing is read again, the lock is not taken again.
                None: take the lock and resume from the newest readable checkpoint here.
        hooks:  what runs around the steps (``dae_gen.train_hooks``); None: :meth:`default_hooks`.

        With the default hooks, raises :class:`~dae_gen.errors.TrainingInterrupted` after a stop signal (a
        checkpoint at the finished step is on disk), :class:`~dae_gen.errors.TrainingDiverged` after
        ``max_nonfinite_steps`` non-finite steps in a row; :class:`~dae_gen.run_dir.RunLocked` when another
        process is using the run directory.
        """
        hooks = self.default_hooks() if hooks is None else list(hooks)
        with contextlib.ExitStack() as held:
            if plan is None:
                held.enter_context(RunDir(self.run_dir).lock())
                self.resumed = self.maybe_resume()
            else:
                if self.step != plan.step:
                    raise RuntimeError(f"the plan resumes step {plan.step} but the trainer is at step {self.step}: "
                                       "load_state_dict(plan.state) first")
                RunDir(self.run_dir).start(plan, self.checkpoints)
                self.resumed = plan.state is not None
            started = []
            failed = True
            try:
                for hook in hooks:
                    if hasattr(hook, "on_fit_start"):
                        hook.on_fit_start(self)
                    started.append(hook)
                while self.step < self.steps:
                    logs = self.train_step()
                    call_hooks(hooks, "on_step_end", self, logs)
                call_hooks(hooks, "on_fit_end", self)
                failed = False
            finally:
                call_hooks(list(reversed(started)), "on_close", self, failed)
            D.barrier()
        last = next((h.last for h in hooks if isinstance(h, ProgressLog)), {})
        return {**last, "resumed": float(self.resumed), "step": float(self.step)}
