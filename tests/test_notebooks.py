"""The committed notebooks are current: executed top to bottom by ``python notebooks/execute.py`` from their present
code cells, against the present public API, with the README's figures exported from them (notebooks/execute.py says
what the fingerprint holds). CI re-executes the notebooks themselves through nbmake."""

import importlib
import importlib.util
import json
import re
import sys
import textwrap

import pytest

from conftest import REPO


def _load_execute():
    spec = importlib.util.spec_from_file_location("notebooks_execute", REPO / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute = _load_execute()
NOTEBOOKS = execute.notebook_paths()
EXPECTED = ["01_dae_is_a_score_model.ipynb", "02_three_routes.ipynb", "03_images.ipynb"]


@pytest.fixture(scope="module")
def digests():
    return execute.api_digests()


def test_the_three_notebooks_and_nothing_stale_beside_them():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_was_executed_from_its_code_and_the_current_public_api(path, digests):
    found = execute.problems(json.loads(path.read_text()), digests=digests)
    assert not found, (f"{path.name} is stale: {'; '.join(found)}. Re-execute the notebooks (a few CPU minutes) and "
                       f"commit them with notebooks/figures/: {execute.COMMAND}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_parameter_cell_first_and_stays_small(path):
    nb = json.loads(path.read_text())
    code = execute.code_cells(nb)
    tagged = [i for i, cell in enumerate(code) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert tagged == [0], f"{path.name}: the first code cell, and only it, is tagged 'parameters' (got {tagged})"
    assert path.stat().st_size < 1.5e6, f"{path.name} is {path.stat().st_size / 1e6:.2f} MB with its outputs"
    assert not any("dae_gen.cli" in execute._source(cell) for cell in code), "notebooks use the public API only"


def test_readme_links_each_notebook_and_shows_a_figure_exported_from_them():
    readme = (REPO / "README.md").read_text()
    for name in EXPECTED:
        assert f"notebooks/{name}" in readme, name
    shown = set(re.findall(r"!\[[^\]]*\]\(notebooks/figures/([\w-]+)\.png\)", readme))
    exported = {name for path in NOTEBOOKS for name in execute.tagged_figures(json.loads(path.read_text()))}
    assert {"dae_score_field", "inpainting"} <= shown <= exported


# -- what the API fingerprint holds ------------------------------------------------------------------------
PACKAGE_FILES = {
    "__init__.py": '''
        """A package."""
        from PKG.tools import Thing, helper

        __all__ = ["Thing", "helper", "LIMITS"]
        LIMITS = (1, 2)
    ''',
    "tools.py": '''
        def helper(x, *, scale=1.0):
            """Doubles."""
            return 2 * x * scale


        def _private(y):
            return y


        class Thing:
            kind = "thing"

            def __init__(self, size: int):
                self.size = size

            def grow(self, by: int = 1) -> int:
                return self.size + by

            @property
            def area(self):
                return self.size ** 2
    ''',
    "_hidden.py": "def secret(): return 1\n",
    "cli/__init__.py": "",
    "cli/main.py": "def main(argv=None): return 0\n",
}


def _api(tmp_path, monkeypatch, name, **changes):
    """The public API of a small package written from PACKAGE_FILES with ``changes`` (file: (old, new)), by short
    name (without the package prefix)."""
    for relative, text in PACKAGE_FILES.items():
        text = textwrap.dedent(text).replace("PKG", name)
        old, new = changes.get(relative, ("", ""))
        assert old in text
        path = tmp_path / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace(old, new, 1) if old else text)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return {key.removeprefix(name + "."): value for key, value in execute.api_digests(name).items()}


def test_fingerprint_follows_public_signatures_not_bodies_docstrings_or_private_code(tmp_path, monkeypatch):
    base = _api(tmp_path, monkeypatch, "pkg_base")
    assert sorted(base) == ["LIMITS", "Thing", "helper", "tools.Thing", "tools.helper"]  # no _private, _hidden, cli
    internal = _api(tmp_path, monkeypatch, "pkg_internal", **{
        "tools.py": ('    """Doubles."""\n    return 2 * x * scale', '    """Twice x."""\n    return x * scale * 2'),
        "_hidden.py": ("return 1", "return 2"), "cli/main.py": ("(argv=None)", "(argv=None, verbose=False)")})
    assert internal == base
    private = _api(tmp_path, monkeypatch, "pkg_private", **{"tools.py": ("def _private(y)", "def _private(y, z=0)")})
    assert private == base

    default = _api(tmp_path, monkeypatch, "pkg_default", **{"tools.py": ("scale=1.0", "scale=2.0")})
    assert {k for k in base if default[k] != base[k]} == {"helper", "tools.helper"}
    method = _api(tmp_path, monkeypatch, "pkg_method", **{"tools.py": ("by: int = 1", "by: int = 1, twice=False")})
    assert {k for k in base if method[k] != base[k]} == {"Thing", "tools.Thing"}
    constant = _api(tmp_path, monkeypatch, "pkg_constant", **{"__init__.py": ("(1, 2)", "(1, 3)")})
    assert {k for k in base if constant[k] != base[k]} == {"LIMITS"}
    new_function = "def new(a):\n    return a\n\n\nclass Thing:"
    added = _api(tmp_path, monkeypatch, "pkg_added", **{"tools.py": ("class Thing:", new_function)})
    assert set(added) - set(base) == {"tools.new"} and all(added[k] == base[k] for k in base)
    for module in [m for m in sys.modules if m.startswith("pkg_")]:
        del sys.modules[module]


def test_a_stale_notebook_is_reported_with_what_changed(digests):
    nb = json.loads(NOTEBOOKS[0].read_text())
    assert execute.problems(nb, digests=digests) == []
    edited = json.loads(json.dumps(nb))
    execute.code_cells(edited)[0]["source"] += "\n# changed"
    assert execute.problems(edited, digests=digests) == ["its code cells changed after it was executed"]
    changed_api = {**digests, "dae_gen.run.load_run": "0" * 12, "dae_gen.new_function": "1" * 12}
    (message,) = execute.problems(nb, digests=changed_api)
    assert message.startswith("the public API changed") and "+dae_gen.new_function" in message
    assert "~dae_gen.run.load_run" in message
    unexecuted = json.loads(json.dumps(nb))
    execute.code_cells(unexecuted)[1]["execution_count"] = None
    assert "not all executed in order" in execute.problems(unexecuted, digests=digests)[0]
