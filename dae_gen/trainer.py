"""The one training loop of dae_gen. It never names a method: it runs an objective's phases.

Each step runs the objective's phase cycle (``(("model", 1),)`` for most methods): for every repeat of a
phase it draws a fresh batch, asks the objective for per-example losses, averages them, back-propagates,
averages gradients across ranks, clips, and steps that phase's optimiser and LR schedule. Around the loop:
EMA of the weights, periodic checkpoints (named state dicts, resumed automatically from the run directory),
sample grids, metrics in ``metrics.jsonl`` (and TensorBoard if installed), a progress bar, and stop-on-NaN.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dae_gen import distributed as D
from dae_gen.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from dae_gen.errors import TrainingDiverged
from dae_gen.objectives.base import Objective


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


class MetricsLog:
    """Append-only JSON-lines log (``metrics.jsonl``), mirrored to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.writer = None

    def write(self, step: int, values: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# -- the trainer --------------------------------------------------------------------------------------
class Trainer:
    """Train any :class:`~dae_gen.objectives.base.Objective` on any dataset object.

    objective:       the method (nets + per-example losses + score).
    data:            dataset object with ``batch(batch_size, generator=)`` (see ``dae_gen.data.base``).
    run_dir:         output directory; if it holds a checkpoint the run resumes from the newest one.
    steps:           total optimisation steps (one pass over the objective's phase cycle each).
    batch_size:      examples per phase repeat, per process.
    optimizer:       partial ``(params, lr=...) -> Optimizer``, e.g. ``partial(torch.optim.Adam, lr=1e-3)``.
    phase_lr:        per-phase learning-rate overrides, e.g. ``{"generator": 3e-3}``.
    lr_schedule:     partial ``(optimizer, total_steps=) -> LRScheduler``, or None for a constant lr.
    ema_decay:       EMA decay of the weights (0 keeps the EMA equal to the current weights).
    grad_clip:       γ for gradient clipping, None for none; grad_clip_mode ``norm`` or ``soft``.
    amp:             ``"none"`` or ``"bf16"`` autocast (CUDA only).
    compile:         ``torch.compile`` the objective's networks (first-order objectives only).
    log_every / ckpt_every / sample_every / eval_every: periods in steps (0 disables the periodic work;
                     a final checkpoint and sample grid are always written at the end).
    keep_checkpoints: how many step checkpoints to keep (``best.pt`` is extra).
    sampler:         driver ``(model, n, generator=, callback=) -> Tensor`` for periodic samples.
    save_samples:    ``(samples, path) -> None`` writing a grid or scatter plot.
    evaluator:       ``(model, step) -> dict`` of metrics (e.g. FID), run every ``eval_every`` steps.
    best_metric:     key of the evaluator's output to keep ``best.pt`` by (lower is better).
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
                 seed: int = 0, device: str | torch.device = "cpu", run_config: dict | None = None,
                 progress: bool = True, tensorboard: bool = True):
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {amp!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or null, got {grad_clip}")
        if grad_clip_mode not in ("norm", "soft"):
            raise ValueError(f"grad_clip_mode must be 'norm' or 'soft', got {grad_clip_mode!r}")
        for name, every in [("log_every", log_every), ("ckpt_every", ckpt_every), ("sample_every", sample_every),
                            ("eval_every", eval_every)]:
            if int(every) < 0:
                raise ValueError(f"{name} must be >= 0 (0 disables), got {every}")
        if compile and objective.needs_double_backward:
            raise ValueError(f"compile=true is not possible for {type(objective).__name__}: its loss differentiates "
                             "through an input gradient (double backward), which torch.compile does not support")
        self.device = torch.device(device)
        self.objective = objective.to(self.device)
        self.data = data.to(self.device)
        self.run_dir = Path(run_dir)
        self.steps, self.batch_size = int(steps), int(batch_size)
        self.grad_clip, self.grad_clip_mode = grad_clip, grad_clip_mode
        self.amp = amp if self.device.type == "cuda" else "none"
        self.log_every, self.ckpt_every = int(log_every), int(ckpt_every)
        self.sample_every, self.eval_every = int(sample_every), int(eval_every)
        self.keep_checkpoints, self.n_samples = int(keep_checkpoints), int(n_samples)
        self.sampler, self.save_samples = sampler, save_samples
        self.evaluator, self.best_metric = evaluator, best_metric
        self.seed, self.config = int(seed), run_config or {}
        self.progress, self.tensorboard = progress, tensorboard

        phase_lr = dict(phase_lr or {})
        unknown = set(phase_lr) - {name for name, _ in objective.phases}
        if unknown:
            raise ValueError(f"phase_lr names phases {sorted(unknown)}, but {type(objective).__name__} has "
                             f"phases {[name for name, _ in objective.phases]}")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        for name, repeats in objective.phases:
            if int(repeats) < 1:
                raise ValueError(f"phase {name!r} repeats {repeats} times; it must be at least 1")
            kwargs = {"lr": phase_lr[name]} if name in phase_lr else {}
            self.optimizers[name] = optimizer(objective.phase_parameters(name), **kwargs)
            if lr_schedule is not None:
                self.schedulers[name] = lr_schedule(self.optimizers[name], total_steps=self.steps)
        D.broadcast_module(self.objective)  # every rank starts from rank 0's weights
        self.ema = EMA(self.objective, decay=ema_decay)
        if compile:
            for module in objective.children():
                module.compile()
        self.step = 0
        self.best = math.inf
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

    def save(self, *, name: str | None = None) -> Path | None:
        if not D.is_main_process():
            return None
        path = checkpoint_dir(self.run_dir) / (name or f"ckpt_{self.step:08d}.pt")
        save_checkpoint(self.state_dict(), path)
        if name is None:
            prune_checkpoints(self.run_dir, keep=self.keep_checkpoints)
        return path

    def maybe_resume(self) -> bool:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        # RNG states must stay CPU byte tensors; load_state_dict moves weights and optimiser state itself
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        return True

    # -- one step -----------------------------------------------------------------------------------
    def _phase_step(self, name: str) -> dict[str, float]:
        params = self.objective.phase_parameters(name)
        optimizer = self.optimizers[name]
        self.objective.zero_grad(set_to_none=True)
        x = self.data.batch(self.batch_size, generator=self.data_generator)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            losses = self.objective(name, x)
        if losses.ndim != 1 or losses.shape[0] != x.shape[0]:
            raise RuntimeError(f"{type(self.objective).__name__}.losses({name!r}) must return per-example losses of "
                               f"shape ({x.shape[0]},), got {tuple(losses.shape)}")
        loss = losses.float().mean()
        loss.backward()
        D.average_gradients(params)
        grad_norm = clip_gradients(params, max_norm=self.grad_clip, mode=self.grad_clip_mode)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise TrainingDiverged(
                f"non-finite {'loss' if not torch.isfinite(loss) else 'gradient norm'} in phase {name!r} at step "
                f"{self.step}: loss={loss.item()}, grad_norm={grad_norm.item()}. Nothing was saved from this step; "
                f"the last checkpoint in {checkpoint_dir(self.run_dir)} is intact. Lower the learning rate or "
                "set trainer.grad_clip.")
        optimizer.step()
        return {f"loss/{name}": loss.detach(), f"grad_norm/{name}": grad_norm.detach(),
                f"lr/{name}": optimizer.param_groups[0]["lr"]}

    def train_step(self) -> dict[str, float]:
        """One pass over the objective's phase cycle; returns the last value of each logged quantity."""
        self.objective.train()
        logs: dict[str, Any] = {}
        for name, repeats in self.objective.phases:
            for _ in range(int(repeats)):
                logs.update(self._phase_step(name))
        for scheduler in self.schedulers.values():  # once per step, however many repeats a phase has
            scheduler.step()
        self.ema.update(self.objective, step=self.step)
        self.step += 1
        return logs

    # -- periodic work ------------------------------------------------------------------------------
    def sample(self, n: int, *, seed: int = 0) -> Tensor:
        """``n`` samples from the EMA model with a fixed seed (so grids are comparable across steps)."""
        if self.sampler is None:
            raise RuntimeError("no sampler was given to the trainer")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.sampler(self.ema.module, n, generator=generator)

    def _write_samples(self) -> None:
        if self.sampler is None or self.save_samples is None or not D.is_main_process():
            return
        samples = self.sample(self.n_samples)
        folder = self.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"samples_{self.step:08d}.png"
        self.save_samples(samples.cpu(), path)
        shutil.copyfile(path, self.run_dir / "samples.png")  # the newest grid, under a fixed name

    def _evaluate(self, log: MetricsLog | None) -> None:
        if self.evaluator is None or not D.is_main_process():
            return
        metrics = self.evaluator(self.ema.module, self.step)
        if log is not None:
            log.write(self.step, {f"eval/{k}": float(v) for k, v in metrics.items()})
        value = metrics.get(self.best_metric)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.save(name="best.pt")

    def fit(self) -> dict[str, float]:
        """Train until ``steps``, resuming from the run directory's newest checkpoint if there is one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.maybe_resume()
        log = MetricsLog(self.run_dir, tensorboard=self.tensorboard) if D.is_main_process() else None
        bar = None
        if self.progress and D.is_main_process():
            from tqdm.auto import tqdm
            bar = tqdm(total=self.steps, initial=self.step, desc="train", dynamic_ncols=True)
        last: dict[str, float] = {}
        started, start_step = time.perf_counter(), self.step
        try:
            while self.step < self.steps:
                logs = self.train_step()
                if self.log_every and (self.step % self.log_every == 0 or self.step == self.steps):
                    last = {k: float(D.all_mean(v) if isinstance(v, Tensor) else v) for k, v in logs.items()}
                    last["steps_per_s"] = (self.step - start_step) / (time.perf_counter() - started)
                    if log is not None:
                        log.write(self.step, last)
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k.startswith("loss/")})
                if bar is not None:
                    bar.update(1)
                if self.ckpt_every and self.step % self.ckpt_every == 0:
                    self.save()
                if self.sample_every and self.step % self.sample_every == 0:
                    self._write_samples()
                if self.eval_every and self.step % self.eval_every == 0:
                    self._evaluate(log)
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        if self.ckpt_every == 0 or self.step % self.ckpt_every:
            self.save()
        if self.sample_every == 0 or self.step % self.sample_every:
            self._write_samples()
        D.barrier()
        return {**last, "resumed": float(resumed), "step": float(self.step)}
