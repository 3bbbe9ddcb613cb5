"""How a Hydra entry point runs: where the configs live, the command line as typed, one-line user errors.

Every CLI's ``main`` is ``run_cli(<the Hydra app>, ...)``: it registers the config resolvers, records the command
line and start time, sets up the console log, lets ``sampler.KEY=VALUE`` reach any sampler (see
:func:`open_sampler_overrides`), and prints a user error (ours, Hydra's composition and override errors,
OmegaConf's) as one line on stderr with exit status 1. ``HYDRA_FULL_ERROR=1`` shows the traceback instead; any
other exception is a bug and always keeps its traceback. Importing this module changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dae_gen.cli.errors import is_user_error, one_line
from dae_gen.cli.logs import setup_console_logging
from dae_gen.run_folder import RunDir, new_output_dir

#: Hydra's config path: the configs installed with the package (``configs/`` in the source tree).
CONFIG_PATH = "pkg://dae_gen.configs"
_STARTED: float | None = None  # when run_cli started this launch
_COMMAND_LINE: list[str] | None = None  # the command line as typed (before open_sampler_overrides)


def run_folder(run: str | None, default: str) -> str:
    """OmegaConf resolver ``${dae_gen.run_folder:RUN,DEFAULT}``: the run directory of a run directory or a
    checkpoint file (``<run>/checkpoints/ckpt_N.pt`` → ``<run>``), or ``default`` when RUN is null."""
    if run is None or str(run) in ("", "None", "null"):
        return default
    path = Path(str(run))
    return str(RunDir.of(path).path)


def register_resolvers() -> None:
    """Register the OmegaConf resolvers the configs use (``dae_gen.run_folder``); idempotent."""
    OmegaConf.register_new_resolver("dae_gen.run_folder", run_folder, replace=True)


def process_start() -> float:
    """When this launch started (set by :func:`run_cli`): a folder created after it (by Hydra, for this launch)
    may be removed on failure."""
    global _STARTED
    if _STARTED is None:
        _STARTED = time.time()
    return _STARTED


@contextlib.contextmanager
def removed_if_refused(run_dir: Path) -> Iterator[None]:
    """Run the block; if it fails and Hydra created ``run_dir`` for this launch and it is still empty, remove it
    (a refused launch leaves no folder behind)."""
    created = run_dir.is_dir() and run_dir.stat().st_ctime >= process_start() - 1 and not any(run_dir.iterdir())
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise


def command_line(prog: str | None = None) -> str:
    """The command line of this process as typed: ``dae-gen-train trainer.steps=800 ...``."""
    import shlex

    args = _COMMAND_LINE if _COMMAND_LINE is not None else sys.argv
    name = prog or Path(args[0]).name
    return " ".join([name, *map(shlex.quote, args[1:])])


def explicit_output_dir(cfg: DictConfig) -> Path | None:
    """``out=DIR`` of a sample/eval command line, or ``hydra.run.dir=DIR`` when given on it; else None."""
    if cfg.get("out"):
        return Path(str(cfg.out))
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:  # not inside a Hydra app
        return None
    if any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in hydra_cfg.overrides.hydra):
        return Path(hydra_cfg.run.dir)
    return None


_SHOW_TRACEBACK = False
_FAILURES: list[BaseException] = []


def reports_user_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task function so that a user error ends the job quietly and :func:`run_cli` prints it as one
    line (Hydra itself would first print "Error executing job with overrides ..."). Under ``--multirun`` the
    other jobs still run; every failure is reported at the end."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            if _SHOW_TRACEBACK or not is_user_error(err):
                raise
            _FAILURES.append(err)
            return None

    return wrapped


def run_cli(app: Callable[[], Any], prog: str) -> None:
    """Run a Hydra app as a console script (see the module docstring)."""
    global _SHOW_TRACEBACK, _COMMAND_LINE, _STARTED
    _STARTED = time.time()
    _COMMAND_LINE = list(sys.argv)  # as typed, before the sampler overrides are opened
    register_resolvers()
    sys.argv[1:] = open_sampler_overrides(sys.argv[1:])
    setup_console_logging()
    _SHOW_TRACEBACK = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own multi-line report
    _FAILURES.clear()
    try:
        app()
    except Exception as err:
        if _SHOW_TRACEBACK or not is_user_error(err):
            raise
        _FAILURES.append(err)
    finally:
        if not _SHOW_TRACEBACK:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if _FAILURES:
        for err in _FAILURES:
            sys.stderr.write(f"{prog}: error: {one_line(err)}\n")
        sys.exit(getattr(_FAILURES[0], "exit_code", 1))  # 1, or a stop signal's 128 + N


def open_sampler_overrides(args: list[str]) -> list[str]:
    """``sampler.KEY=VALUE`` → ``++sampler.KEY=VALUE``, so a setting reaches any sampler.

    The sampler node holds whatever its driver takes (and is empty for ``sampler=from_run``), so Hydra's struct
    check cannot know its keys; :func:`dae_gen.run.build_sampler` checks them against the driver instead and
    names an unknown one in one line.
    """
    return [f"++{a}" if re.match(r"^sampler\.[\w.]+=", a) else a for a in args]


__all__ = ["CONFIG_PATH", "command_line", "explicit_output_dir", "new_output_dir", "open_sampler_overrides",
           "process_start", "register_resolvers", "removed_if_refused", "reports_user_errors", "run_cli", "run_folder"]
