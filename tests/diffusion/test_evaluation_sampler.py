"""The in-training evaluation sampler agrees with a run's own sampler, for every schedule x objective.

For each pair, a small MLP is trained for a few hundred steps on 8 Gaussians on a ring. The
evaluation callback's sampler (composed from the config, 10 steps) must find the same modes, with
the same balance, as the run's default sampler at 100 steps. A negative control shows the check
catching what the evaluation sampler did before it was capped at sigma_max: on the cosine
schedule, Karras steps from sigma 4096 lost every mode.
"""

from __future__ import annotations

import itertools
from functools import cache

import pytest
import torch
from hydra.utils import instantiate

from difftrain.data.toy2d import toy_points
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.loss import DenoisingLoss
from difftrain.diffusion.noise_levels import LogNormal, UniformT
from difftrain.diffusion.samplers import Sampler
from difftrain.diffusion.weighting import Uniform
from difftrain.evaluation.toy import ToyEvaluator
from difftrain.nets.mlp import MLP
from tests.conftest import compose_cfg

SCHEDULES = ("cosine", "linear", "scaled_linear", "sigmoid", "edm")
OBJECTIVES = ("eps", "x0", "v", "edm", "flow")
RING = dict(kind="ring", num_modes=8, scale=0.7, std=0.08)
EVALUATOR = ToyEvaluator(**RING)


@cache
def trained(
    schedule: str, objective: str, tmp_dir: str
) -> tuple[Denoiser, object, Sampler, Sampler]:
    """A denoiser trained 400 steps, its schedule, the evaluation sampler and the run's sampler."""
    from pathlib import Path

    cfg = compose_cfg(Path(tmp_dir), f"schedule={schedule}", f"objective={objective}")
    torch.manual_seed(0)
    denoiser = Denoiser(MLP(hidden=128, depth=3), instantiate(cfg.objective))
    levels = LogNormal() if schedule == "edm" else UniformT()  # as each schedule's experiments do
    loss = DenoisingLoss(levels, Uniform())
    schedule_obj = instantiate(cfg.schedule)
    points, _ = toy_points(RING["kind"], 20_000, 8, RING["scale"], RING["std"], seed=0)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    for _ in range(400):
        batch = points[torch.randint(0, len(points), (512,))]
        losses, _ = loss(denoiser, schedule_obj, batch)
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
    evaluation = instantiate(cfg.callbacks.evaluate.sampler)
    own = instantiate(cfg.sampler, steps=100)
    return denoiser.eval(), schedule_obj, evaluation, own


@torch.no_grad()
def statistics(denoiser, schedule, sampler: Sampler) -> dict[str, float]:
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    x, _ = sampler(denoiser, noise, schedule, generator=torch.Generator().manual_seed(1))
    scores = EVALUATOR(x)
    nearest = torch.cdist(x, EVALUATOR.centers).argmin(1)
    scores["max_share"] = torch.bincount(nearest, minlength=8).max().item() / len(x)
    return scores


# Each schedule and each objective once in the default suite; every pair with `pytest -m slow`.
DIAGONAL = list(zip(SCHEDULES, OBJECTIVES, strict=True))
PAIRS = [
    pytest.param(s, o, marks=() if (s, o) in DIAGONAL else pytest.mark.slow)
    for s, o in itertools.product(SCHEDULES, OBJECTIVES)
]


@pytest.mark.parametrize("schedule, objective", PAIRS)
def test_evaluation_sampler_agrees_with_the_runs_own(schedule, objective, tmp_path_factory):
    denoiser, schedule_obj, evaluation, own = trained(
        schedule, objective, str(tmp_path_factory.getbasetemp())
    )
    assert evaluation.steps == 10 and evaluation.sigma_max == 80
    fast, slow = (statistics(denoiser, schedule_obj, s) for s in (evaluation, own))
    assert fast["modes_captured"] == slow["modes_captured"] == 8, (fast, slow)
    assert abs(fast["max_share"] - slow["max_share"]) < 0.08, (fast, slow)  # a fair share: 0.125
    assert fast["hq_share"] > slow["hq_share"] - 0.25, (fast, slow)


def test_uncapped_karras_steps_lose_the_modes_on_the_cosine_schedule(tmp_path_factory):
    """The negative control: the same check fails for the evaluation sampler of before."""
    denoiser, schedule_obj, evaluation, _ = trained(
        "cosine", "eps", str(tmp_path_factory.getbasetemp())
    )
    uncapped = Sampler(evaluation.solver, evaluation.steps, evaluation.spacing, sigma_max=None)
    assert uncapped.sigmas(schedule_obj)[0] > 4000
    assert statistics(denoiser, schedule_obj, uncapped)["modes_captured"] < 8
