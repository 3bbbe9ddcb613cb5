"""What the Hydra entry points share: where the configs live, logging, one-line errors, config checks, and the
sampler a command line asks for.

Every CLI's ``main`` is ``run_cli(<the Hydra app>, ...)``: it sets up the console log, lets ``sampler.KEY=VALUE``
reach any sampler (see :func:`open_sampler_overrides`), and prints a user error (ours, Hydra's composition and
override errors, OmegaConf's) as one line on stderr with exit status 1. ``HYDRA_FULL_ERROR=1`` shows the
traceback instead; any other exception is a bug and always keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dae_gen.errors import ConfigError, DaeGenError
from dae_gen.run import Run, run_directory
from dae_gen.settings import check_keywords, check_value

#: Hydra's config path: the configs installed with the package (``configs/`` in the source tree).
CONFIG_PATH = "pkg://dae_gen.configs"
#: One format for the console and for a run's ``train.log``, so the two hold the same lines.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG_FILE = "train.log"
#: When this process started: a folder created after it (by Hydra, for this launch) may be removed on failure.
PROCESS_START = time.time()
#: The command line as the user typed it (before :func:`open_sampler_overrides`), for run records.
COMMAND_LINE: list[str] = list(sys.argv)


# -- where things go -----------------------------------------------------------------------------------------
def run_folder(run: str | None, default: str) -> str:
    """OmegaConf resolver ``${dae_gen.run_folder:RUN,DEFAULT}``: the run directory of a run directory or a
    checkpoint file (``<run>/checkpoints/ckpt_N.pt`` → ``<run>``), or ``default`` when RUN is null."""
    if run is None or str(run) in ("", "None", "null"):
        return default
    path = Path(str(run))
    return str(run_directory(path) if path.is_file() or path.suffix == ".pt" else path)


OmegaConf.register_new_resolver("dae_gen.run_folder", run_folder, replace=True)


def command_line(prog: str | None = None) -> str:
    """The command line of this process as typed: ``dae-gen-train trainer.steps=800 ...``."""
    import shlex

    name = prog or Path(COMMAND_LINE[0]).name
    return " ".join([name, *map(shlex.quote, COMMAND_LINE[1:])])


def new_output_dir(parent: Path, stamp: str | None = None) -> Path:
    """``parent/<date_time>`` not yet taken (``..._2``, ``..._3`` when several commands start in one second)."""
    stamp = stamp or time.strftime("%Y-%m-%d_%H-%M-%S")
    path, k = parent / stamp, 1
    while path.exists():
        k += 1
        path = parent / f"{stamp}_{k}"
    return path


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


# -- logging -------------------------------------------------------------------------------------------------
class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def setup_console_logging() -> None:
    """dae_gen's log on the console: information on stdout, warnings and errors on stderr (idempotent)."""
    logger = logging.getLogger("dae_gen")
    if any(getattr(h, "dae_gen_console", False) for h in logger.handlers):
        return
    formatter = logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT)
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.addFilter(_BelowWarning())
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(formatter)
        handler.dae_gen_console = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Hydra's or a notebook's root handlers would print every line twice


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collected_log() -> Iterator[list[logging.LogRecord]]:
    """The records dae_gen logs while the block runs (a launch's lines before its ``train.log`` may be written)."""
    logger = logging.getLogger("dae_gen")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@contextmanager
