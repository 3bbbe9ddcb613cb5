"""What happens around the training steps, as hooks the trainer calls: logging and the progress bar, the stop
policy (signals, divergence), periodic checkpoints, sample grids, evaluation with ``best.pt``.

A hook is any object with some of these methods (the missing ones are skipped; :class:`Hook` has them all as
no-ops)::

    on_fit_start(trainer)         before the first step of this session (after the resume)
    on_step_end(trainer, logs)    after each step; ``logs``: that step's values (tensors or numbers)
    on_fit_end(trainer)           after the last step, when training completed
    on_close(trainer, failed)     always, last, in reverse order (release files, bars, signal handlers)

:func:`default_hooks` builds the usual ones from their own settings (the ``trainer:`` config keys in
:data:`HOOK_SETTINGS`; the trainer itself takes only the step mechanics'). Attach one more with
``trainer.fit(hooks=[*default_hooks(log_every=50), MyHook()])``. Hooks run in list order; the defaults are
``[ProgressLog, StopPolicy, Checkpointing, SampleGrids, Evaluation]``, so a step is logged, then a stop request
is honoured, then the step is checkpointed, drawn and evaluated. A hook that keeps extra state
in checkpoints (an EMA snapshot, say) reads ``trainer.step`` and ``trainer.objective`` at ``on_step_end``; give it
to the trainer (``Trainer(hooks=[...])``): it then runs before the others, so a checkpoint of step t holds its
state after step t, and its ``state_dict()`` is saved in the checkpoint and restored on resume.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from dae_gen import distributed as D
from dae_gen.checkpoint import describe_os_error
from dae_gen.errors import TrainingDiverged, TrainingInterrupted
from dae_gen.run_dir import MetricsLog, RunDirError, StopSignals
from dae_gen.run_folder import RunDir

if TYPE_CHECKING:
    from dae_gen.trainer import Trainer

log = logging.getLogger("dae_gen.trainer")


class Hook:
    """A hook that does nothing: subclass it and override what you need (see the module docstring)."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer") -> None:
        pass

    def on_close(self, trainer: "Trainer", failed: bool) -> None:
        pass


def call_hooks(hooks: Sequence[Any], event: str, *args: Any) -> None:
    """Call ``event`` on each hook that has it, in order."""
    for hook in hooks:
        method = getattr(hook, event, None)
        if method is not None:
            method(*args)


class ProgressLog(Hook):
    """The announcement, ``metrics.jsonl`` (+ TensorBoard) every ``log_every`` steps, the progress bar, and the
    closing summary; rank 0 writes. ``metrics`` is the open log, for other hooks (evaluation rows)."""

    def __init__(self, *, log_every: int, progress: bool = True, tensorboard: bool = True):
        if int(log_every) < 0:
            raise ValueError(f"log_every must be >= 0 (0 disables), got {log_every}")
        self.log_every, self.progress, self.tensorboard = int(log_every), progress, tensorboard
        self.metrics: MetricsLog | None = None
        self.last: dict[str, float] = {}

    def on_fit_start(self, trainer: "Trainer") -> None:
        trainer.announce()
        self.metrics = D.on_main(lambda: RunDir(trainer.run_dir).metrics_log(
            resume_step=trainer.step, tensorboard=self.tensorboard))  # None off rank 0
        self.bar = tqdm(total=trainer.steps, initial=trainer.step, desc="train", dynamic_ncols=True,
                        disable=not (self.progress and D.is_main_process()))
        self.started, self.start_step = time.perf_counter(), trainer.step

    def on_step_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if self.log_every and (trainer.step % self.log_every == 0 or trainer.step == trainer.steps):
            values = {k: float(D.all_mean(v) if isinstance(v, Tensor) else v) for k, v in logs.items()}
            values["steps_per_s"] = (trainer.step - self.start_step) / max(time.perf_counter() - self.started, 1e-9)
            D.on_main(lambda: self.metrics.write(trainer.step, values))
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k.startswith("loss/")})
            self.last = values
        self.bar.update(1)

    def on_close(self, trainer: "Trainer", failed: bool) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if failed or not D.is_main_process():
            return
        losses = ", ".join(f"{k} {v:.4g}" for k, v in self.last.items() if k.startswith("loss/"))
        log.info("finished %d steps (%d this session) in %.1f s%s%s; newest checkpoint %s; newest grid %s",
                 trainer.step, trainer.step - self.start_step, time.perf_counter() - self.started,
                 f"; {losses}" if losses else "",
                 f"; {trainer.skipped_steps} non-finite steps skipped" if trainer.skipped_steps else "",
                 trainer.checkpoints.newest, trainer.newest_grid)


