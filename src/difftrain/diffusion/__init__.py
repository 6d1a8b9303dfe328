"""The diffusion math: noise schedules, objectives (preconditioning), losses and samplers.

Framework-free by design: this package imports torch only (no Lightning, Hydra or W&B),
so it can be read, tested and reused on its own.
"""

from difftrain.diffusion.denoiser import Denoiser, Ensemble
from difftrain.diffusion.guidance import ClassifierFreeGuidance
from difftrain.diffusion.loss import DenoisingLoss, denoising_loss, x0_error
from difftrain.diffusion.noise_levels import (
    Curriculum,
    LogitNormal,
    LogNormal,
    LossSecondMoment,
    NoiseLevels,
    UniformT,
)
from difftrain.diffusion.objectives import (
    EDMObjective,
    EpsObjective,
    FlowObjective,
    Objective,
    VObjective,
    X0Objective,
    check_compatible,
)
from difftrain.diffusion.samplers import (
    Sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from difftrain.diffusion.schedules import (
    CosineSchedule,
    DiscreteSchedule,
    EDMSchedule,
    LinearSchedule,
    NoiseSchedule,
    ScaledLinearSchedule,
    SigmoidSchedule,
)
from difftrain.diffusion.weighting import P2, EDMWeighting, MinSNR, Uniform, Weighting

__all__ = [
    "P2",
    "ClassifierFreeGuidance",
    "CosineSchedule",
    "Curriculum",
    "DenoisingLoss",
    "Denoiser",
    "DiscreteSchedule",
    "EDMObjective",
    "EDMSchedule",
    "EDMWeighting",
    "Ensemble",
    "EpsObjective",
    "FlowObjective",
    "LinearSchedule",
    "LogNormal",
    "LogitNormal",
    "LossSecondMoment",
    "MinSNR",
    "NoiseLevels",
    "NoiseSchedule",
    "Objective",
    "Sampler",
    "ScaledLinearSchedule",
    "SigmoidSchedule",
    "Uniform",
    "UniformT",
    "VObjective",
    "Weighting",
    "X0Objective",
    "check_compatible",
    "denoising_loss",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "x0_error",
]
