"""Finding dataset files on disk: the helpers every reader of a published on-disk format shares.

Readers look in a short list of candidate folders (a user's ``dataset.root`` in its common layouts, or the
files a Debian package installed) and raise one ``DataError`` naming what was expected where when nothing fits.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

PathLike = str | os.PathLike


def check_choice(what: str, value, choices: Sequence) -> None:
    """A ValueError naming ``what``, the allowed ``choices`` and the ``value`` found, unless it is allowed."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


def unique_dirs(dirs: Sequence[Path]) -> list[Path]:
    """``dirs`` without repeats, in their first order."""
    seen, unique = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def dpkg_files(package: str) -> tuple[list[Path], str]:
    """Files installed by a Debian package (``dpkg -L``), and why none were found if so."""
    try:
        done = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return [], f"`dpkg -L {package}` could not run: {err}"
    if done.returncode != 0:
        return [], f"`dpkg -L {package}` failed: {done.stderr.strip() or f'exit status {done.returncode}'}"
    return [Path(line) for line in done.stdout.splitlines() if line.strip()], ""


def find_in_dirs(names: Sequence[str], dirs: Sequence[Path]) -> list[Path] | None:
    """The first directory holding every ``name`` (``name`` or ``name.gz``): the paths, else None."""
    for directory in dirs:
        found = []
        for name in names:
            candidates = [directory / name, directory / f"{name}.gz"]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


def find_exact(names: Sequence[str], dirs: Sequence[Path]) -> list[Path] | None:
    """The first directory holding every ``name`` exactly: the paths, else None."""
    for directory in dirs:
        paths = [directory / name for name in names]
        if all(p.is_file() for p in paths):
            return paths
    return None


__all__ = ["PathLike", "check_choice", "dpkg_files", "find_exact", "find_in_dirs", "unique_dirs"]
