"""A built wheel, installed without the source tree, runs README's commands: train, resume, sample, evaluate, and a
user's own config folder on Hydra's search path."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from dae_gen.checkpoint import load_checkpoint

# README's commands, in the order a new user runs them (each must appear in README.md verbatim)
INSTALL = "pip wheel --no-deps -w dist . && pip install dist/dae_gen-*.whl"
COMMANDS = [
    "dae-gen-train experiment=ncsn_toy debug=default hydra.run.dir=outputs/toy",
    "dae-gen-train run=outputs/toy trainer.steps=8",
    "dae-gen-sample run=outputs/toy n_samples=16 sampler.n_steps_each=5",
    "dae-gen-eval run=outputs/toy n_samples=200",
    "dae-gen-train 'hydra.searchpath=[file://my_configs]' experiment=my_moons debug=default "
    "hydra.run.dir=outputs/moons",
]
MY_EXPERIMENT = "my_configs/experiment/my_moons.yaml"


def readme_block(readme: str, path: str) -> str:
    """The indented block README shows right after naming ``path``."""
    found = re.search(rf"{re.escape(path)}`?:\n\n((?:    .*\n)+)", readme)
    assert found, f"README shows no {path}"
    return "".join(line[4:] + "\n" for line in found[1].splitlines())


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"dae_gen." + str(p.parent.relative_to(REPO / "dae_gen")).replace(os.sep, ".")
               for p in (REPO / "dae_gen").rglob("__init__.py") if p.parent != REPO / "dae_gen"}
    assert set(config["packages"]) == {"dae_gen", "dae_gen.configs", *folders}
    assert config["package-dir"] == {"dae_gen.configs": "configs"}


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_the_readme_commands(tmp_path):
    readme = (REPO / "README.md").read_text()
    for command in [INSTALL, *COMMANDS]:
        assert command in readme, command
    source = tmp_path / "source"  # build from a copy: no build/ or egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("dae_gen", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("dae_gen-*.whl")
    target = tmp_path / "installed"  # NOT editable; put first on sys.path, ahead of any editable install
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(PYTHONPATH=str(target), PATH=f"{target / 'bin'}{os.pathsep}{env['PATH']}")
    work = tmp_path / "work"  # a user's folder: no source tree in sight
    (work / MY_EXPERIMENT).parent.mkdir(parents=True)
    (work / MY_EXPERIMENT).write_text(readme_block(readme, MY_EXPERIMENT))

    def run(command: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(shlex.split(command), cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        return proc

    where = run(f"{sys.executable} -c 'import dae_gen; print(dae_gen.__file__)'").stdout.strip()
    assert where == str(target / "dae_gen" / "__init__.py")
    assert shutil.which("dae-gen-train", path=env["PATH"]) == str(target / "bin" / "dae-gen-train")
    train, resume, sample, evaluate, mine = COMMANDS
    run(train)
    assert load_checkpoint(work / "outputs/toy")["step"] == 4
    run(resume)
    assert load_checkpoint(work / "outputs/toy")["step"] == 8
    run(sample)
    (out,) = (work / "outputs/toy/samples_cli").iterdir()
    assert (out / "samples.png").is_file() and json.loads((out / "sample.json").read_text())["sampler"][
        "n_steps_each"] == 5
    run(evaluate)
    (result,) = (work / "outputs/toy/eval").glob("*/eval.json")
    assert json.loads(result.read_text())["metric"] == "toy"
    run(mine)
    config = load_checkpoint(work / "outputs/moons")["config"]
    assert config["dataset"]["_target_"] == "dae_gen.data.toy.two_moons" and config["trainer"]["steps"] == 4
