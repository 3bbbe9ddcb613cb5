"""Samplers: plain functions over the score protocol (``dae_gen.score``), so every sampler runs on every model.

Each algorithm is a function of a score callable and an initial state (``annealed_langevin``,
``temperature_annealed_langevin``); each has a driver ``sample_*(model, n, *, generator, callback, **settings)``
that a sampler config names as its ``_target_``. Image tasks built on them (inpainting, interpolation, trajectory
recording, Tweedie denoising per σ) are in ``dae_gen.samplers.tasks``.
"""

from dae_gen.samplers import tasks
from dae_gen.samplers.batches import draw_samples
from dae_gen.samplers.langevin import annealed_langevin, denoise_step, initial_state, sample_annealed_langevin
from dae_gen.samplers.temperature import (
    sample_generator,
    sample_temperature_langevin,
    temperature_annealed_langevin,
    temperature_schedule,
)

__all__ = ["annealed_langevin", "denoise_step", "draw_samples", "initial_state", "sample_annealed_langevin",
           "sample_generator", "sample_temperature_langevin", "tasks", "temperature_annealed_langevin",
           "temperature_schedule"]
