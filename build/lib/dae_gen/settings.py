"""Checking keyword settings against the function they are for, before calling it.

A config node (or a sampler's settings) becomes keyword arguments of one function. Checking each key against
that function's signature and annotations turns a typo or a wrong type into one error naming the key
(``trainer.steps: expected int, got 'abc' (str)``) instead of a failure deep inside, minutes later.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

from dae_gen.errors import ConfigError


def type_name(hint: Any) -> str:
    """``int | None`` → ``"int or null"`` (the YAML word for None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def matches(value: Any, hint: Any) -> bool | None:
    """Whether a config value (None, bool, int, float, str, list, dict) fits the annotation ``hint``: True, False,
    or None when the annotation is not one a config value can be checked against (a Tensor, a callable ...)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [matches(value, arg) for arg in typing.get_args(hint)]
        return True if True in verdicts else (None if None in verdicts else False)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple) or getattr(origin, "__name__", "") == "Sequence":
        return isinstance(value, (list, tuple))
    if hint is dict or origin is dict or getattr(origin, "__name__", "") == "Mapping":
        return isinstance(value, Mapping)
    return None


def check_value(value: Any, hint: Any, *, where: str) -> None:
    """A ConfigError naming ``where`` unless ``value`` fits ``hint`` (or cannot be checked against it)."""
    if matches(value, hint) is False:
        raise ConfigError(f"{where}: expected {type_name(hint)}, got {value!r} ({type(value).__name__})")


def check_keywords(function: Callable, values: Mapping[str, Any], *, where: str, noun: str = "argument",
                   exclude: Collection[str] = ()) -> None:
    """Each key of ``values`` (keys starting with ``_`` skipped) must be a keyword of ``function`` (unless it takes
    ``**kwargs``), with a value of the annotated type; a value that is itself a ``_target_`` node is not checked.

    where:    the config path of ``values`` for messages, e.g. ``"trainer"``.
    noun:     what the keys are called in messages (``"argument"``, ``"setting"``).
    exclude:  parameters that are not settings (e.g. a sampler's ``model``, ``n``).
    """
    target = function.__init__ if inspect.isclass(function) else function
    label = getattr(function, "__name__", str(function))
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that cannot be evaluated here: check names only
        hints = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    names = [n for n, p in parameters.items() if n != "self" and n not in exclude
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for name, value in values.items():
        name = str(name)
        if name.startswith("_"):
            continue
        key = f"{where}.{name}" if where else name
        if name not in names:
            if takes_any and name not in exclude:
                continue
            raise ConfigError(f"{key}: {label} has no {noun} {name!r}; its {noun}s are {names}")
        if isinstance(value, Mapping) and "_target_" in value:
            continue
        if name in hints:
            check_value(value, hints[name], where=key)


__all__ = ["check_keywords", "check_value", "matches", "type_name"]
