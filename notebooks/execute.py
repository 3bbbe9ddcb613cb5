"""Re-execute the notebooks in place, with their figures, and record what they ran against.

    python notebooks/execute.py                      # every notebook in notebooks/ (a few CPU minutes)
    python notebooks/execute.py notebooks/02_three_routes.ipynb
    python notebooks/execute.py --check              # only report stale notebooks (what tests/test_notebooks.py does)

Each notebook runs top to bottom in a fresh kernel (nbclient, as nbmake does in CI) from the notebooks/ folder and
is saved with its outputs, so a reader sees every figure on the code host without running anything. Its metadata
``dae_gen`` then holds a fingerprint of what produced those outputs:

- ``code_sha256``: the SHA-256 of its code cells' sources (markdown may change freely);
- ``api_sha256`` and ``api``: the public API it ran against, one short digest per public name (see
  :func:`public_api`), so that a stale notebook's check can say which names changed;
- the CPU and wall seconds the run took, and the Python, torch and dae_gen versions (information only).

``tests/test_notebooks.py`` fails when a committed notebook's fingerprint differs from the current code cells or
public API, or when its code cells were not all executed in order without errors; the cure is this command.

**The public API**, as fingerprinted: every module of the ``dae_gen`` package except ``dae_gen.cli`` (the command
lines' internals) and private modules (a name part starting with ``_``). A module's public names are its ``__all__``
(less dunder metadata such as ``__version__``) when it has one, else the functions and classes it defines whose
names do not start with ``_``. Each name is described by what a caller relies on, never by its body or docstring:

- a function: its signature (parameter names, kinds, defaults, annotations);
- a class: its bases, its constructor's signature (when a dae_gen class defines one), and each public method
  (signature), property and class attribute it or a dae_gen base class defines, with the fields it annotates;
- a constant: its value when it is a plain literal (numbers, strings, tuples of them), else its type;
- the sampler configs that ship in ``dae_gen.configs`` (``sampler=NAME``, ``Run.sample(sampler=NAME)``), by their
  settings: they are the defaults a notebook asks for by name.

So a renamed argument, a changed default, a new or removed public function, or a changed sampler preset marks the
notebooks stale; an edit inside a function body, a private helper, a docstring or a CLI module does not.
Notebook cells tagged ``figure:NAME`` also have their (last) PNG output written to ``notebooks/figures/NAME.png``,
the pictures README.md shows, so they are as current as the notebooks.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import inspect
import json
import pkgutil
import platform
import re
import resource
import sys
import time
import types
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent
FIGURES = NOTEBOOKS / "figures"
COMMAND = "python notebooks/execute.py"
METADATA_KEY = "dae_gen"
FIGURE_TAG = "figure:"
PACKAGE = "dae_gen"
PRIVATE_SUBPACKAGES = ("cli",)  # dae_gen.cli: the command lines' internals, not part of the Python API
CELL_TIMEOUT_S = 1200


# -- the public API ----------------------------------------------------------------------------------------
def public_modules(package: str = PACKAGE) -> list[str]:
    """The package and its modules, minus private ones (``_name``) and ``<package>.cli``, sorted."""
    root = importlib.import_module(package)
    names = [package] + [info.name for info in pkgutil.walk_packages(root.__path__, prefix=package + ".")]
    private = tuple(f"{package}.{sub}" for sub in PRIVATE_SUBPACKAGES)
    return sorted(name for name in names
                  if not any(part.startswith("_") for part in name.split("."))
                  and not any(name == p or name.startswith(p + ".") for p in private))


def public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, or the public functions and classes the module defines itself."""
    if hasattr(module, "__all__"):
        return sorted(name for name in module.__all__ if not name.startswith("__"))  # not __version__: metadata
    return sorted(name for name, obj in vars(module).items()
                  if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                  and getattr(obj, "__module__", None) == module.__name__)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _signature(obj: Any) -> str:
    try:
        return _ADDRESS.sub("", str(inspect.signature(obj)))
    except (TypeError, ValueError):  # a builtin without a signature
        return "(?)"


