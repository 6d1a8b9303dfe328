"""diffusers' scheduler configs in difftrain's terms, both ways: the schedule and objective a
pretrained model was trained with (`trained_with`, read from its `scheduler_config.json`), and
the scheduler config that samples a difftrain run in a diffusers pipeline (`scheduler_config`).

Only the DDPM family maps one to one: a table of T betas (linear, scaled_linear,
squaredcos_cap_v2, optionally rescaled to zero terminal SNR) with eps-, v- or x0-prediction,
which is what Stable Diffusion 1.x/2.x and most UNets were trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from difftrain.diffusion.objectives import Objective
from difftrain.diffusion.schedules import (
    CosineSchedule,
    DiscreteSchedule,
    LinearSchedule,
    NoiseSchedule,
    ScaledLinearSchedule,
)

# diffusers' beta_schedule -> difftrain's schedule option and class
BETA_SCHEDULES = {
    "linear": ("linear", LinearSchedule),
    "scaled_linear": ("scaled_linear", ScaledLinearSchedule),
    "squaredcos_cap_v2": ("cosine", CosineSchedule),
}
# diffusers' prediction_type -> difftrain's objective
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def trained_with(config: Mapping[str, Any]) -> tuple[NoiseSchedule, str, list[str]]:
    """The schedule and objective name of a diffusers scheduler config, and the overrides that
    set them in a difftrain run (e.g. ["schedule=scaled_linear", "objective=eps", ...])."""
    if "Flow" in str(config.get("_class_name", "")):
        raise ValueError(
            f"the scheduler {config['_class_name']} is a flow-matching one (objective=flow), for "
            "which difftrain has no schedule to map yet"
        )
    beta, prediction = (
        config.get("beta_schedule", "linear"),
        config.get("prediction_type", "epsilon"),
    )
    if beta not in BETA_SCHEDULES or prediction not in PREDICTIONS:
        raise ValueError(
            f"the scheduler config's beta_schedule={beta!r}, prediction_type={prediction!r} have "
            f"no difftrain equivalent: beta_schedule one of {sorted(BETA_SCHEDULES)}, "
            f"prediction_type one of {sorted(PREDICTIONS)}"
        )
    option, cls = BETA_SCHEDULES[beta]
    zero_snr = bool(config.get("rescale_betas_zero_snr", False))
    steps = int(config.get("num_train_timesteps", 1000))
    kwargs: dict[str, Any] = {"num_timesteps": steps, "zero_terminal_snr": zero_snr}
    overrides = [f"schedule={option}", f"schedule.num_timesteps={steps}"]
    if option != "cosine":
        kwargs.update(
            beta_start=config.get("beta_start", 1e-4), beta_end=config.get("beta_end", 0.02)
        )
        overrides += [
            f"schedule.beta_start={kwargs['beta_start']}",
            f"schedule.beta_end={kwargs['beta_end']}",
        ]
    overrides += [
        f"schedule.zero_terminal_snr={str(zero_snr).lower()}",
        "schedule.base_resolution=null",
    ]
    objective = PREDICTIONS[prediction]
    return cls(**kwargs), objective, [*overrides, f"objective={objective}"]


def check_trained_with(
    config: Mapping[str, Any], schedule: NoiseSchedule, objective: Objective, source: str
) -> None:
    """Fail, naming the mismatch and the overrides that fix it, when a run's schedule or
    objective contradicts the scheduler config its pretrained net was trained with (`source`)."""
    expected, objective_name, overrides = trained_with(config)
    problems = []
    if not same_levels(schedule, expected):
        problems.append(
            f"its noise levels are beta_schedule={config.get('beta_schedule', 'linear')} "
            f"(rescale_betas_zero_snr={config.get('rescale_betas_zero_snr', False)}), not this "
            f"run's schedule {type(schedule).__name__}"
        )
    if objective.name != objective_name:
        problems.append(
            f"it predicts {config.get('prediction_type', 'epsilon')} (objective={objective_name}), "
            f"not objective={objective.name}"
        )
    if problems:
        raise ValueError(
            f"the pretrained net was trained with {source}, and "
            + "; ".join(problems)
            + f". Fix: {' '.join(overrides)}"
        )


def same_levels(schedule: NoiseSchedule, other: DiscreteSchedule) -> bool:
    """Whether `schedule` has the noise levels of the table `other`."""
    if not isinstance(schedule, DiscreteSchedule) or schedule.num_timesteps != other.num_timesteps:
        return False
    return torch.allclose(schedule.alphas_cumprod, other.alphas_cumprod, rtol=1e-6, atol=1e-9)


def scheduler_config(
    schedule: Mapping[str, Any], objective: str, spacing: str = "karras"
) -> dict[str, Any]:
    """The config of diffusers' EulerDiscreteScheduler that samples a run of this `schedule`
    config (its option's `_target_` and arguments) and `objective` as difftrain's Euler sampler
    does: Karras levels between the table's ends (`spacing`="karras"), starting from noise at
    the top level."""
    name = str(schedule["_target_"]).rsplit(".", 1)[-1]
    beta = next((b for b, (_, cls) in BETA_SCHEDULES.items() if cls.__name__ == name), None)
    prediction = next((p for p, o in PREDICTIONS.items() if o == objective), None)
    cosine_as_diffusers = (
        schedule.get("s", 0.008) == 0.008 and schedule.get("max_beta", 0.999) == 0.999
    )
    if beta == "squaredcos_cap_v2" and not cosine_as_diffusers:
        beta = None  # diffusers' cosine has s 0.008 and max_beta 0.999 only
    if beta is None or prediction is None or schedule.get("base_resolution") is not None:
        raise ValueError(
            f"schedule {name} with objective={objective} has no diffusers scheduler: export "
            "needs a DDPM-family schedule (linear, scaled_linear, cosine with s 0.008 and "
            "max_beta 0.999; no base_resolution) "
            "with objective=eps, v or x0"
        )
    config: dict[str, Any] = {
        "_class_name": "EulerDiscreteScheduler",
        "num_train_timesteps": int(schedule["num_timesteps"]),
        "beta_schedule": beta,
        "prediction_type": prediction,
        "rescale_betas_zero_snr": bool(schedule.get("zero_terminal_snr", False)),
        "use_karras_sigmas": spacing == "karras",
        "timestep_spacing": "linspace",  # the initial noise's std is then the top level
        "interpolation_type": "linear",
        "final_sigmas_type": "zero",
        "steps_offset": 1,  # read by leading spacing only; what Stable Diffusion's configs say
    }
    if beta != "squaredcos_cap_v2":
        config.update(
            beta_start=float(schedule["beta_start"]), beta_end=float(schedule["beta_end"])
        )
    return config
