"""The diffusion math: noise schedules, objectives (preconditioning), losses and samplers.

Framework-free by design: this package imports torch only (no Lightning, Hydra or W&B),
so it can be read, tested and reused on its own.
"""

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.objectives import EpsObjective, Objective
from difftrain.diffusion.samplers import Sampler, sample_ddim, sample_ddpm
from difftrain.diffusion.schedules import CosineSchedule, DiscreteSchedule, NoiseSchedule

__all__ = [
    "CosineSchedule",
    "Denoiser",
    "DiscreteSchedule",
    "EpsObjective",
    "NoiseSchedule",
    "Objective",
    "Sampler",
    "sample_ddim",
    "sample_ddpm",
]
