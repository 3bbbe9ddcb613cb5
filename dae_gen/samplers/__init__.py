"""Samplers: plain functions over the score protocol (``dae_gen.score``), so every sampler runs on every model.

Each algorithm is a function of a score callable and an initial state (``annealed_langevin``,
``temperature_annealed_langevin``, ``edm_sampler``, ``predictor_corrector``, ``probability_flow_ode``,
``dpm_solver_2m``, ``euler_ancestral``); each has a driver ``sample_*(model, n, *, generator, callback, cond,
**settings)`` that a sampler config names as its ``_target_``. Every step is reported to ``callback`` as a
``dae_gen.score.Step``; ``cond`` (keyword tensors such as ``class_labels``) reaches every score call untouched.
``registry`` owns the samplers' names, checked settings and construction (``build_sampler("heun", n_steps=10)``)
and declares what the image tasks need of each. ``CountingModel`` counts the network calls (NFE) any driver makes.
Image tasks built on them (inpainting, interpolation, trajectory recording, Tweedie denoising per σ) are in
``dae_gen.samplers.tasks``.
"""

from dae_gen.samplers import registry, tasks
from dae_gen.samplers.batches import draw_samples
from dae_gen.samplers.edm import edm_sampler, sample_edm_stochastic, sample_heun
from dae_gen.samplers.langevin import annealed_langevin, denoise_step, initial_state, sample_annealed_langevin
from dae_gen.samplers.nfe import CountingModel
from dae_gen.samplers.ode import probability_flow_ode, sample_probability_flow_ode
from dae_gen.samplers.pc import predictor_corrector, sample_predictor_corrector
from dae_gen.samplers.registry import Sampler, build_sampler
from dae_gen.samplers.schedule import sigma_range
from dae_gen.samplers.temperature import (
    sample_generator,
    sample_temperature_langevin,
    temperature_annealed_langevin,
    temperature_schedule,
)

__all__ = ["CountingModel", "Sampler", "annealed_langevin", "build_sampler", "denoise_step", "draw_samples",
           "edm_sampler", "initial_state", "predictor_corrector", "probability_flow_ode", "registry",
           "sample_annealed_langevin", "sample_edm_stochastic", "sample_generator", "sample_heun",
           "sample_predictor_corrector", "sample_probability_flow_ode", "sample_temperature_langevin", "sigma_range",
           "tasks", "temperature_annealed_langevin", "temperature_schedule"]