def run_log(run_dir: Path, earlier: list[logging.LogRecord] = ()) -> Iterator[logging.Handler]:
    """Append dae_gen's log to ``run_dir/train.log`` while the block runs (the same lines as the console).

    Attached only once a launch is validated, so a refused command leaves ``train.log`` as it was; the lines
    logged before that (``earlier``, see :func:`collected_log`) are written first. An error that ends the block
    is written there too, as the one line the console shows.
    """
    logger = logging.getLogger("dae_gen")
    handler = logging.FileHandler(run_dir / LOG_FILE, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    handler.setLevel(logging.INFO)
    for record in earlier:
        handler.handle(record)
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    except BaseException as err:
        if is_user_error(err):
            message = one_line(err)
        elif isinstance(err, Exception):
            message = f"{type(err).__name__}: {err} (a bug: the console shows its traceback)"
        else:
            message = f"stopped by {type(err).__name__}"
        handler.handle(logging.LogRecord("dae_gen.cli", logging.ERROR, __file__, 0, message, None, None))
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


# -- one-line errors -----------------------------------------------------------------------------------------
def is_user_error(err: BaseException) -> bool:
    """Bad input rather than a bug: our own errors, Hydra's composition/override errors, OmegaConf's errors."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, InstantiationException):
        return False
    return isinstance(err, (DaeGenError, HydraException, OmegaConfBaseException))


def one_line(err: BaseException) -> str:
    """An error message on one line: Hydra's option lists joined, OmegaConf's ``full_key`` kept as the key."""
    from omegaconf.errors import OmegaConfBaseException

    cause = err.__cause__
    text = str(err)
    if cause is not None and isinstance(cause, OmegaConfBaseException):
        if "not in struct" in str(cause) and (m := re.search(r"Could not override '([^']+)'", text)):
            return (f"{m[1]}: no such key in the config this command line composes (check its spelling and the "
                    f"experiment= or group it belongs to; to add a new key use +{m[1]}=VALUE)")
        text = f"{text}\n{cause}"
    if type(err).__name__ == "OverrideParseException" and getattr(err, "override", None):
        text = f"cannot parse the override {err.override!r}: {text}"
    key = getattr(err, "full_key", None)
    if isinstance(err, OmegaConfBaseException) and type(err).__name__ == "MissingMandatoryValue" and key:
        return f"{key} is required: pass {key}=..."
    parts: list[str] = []
    listing: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("object_type=", "reference_type=", "full_key:")):
            continue
        if line.startswith("Config search path"):
            break
        if raw.startswith("\t") and listing is not None:
            listing.append(line)
            continue
        if listing is not None:
            parts[-1] += " " + ", ".join(listing)
            listing = None
        parts.append(line)
        if line.endswith(":") and line.startswith("Available options"):
            listing = []
    if listing:
        parts[-1] += " " + ", ".join(listing)
    message = "; ".join(p.rstrip(".;") for p in parts)
    if key and isinstance(err, OmegaConfBaseException) and key not in message:
        message = f"{key}: {message}"
    return message


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
    global _SHOW_TRACEBACK
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


# -- checking a config before building from it ---------------------------------------------------------------
def check_arguments(node: Any, key: str = "", *, skip: tuple[str, ...] = ()) -> None:
    """Check every ``_target_`` node of a config before anything is built from it: each key is an argument of
    its target, with a value of the annotated type (``trainer.steps=abc`` → "trainer.steps: expected int, got
    'abc'"). A ConfigError names the first bad key. ``skip``: top-level keys checked elsewhere."""
    from hydra.utils import get_object

    if isinstance(node, Mapping):
        if "_target_" in node:
            try:
                target = get_object(str(node["_target_"]))
            except Exception as err:
                raise ConfigError(f"{key or 'config'}._target_: cannot import {node['_target_']!r} "
                                  f"({str(err).splitlines()[0]})") from err
            check_keywords(target, node, where=key)
        for name, value in node.items():
            if not str(name).startswith("_") and not (not key and name in skip):
                check_arguments(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_arguments(value, f"{key}[{i}]")


def check_values(cfg: Mapping, schema: Mapping[str, Any]) -> None:
    """Check the top-level keys of a CLI config against ``{key: type hint}`` (``n_samples: int`` ...)."""
    for name, hint in schema.items():
        if name in cfg:
            check_value(cfg[name], hint, where=name)


def check_positive(cfg: Mapping, *keys: str) -> None:
    """Each dotted key present in ``cfg`` must be a positive number (e.g. learning rates, sample counts)."""
    for key in keys:
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None and not (isinstance(node, (int, float)) and not isinstance(node, bool) and node > 0):
            raise ConfigError(f"{key} must be positive, got {node!r}")


def check_threads(threads: Any) -> None:
    """``threads`` must be a positive int, ``auto`` or null (= auto)."""
    if threads is None or threads == "auto":
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads: expected a positive int or auto, got {threads!r}")


def set_threads(threads: Any, *, device: Any = "cpu", workload: Callable[[], object] | None = None) -> Any:
    """``threads=K``: torch's CPU threads; ``auto`` (or null): the rule of :func:`dae_gen.threads.configure_threads`,
    probing ``workload`` (the job's real step). Every CLI sets its threads here; the choice is logged and returned."""
    check_threads(threads)
    from dae_gen.threads import configure_threads

    choice = configure_threads(threads, device=device, workload=workload)
    logging.getLogger("dae_gen.cli").info("torch threads: %s", choice)
    return choice


@contextmanager
def building(key: str) -> Iterator[None]:
    """Build the ``key`` node of a config: our own errors pass unchanged; a ValueError (a constructor refusing a
    value) becomes one ConfigError that names the key."""
    from hydra.errors import InstantiationException

    try:
        yield
    except DaeGenError:
        raise
    except InstantiationException as err:
        cause: BaseException | None = err
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, DaeGenError):
            raise cause from None
        if isinstance(cause, ValueError):
            raise ConfigError(f"{key}: {str(cause).splitlines()[0]}") from err
        raise
    except ValueError as err:
        raise ConfigError(f"{key}: {str(err).splitlines()[0]}") from err


# -- samplers ------------------------------------------------------------------------------------------------
def cli_sampler(run: Run, sampler_cfg: DictConfig | None) -> tuple[Any, dict]:
    """The sampler of a ``dae-gen-sample`` / ``dae-gen-eval`` command line and its exact settings.

    A full sampler preset (``sampler=NAME``, has ``_target_``) is used as given; otherwise the run's own sampler
    with the command line's settings (``sampler.KEY=VALUE``) put over it.
    """
    settings = OmegaConf.to_container(sampler_cfg, resolve=True) if sampler_cfg is not None else {}
    if "_target_" in settings:
        return run.sampler(settings)
    return run.sampler(None, **settings)


def sampler_label(settings: Mapping[str, Any]) -> str:
    """A sampler's short name for titles: ``...langevin.sample_annealed_langevin`` → ``annealed_langevin``."""
    return str(settings.get("_target_", "sampler")).rsplit(".", 1)[-1].removeprefix("sample_")


__all__ = ["CONFIG_PATH", "LOG_FILE", "LOG_FORMAT", "building", "check_arguments", "check_positive", "check_threads",
           "check_values",
           "cli_sampler", "collected_log", "command_line", "explicit_output_dir", "is_user_error", "new_output_dir",
           "one_line", "open_sampler_overrides", "reports_user_errors", "run_cli", "run_folder", "run_log",
           "sampler_label", "set_threads", "setup_console_logging"]
