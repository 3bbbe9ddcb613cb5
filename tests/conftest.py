import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HYDRA_FULL_ERROR", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# one thread: the suite runs with -n 2 on 2 cores, and small nets run fastest on one thread anyway
torch.set_num_threads(1)

from dae_gen.train_hooks import HOOK_SETTINGS, default_hooks  # noqa: E402 (after the environment above)
from dae_gen.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")


class HookedTrainer(Trainer):
    """A trainer whose ``fit()`` runs ``default_hooks(**hook_settings)`` (fresh ones each fit) unless given hooks."""

    def __init__(self, hook_settings: dict, **arguments):
        default_hooks(**hook_settings)  # a bad setting fails when the trainer is built, as in the CLI
        super().__init__(**arguments)
        self.hook_settings = hook_settings

    def default_hooks(self):
        return default_hooks(**self.hook_settings)

    def fit(self, *, plan=None, hooks=None):
        return super().fit(plan=plan, hooks=self.default_hooks() if hooks is None else hooks)


def hooked_trainer(**arguments) -> HookedTrainer:
    """A trainer and the default hooks of the same keyword arguments, split as ``dae-gen-train`` splits its
    ``trainer:`` node: the hook settings (``log_every``, ``ckpt_every``, ``sampler``, ``evaluator`` ...) go to
    the hooks, the rest to the trainer."""
    hook_keys = {*HOOK_SETTINGS, "sampler", "save_samples", "evaluator"}
    settings = {key: arguments.pop(key) for key in list(arguments) if key in hook_keys}
    return HookedTrainer(settings, **arguments)


def console_command(command: list[str], extra_env: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run a console script (``dae-gen-train`` ...) as a user would: the installed
    script if there is one, with the user's environment (no HYDRA_FULL_ERROR, which this suite sets for in-process
    Hydra calls)."""
    script = Path(sys.executable).parent / command[0]
    if script.is_file():
        argv = [str(script), *command[1:]]
    else:  # not installed as a script here: the module it points to
        module = {"dae-gen-train": "train", "dae-gen-sample": "sample", "dae-gen-eval": "evaluate"}[command[0]]
        argv = [sys.executable, "-m", f"dae_gen.cli.{module}", *command[1:]]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(extra_env or {})
    return argv, env


def run_command(command: list[str], *, cwd: Path, extra_env: dict | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a console script (``dae-gen-train`` ...) as a user would (see :func:`console_command`)."""
    argv, env = console_command(command, extra_env)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path (a failed command must leave it unchanged)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


PROGRESS = re.compile(r"\d+%\||\x1b\[A|\?\w+/s\]|^\s*$")  # a tqdm bar's pieces, or an empty line


def error_lines(stderr: str) -> list[str]:
    """stderr without progress bars and Python warnings: what a failed command tells the user."""
    lines = [line for line in stderr.splitlines() if not PROGRESS.search(line)]
    return [line for line in lines if "Warning:" not in line and not line.startswith("  ")]


@pytest.fixture
def compose_train():
    """Compose the train config with overrides (Hydra's compose API on the installed configs, as the CLI would)."""
    from hydra import compose, initialize_config_module

    def _compose(*overrides: str):
        with initialize_config_module(config_module="dae_gen.configs", version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)

    return _compose


def fit_on_mixture(model, mixture, *, steps: int, lr: float, eta_min: float, batch: int = 512, seed: int = 1):
    """Adam with cosine decay on fresh mixture samples (a test's own small loop, not the Trainer).

    Returns the data generator, so the test can go on drawing from the same stream.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=eta_min)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model.losses("model", mixture.sample(batch, gen).float()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return gen


def score_errors(model, mixture, sigma: float, generator: torch.Generator, n: int = 4000) -> tuple[float, float]:
    """(relative squared error, mean cosine similarity) of ``model.score`` against the exact ∇log p_σ of the
    σ-smoothed ``mixture``, on ``n`` points drawn from p_σ."""
    smoothed = mixture.smoothed(sigma)
    y = smoothed.sample(n, generator).float()
    with torch.no_grad():  # energy and DDE scores take their input gradient inside
        estimate = model.score(y, torch.full((n,), sigma)).double()
    exact = smoothed.score(y).double()
    relative = (estimate - exact).pow(2).sum(1).mean() / exact.pow(2).sum(1).mean()
    cosine = torch.nn.functional.cosine_similarity(estimate, exact).mean()
    return relative.item(), cosine.item()


def heun_step_gain(sigma: float, sigma_next: float, s: float) -> float:
    """The factor g of one EDM Heun step σ → σ' on the score of N(m, s²I) data, x' − m = g·(x − m): the ODE is
    dx/dσ = k(σ)(x − m) with k(σ) = σ/(s² + σ²); Euler g = 1 + h·k(σ), Heun g = 1 + h/2·(k(σ) + k(σ')·(1 + h·k(σ))),
    h = σ' − σ; the step to σ' = 0 is Euler (EDM Algorithm 1)."""
    k = lambda sig: sig / (s**2 + sig**2)  # noqa: E731
    h = sigma_next - sigma
    return 1 + h * k(sigma) if sigma_next == 0 else 1 + 0.5 * h * (k(sigma) + k(sigma_next) * (1 + h * k(sigma)))


def edm_gaussian_moments(sigmas, *, s: float, start_var: float, s_churn: float = 0.0, s_tmin: float = 0.0,
                         s_tmax: float = float("inf"), s_noise: float = 1.0) -> tuple[float, float]:
    """Exact (mean gain A, variance) after EDM's Algorithm 2 (Algorithm 1 without churn) on N(m, s²I) data from a
    start of variance ``start_var`` per coordinate: every step is linear-Gaussian, so x_N − m = A·(x_0 − m) + noise;
    churn adds variance (σ̂² − σ²)·S_noise², then the Heun step from σ̂ multiplies deviations by its gain."""
    levels = [float(v) for v in sigmas]
    gamma_max = min(s_churn / (len(levels) - 1), 2**0.5 - 1)
    gain, var = 1.0, start_var
    for sig, nxt in zip(levels[:-1], levels[1:]):
        hat = sig * (1 + (gamma_max if s_tmin <= sig <= s_tmax else 0.0))
        step = heun_step_gain(hat, nxt, s)
        gain, var = gain * step, (var + (hat**2 - sig**2) * s_noise**2) * step**2
    return gain, var
