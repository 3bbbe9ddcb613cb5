"""Which errors are the user's (bad input, shown as one line) and how they read on one line."""

from __future__ import annotations

import re

from dae_gen.errors import DaeGenError


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


__all__ = ["is_user_error", "one_line"]
