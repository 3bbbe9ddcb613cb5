"""Checks of a composed config before anything is built from it, building a node with errors that name its key,
and the thread count every CLI sets."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dae_gen.errors import ConfigError, DaeGenError
from dae_gen.settings import check_keywords, check_value


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


def check_output_folder(key: str, path: Any) -> None:
    """An output folder given on the command line (``out=``) must be creatable and writable; checked before any
    work, so a bad path costs nothing. Probes with a temporary folder in its nearest existing ancestor."""
    if path is None:
        return
    folder = Path(str(path)).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}: {folder} exists and is not a folder; give a folder to write into")
    ancestor = folder
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key}: cannot create {folder}: {ancestor} is not a folder")
    try:
        tempfile.TemporaryDirectory(dir=ancestor, prefix=".dae_gen_probe_").cleanup()
    except OSError as err:
        raise ConfigError(f"{key}: cannot write to {folder} ({err.strerror or err}); give a writable folder") from err


def check_choice(key: str, value: Any, choices: tuple) -> None:
    """``value`` must be one of ``choices`` (a ConfigError names ``key`` and lists them)."""
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_number(key: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                 integer: bool = False, strict: bool = False) -> None:
    """``value`` must be a number (an int with ``integer``) ≥ ``minimum`` (> with ``strict``) and ≤ ``maximum``."""
    kind = int if integer else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"greater than {minimum}" if strict else f"at least {minimum}"
        raise ConfigError(f"{key}: must be {bound}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}: must be at most {maximum}, got {value!r}")


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


__all__ = ["building", "check_arguments", "check_choice", "check_number", "check_output_folder", "check_positive",
           "check_threads", "check_values", "set_threads"]