def _is_literal(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(_is_literal(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_literal(v) for k, v in value.items())
    return False


def _is_alias(value: Any) -> bool:
    return type(value).__module__ in ("typing", "types") or isinstance(value, types.GenericAlias)


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__forward_arg__", None) or _value(annotation)  # NamedTuple fields: ForwardRef


def _value(value: Any) -> str:
    if _is_literal(value):
        if isinstance(value, (set, frozenset)):  # in a fixed order, whatever the hash seed
            return f"{type(value).__name__}({sorted(value, key=repr)!r})"
        return repr(sorted(value.items()) if isinstance(value, dict) else value)
    if _is_alias(value):
        return "type alias"  # its text differs across Python versions; the signatures using it carry the meaning
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _member(obj: Any) -> str:
    if isinstance(obj, property):
        return "property"
    if isinstance(obj, (classmethod, staticmethod)):
        return f"{type(obj).__name__}{_signature(obj.__func__)}"
    if inspect.isfunction(obj):
        return _signature(obj)
    return _value(obj)


def _class(cls: type, package: str) -> str:
    own = [k for k in cls.__mro__ if k.__module__.split(".")[0] == package]  # members of the package's classes only
    members: dict[str, str] = {}
    for klass in reversed(own):  # subclasses override
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if not name.startswith("_"):
                members[name] = f"field: {_annotation(annotation)}"
        for name, obj in vars(klass).items():
            if (not name.startswith("_") or name == "__call__") and name not in members:
                members[name] = _member(obj)
    bases = ", ".join(f"{b.__module__}.{b.__qualname__}" for b in cls.__bases__)
    if getattr(cls, "_is_protocol", False):
        constructor = ""  # a protocol is not constructed; its generated __init__ differs across Python versions
    elif issubclass(cls, tuple) and hasattr(cls, "_fields"):
        constructor = f"({', '.join(cls._fields)})"  # a NamedTuple: its fields (annotated below)
    elif any("__init__" in vars(k) or "__new__" in vars(k) for k in own):
        constructor = _signature(cls)
    else:  # inherited from outside the package (an exception's, object's): its text varies across Python versions
        constructor = "(inherited)"
    body = "; ".join(f"{k}{v if v.startswith('(') else ' ' + v}" for k, v in sorted(members.items()))
    return f"class({bases}){constructor} {{{body}}}"


def describe(obj: Any, package: str = PACKAGE) -> str:
    """What a caller relies on of a public object (see the module docstring)."""
    if inspect.ismodule(obj):
        return f"module {obj.__name__}"
    if inspect.isclass(obj):
        return _class(obj, package)
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return f"function{_signature(obj)}"
    if callable(obj) and not _is_alias(obj):
        return f"callable {_value(obj)}{_signature(obj)}"
    return _value(obj)


def sampler_presets() -> dict[str, str]:
    """The shipped sampler configs (``dae_gen.configs/sampler/NAME.yaml``) by their settings."""
    from dae_gen.run import sampler_config, sampler_names

    return {f"{PACKAGE}.configs.sampler.{name}": json.dumps(sampler_config(name), sort_keys=True)
            for name in sampler_names()}


def public_api(package: str = PACKAGE) -> dict[str, str]:
    """``{"module.name": description}`` for every public name of every public module (and the sampler presets)."""
    api: dict[str, str] = {}
    for module_name in public_modules(package):
        module = importlib.import_module(module_name)
        for name in public_names(module):
            api[f"{module_name}.{name}"] = describe(getattr(module, name), package)
    if package == PACKAGE:
        api.update(sampler_presets())
    return dict(sorted(api.items()))


def _digest(text: str, length: int | None = None) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def api_digests(package: str = PACKAGE) -> dict[str, str]:
    """One 12-hex-digit digest per public name."""
    return {name: _digest(text, 12) for name, text in public_api(package).items()}


def api_sha256(digests: dict[str, str]) -> str:
    return _digest(json.dumps(digests, sort_keys=True))


# -- notebooks ---------------------------------------------------------------------------------------------
def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def code_sha256(nb: dict) -> str:
    """SHA-256 of the code cells' sources, in order (markdown cells and outputs excluded)."""
    return _digest(json.dumps([_source(cell) for cell in code_cells(nb)]))


def _png_outputs(cell: dict) -> list[bytes]:
    return [base64.b64decode(output["data"]["image/png"]) for output in cell.get("outputs", [])
            if "image/png" in output.get("data", {})]


def tagged_figures(nb: dict) -> dict[str, bytes]:
    """``{NAME: png}``: the last PNG output of each cell tagged ``figure:NAME``."""
    figures = {}
    for cell in code_cells(nb):
        for tag in cell.get("metadata", {}).get("tags", []):
            if tag.startswith(FIGURE_TAG):
                pngs = _png_outputs(cell)
                if pngs:
                    figures[tag.removeprefix(FIGURE_TAG)] = pngs[-1]
    return figures


def _changed_names(stored: dict[str, str], current: dict[str, str], limit: int = 8) -> str:
    changes = ([f"+{n}" for n in sorted(current.keys() - stored.keys())]
               + [f"-{n}" for n in sorted(stored.keys() - current.keys())]
               + [f"~{n}" for n in sorted(stored.keys() & current.keys()) if stored[n] != current[n]])
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more


def problems(nb: dict, *, digests: dict[str, str] | None = None, figures_dir: Path = FIGURES) -> list[str]:
    """Why a saved notebook's outputs may not be what its current code gives with the current public API
    (an empty list: it is current)."""
    found = []
    cells = code_cells(nb)
    counts = [cell.get("execution_count") for cell in cells]
    if counts != list(range(1, len(cells) + 1)):
        found.append(f"its code cells were not all executed in order, once, in one kernel (execution counts "
                     f"{counts}, expected 1 … {len(cells)})")
    errors = [i for i, cell in enumerate(cells, 1)
              if any(output.get("output_type") == "error" for output in cell.get("outputs", []))]
    if errors:
        found.append(f"code cells {errors} ended with an error")
    if not any(_png_outputs(cell) for cell in cells):
        found.append("it holds no figure (was it saved without outputs?)")
    record = nb.get("metadata", {}).get(METADATA_KEY)
    if not record:
        found.append(f"its metadata holds no '{METADATA_KEY}' fingerprint (it was not executed with {COMMAND})")
        return found
    if record.get("code_sha256") != code_sha256(nb):
        found.append("its code cells changed after it was executed")
    digests = api_digests() if digests is None else digests
    if record.get("api_sha256") != api_sha256(digests):
        found.append(f"the public API changed after it was executed: {_changed_names(record.get('api', {}), digests)}")
    for name, png in tagged_figures(nb).items():
        path = figures_dir / f"{name}.png"
        if not path.is_file() or path.read_bytes() != png:
            found.append(f"{path.relative_to(NOTEBOOKS.parent) if path.is_relative_to(NOTEBOOKS.parent) else path} "
                         "is not the figure its cell shows")
    return found


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(path: Path, *, digests: dict[str, str] | None = None) -> dict:
    """Run ``path`` top to bottom in a fresh kernel from the notebooks/ folder, store its outputs and fingerprint,
    write its tagged figures. Nothing is written if a cell fails."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start_wall, start_cpu = time.perf_counter(), _children_cpu_seconds()
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    wall, cpu = time.perf_counter() - start_wall, _children_cpu_seconds() - start_cpu
    import torch

    import dae_gen

    digests = api_digests() if digests is None else digests
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata[METADATA_KEY] = {
        "executed_with": COMMAND,
        "code_sha256": code_sha256(nb),
        "api_sha256": api_sha256(digests),
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": round(wall, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "dae_gen": dae_gen.__version__},
        "api": digests,
    }
    for name, png in tagged_figures(nb).items():
        FIGURES.mkdir(exist_ok=True)
        (FIGURES / f"{name}.png").write_bytes(png)
    nbformat.write(nb, path)
    return {"cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1), "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all in notebooks/)")
    parser.add_argument("--check", action="store_true", help="report stale notebooks and exit; execute nothing")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or notebook_paths()
    digests = api_digests()
    if args.check:
        stale = 0
        for path in paths:
            found = problems(json.loads(path.read_text()), digests=digests)
            stale += bool(found)
            print(f"{path.name}: " + ("current" if not found else "STALE: " + "; ".join(found)))
        return 1 if stale else 0
    for path in paths:
        print(f"{path.name}: running ...", flush=True)
        try:
            result = execute(path, digests=digests)
        except Exception as err:  # a failing cell: report it and leave the saved notebook as it was
            message = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # without the traceback's terminal colours
            print(f"{path.name}: FAILED, not saved: {message[-2000:]}", file=sys.stderr)
            return 1
        print(f"{path.name}: {result['cpu_seconds']} CPU s, {result['wall_seconds']} s wall, "
              f"{result['bytes'] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
