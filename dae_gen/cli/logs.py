"""dae_gen's log on the console and in a run's ``train.log``, in one format (the two hold the same lines)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dae_gen.cli.errors import is_user_error, one_line
from dae_gen.run_folder import LOG_FILE

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


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


__all__ = ["LOG_DATE_FORMAT", "LOG_FILE", "LOG_FORMAT", "collected_log", "run_log", "setup_console_logging"]