class StopPolicy(Hook):
    """Stop signals become a checkpoint at the finished step and :class:`TrainingInterrupted`; ``max_nonfinite_steps``
    non-finite steps in a row become :class:`TrainingDiverged` with what the newest checkpoint holds.

    signals:  names (SIGTERM: schedulers and ``kill``; SIGINT: Ctrl-C; SIGUSR1/SIGUSR2: SLURM's pre-timeout signal).
    """

    def __init__(self, *, signals: Sequence[str], max_nonfinite_steps: int):
        if int(max_nonfinite_steps) < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1, got {max_nonfinite_steps}")
        self.signals = StopSignals(signals)  # a misspelt signal fails now, not at the first Ctrl-C
        self.max_nonfinite_steps = int(max_nonfinite_steps)

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived in this process (long work such as a grid checks it)."""
        return self.signals.received is not None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.signals.__enter__()

    def on_step_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        received = D.max_over_ranks(int(self.signals.received or 0), trainer.device)  # all ranks stop together
        if received:
            self._stop_on_signal(trainer, signal.Signals(int(received)))
        if trainer.nonfinite_streak >= self.max_nonfinite_steps:
            self._stop_diverged(trainer)

    def on_close(self, trainer: "Trainer", failed: bool) -> None:
        self.signals.__exit__(None, None, None)

    def _stop_on_signal(self, trainer: "Trainer", received: signal.Signals) -> None:
        written = trainer.checkpoint_step()
        D.barrier()  # every rank leaves only once the checkpoint is on disk
        self.signals.forward()  # hand the signal on (submitit requeues)
        where = (f"checkpoint {trainer.checkpoints.newest} written." if written else
                 f"no checkpoint at this step (its loss was not finite). {trainer.checkpoints.describe_newest()}")
        raise TrainingInterrupted(f"{received.name} received: stopped after step {trainer.step}/{trainer.steps}; "
                                  f"{where} Run the same command to resume.", int(received))

    def _stop_diverged(self, trainer: "Trainer") -> None:
        streak, checkpoints = trainer.nonfinite_streak, trainer.checkpoints
        first = trainer.step - streak + 1
        last = trainer.last_nonfinite
        suspect = ""
        if checkpoints.newest_step == first - 1:  # written just before the first non-finite loss
            suspect = (" Its weights gave the first non-finite loss, so resuming from it will likely diverge again: "
                       "move it aside to resume from the one before.")
        raise TrainingDiverged(
            f"{streak} steps in a row ({first}–{trainer.step}) had a non-finite loss or gradient (last: "
            f"phase {last.get('phase')!r}, loss={last.get('loss')}, grad_norm={last.get('grad_norm')}); their updates "
            f"were skipped and training stopped. {checkpoints.describe_newest()}{suspect} Lower "
            "trainer.optimizer.lr or set trainer.grad_clip; the same command then "
            f"{'starts the run afresh' if checkpoints.newest is None else 'resumes from the newest checkpoint'}.")


class Checkpointing(Hook):
    """A step checkpoint every ``every`` steps (0: only the final one) and at the end."""

    def __init__(self, *, every: int):
        if int(every) < 0:
            raise ValueError(f"ckpt_every must be >= 0 (0 disables), got {every}")
        self.every = int(every)

    def on_step_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if self.every and trainer.step % self.every == 0:
            trainer.checkpoint_step()

    def on_fit_end(self, trainer: "Trainer") -> None:
        trainer.checkpoint_step()


class _GridAborted(Exception):
    """A stop signal arrived while a sample grid was being drawn."""


class SampleGrids(Hook):
    """A grid of ``n_samples`` EMA samples (fixed seed) every ``every`` steps and at the end, on rank 0:
    ``samples/samples_<step>.png`` and a copy as ``samples.png``. A stop request abandons a grid in progress.

    sampler:       driver ``(model, n, generator=, callback=) -> Tensor``.
    save_samples:  ``(samples, path) -> None`` writing a grid or scatter plot.
    stop:          the :class:`StopPolicy` whose request abandons a grid (None: grids always finish).
    """

    def __init__(self, *, sampler: Callable[..., Tensor], save_samples: Callable[[Tensor, Path], None], every: int,
                 n_samples: int = 64, progress: bool = True, stop: StopPolicy | None = None):
        if int(every) < 0:
            raise ValueError(f"sample_every must be >= 0 (0 disables), got {every}")
        self.sampler, self.save_samples, self.every = sampler, save_samples, int(every)
        self.n_samples, self.progress, self.stop = int(n_samples), progress, stop

    def on_step_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if self.every and trainer.step % self.every == 0:
            D.on_main(lambda: self.write(trainer))

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.every == 0 or trainer.step % self.every:
            D.on_main(lambda: self.write(trainer))

    def write(self, trainer: "Trainer") -> None:
        def abort_on_stop(info) -> None:
            if self.stop is not None and self.stop.requested:
                raise _GridAborted

        try:
            samples = trainer.sample(self.n_samples, sampler=self.sampler, progress=self.progress,
                                     callback=abort_on_stop)
        except _GridAborted:
            log.info("sample grid at step %d abandoned: stopping", trainer.step)
            return
        run = RunDir(trainer.run_dir)
        path = run.grid_file(trainer.step)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.save_samples(samples, path)
            shutil.copyfile(path, run.newest_grid_file)  # the newest grid, under a fixed name
        except OSError as err:
            raise RunDirError(f"cannot write the sample grid {path}: {describe_os_error(err)}") from None
        trainer.newest_grid = path


class Evaluation(Hook):
    """The evaluator on the EMA model every ``every`` steps (rank 0): ``eval/<metric>`` rows in the metrics log,
    and ``best.pt`` kept by ``best_metric`` (lower is better; the best value is part of the trainer's state).

    evaluator:  ``(model, step) -> dict`` of metrics (e.g. FID).
    metrics:    the :class:`ProgressLog` whose open log receives the rows.
    """

    def __init__(self, *, evaluator: Callable[[nn.Module, int], dict[str, float]], every: int,
                 best_metric: str = "fid", metrics: ProgressLog):
        if int(every) < 0:
            raise ValueError(f"eval_every must be >= 0 (0 disables), got {every}")
        self.evaluator, self.every, self.best_metric, self.metrics = evaluator, int(every), best_metric, metrics

    def on_step_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if self.every and trainer.step % self.every == 0:
            D.on_main(lambda: self.evaluate(trainer))

    def evaluate(self, trainer: "Trainer") -> None:
        metrics = self.evaluator(trainer.ema.module, trainer.step)
        self.metrics.metrics.write(trainer.step, {f"eval/{k}": float(v) for k, v in metrics.items()})
        value = metrics.get(self.best_metric)
        if value is not None and float(value) < trainer.best:
            trainer.best = float(value)
            trainer.checkpoints.save_as(trainer.state_dict(), "best.pt")


#: The ``trainer:`` config keys that are settings of :func:`default_hooks`, not arguments of the trainer.
HOOK_SETTINGS = ("log_every", "ckpt_every", "sample_every", "eval_every", "n_samples", "best_metric", "stop_signals",
                 "max_nonfinite_steps", "progress", "tensorboard")


def default_hooks(*, log_every: int = 100, ckpt_every: int = 1000, sample_every: int = 1000, eval_every: int = 0,
                  n_samples: int = 64, best_metric: str = "fid",
                  stop_signals: Sequence[str] = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"),
                  max_nonfinite_steps: int = 10, progress: bool = True, tensorboard: bool = True,
                  sampler: Callable[..., Tensor] | None = None,
                  save_samples: Callable[[Tensor, Path], None] | None = None,
                  evaluator: Callable[[nn.Module, int], dict[str, float]] | None = None) -> list[Hook]:
    """The hooks of a training run, in the order they run: log, stop policy, checkpoint, grid, evaluation.

    log_every / ckpt_every / sample_every / eval_every: periods in steps (0 disables the periodic work; a final
                     checkpoint and sample grid are always written at the end).
    n_samples:       examples per sample grid; ``sampler``/``save_samples`` draw and write it (no grids without both).
    evaluator:       ``(model, step) -> dict`` of metrics (e.g. FID), run every ``eval_every`` steps; ``best.pt`` is
                     kept by its ``best_metric`` (lower is better). No evaluation without it.
    stop_signals:    signals that stop training after the step in flight, with a checkpoint at that step
                     (SIGTERM: schedulers and ``kill``; SIGINT: Ctrl-C; SIGUSR1/SIGUSR2: SLURM's pre-timeout
                     signal, ``--signal=USR1@120`` in a batch script, USR2 from submitit).
    max_nonfinite_steps: stop after this many consecutive steps with a non-finite loss or gradient (1: stop at the
                     first one); the trainer skips and counts isolated ones.
    progress / tensorboard: the progress bars, and TensorBoard events next to ``metrics.jsonl``.
    """
    progress_log = ProgressLog(log_every=log_every, progress=progress, tensorboard=tensorboard)
    stop = StopPolicy(signals=stop_signals, max_nonfinite_steps=max_nonfinite_steps)
    hooks: list[Hook] = [progress_log, stop, Checkpointing(every=ckpt_every)]
    grids = SampleGrids(sampler=sampler, save_samples=save_samples, every=sample_every, n_samples=n_samples,
                        progress=progress, stop=stop)  # built (and checked) even when there is nothing to draw
    if sampler is not None and save_samples is not None:
        hooks.append(grids)
    evaluation = Evaluation(evaluator=evaluator, every=eval_every, best_metric=best_metric, metrics=progress_log)
    if evaluator is not None:
        hooks.append(evaluation)
    return hooks


__all__ = ["Checkpointing", "Evaluation", "HOOK_SETTINGS", "Hook", "ProgressLog", "SampleGrids", "StopPolicy",
           "call_hooks", "default_hooks"]
