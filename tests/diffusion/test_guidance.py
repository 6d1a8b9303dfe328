"""Classifier-free guidance as a denoiser wrapper, over the conditioning mapping."""

from __future__ import annotations

import torch

from difftrain.diffusion.guidance import ClassifierFreeGuidance
from difftrain.diffusion.samplers import Sampler, sample_dpmpp_2m, sample_heun
from difftrain.diffusion.schedules import CosineSchedule
from difftrain.nets.conditioning import null_class


def toy_denoiser(x, sigma, cond):
    """Pulls x towards its label (the null label 10 pulls towards 0)."""
    labels = cond["class_labels"]
    target = torch.where(labels == 10, 0.0, labels.float()).view(-1, 1, 1, 1)
    return x * 0.5 + target * 0.5


def null_cond(cond):
    return null_class(cond, 10)


def test_scale_one_is_conditional_and_zero_is_unconditional():
    x, sigma = torch.randn(4, 1, 2, 2), torch.tensor(1.0)
    cond = {"class_labels": torch.tensor([1, 2, 3, 4])}
    null = {"class_labels": torch.full((4,), 10)}
    torch.testing.assert_close(
        ClassifierFreeGuidance(toy_denoiser, 1.0, null_cond)(x, sigma, cond),
        toy_denoiser(x, sigma, cond),
    )
    torch.testing.assert_close(
        ClassifierFreeGuidance(toy_denoiser, 0.0, null_cond)(x, sigma, cond),
        toy_denoiser(x, sigma, null),
    )
    guided = ClassifierFreeGuidance(toy_denoiser, 3.0, null_cond)(x, sigma, cond)
    expected = toy_denoiser(x, sigma, null) + 3 * (
        toy_denoiser(x, sigma, cond) - toy_denoiser(x, sigma, null)
    )
    torch.testing.assert_close(guided, expected)


def test_every_conditioning_tensor_is_doubled_for_the_batched_call():
    seen = []

    def denoiser(x, sigma, cond):
        seen.append({k: v.shape for k, v in cond.items()})
        return toy_denoiser(x, sigma, cond)

    text = torch.randn(3, 5, 8)  # a kind of conditioning nothing here knows about
    cond = {"class_labels": torch.tensor([1, 2, 3]), "text": text}
    guided = ClassifierFreeGuidance(denoiser, 2.0, lambda c: {**null_cond(c), "text": 0 * text})
    guided(torch.randn(3, 1, 2, 2), torch.tensor(1.0), cond)
    assert seen == [{"class_labels": (6,), "text": (6, 5, 8)}]


def test_guidance_works_with_every_sampler_signature():
    cond = {"class_labels": torch.tensor([2, 2])}
    for solver in (sample_heun, sample_dpmpp_2m):
        guided = ClassifierFreeGuidance(toy_denoiser, 2.0, null_cond)
        x, nfe = Sampler(solver, steps=5, spacing="karras")(
            guided, torch.randn(2, 1, 2, 2), CosineSchedule(), cond=cond
        )
        assert torch.isfinite(x).all() and nfe > 0


def test_autoguidance_extrapolates_away_from_the_guide_with_or_without_a_condition():
    from difftrain.diffusion.guidance import Autoguidance

    x, sigma = torch.randn(4, 1, 2, 2), torch.tensor(1.0)
    good, bad = (lambda x, s, c: 0.5 * x + 1), (lambda x, s, c: 0.5 * x)
    torch.testing.assert_close(Autoguidance(good, bad, 1.0)(x, sigma), good(x, sigma, None))
    torch.testing.assert_close(Autoguidance(good, bad, 0.0)(x, sigma), bad(x, sigma, None))
    torch.testing.assert_close(Autoguidance(good, bad, 2.5)(x, sigma), 0.5 * x + 2.5)
    cond = {"class_labels": torch.tensor([1, 2, 3, 4])}  # passed to both, untouched
    torch.testing.assert_close(
        Autoguidance(toy_denoiser, bad, 2.0)(x, sigma, cond),
        bad(x, sigma, cond) + 2 * (toy_denoiser(x, sigma, cond) - bad(x, sigma, cond)),
    )


def test_in_training_guidance_on_an_unconditional_net_fails_before_training(tmp_path):
    """callbacks.sample_grid.guidance / callbacks.evaluate.guidance != 1 on an unconditional run
    would draw unguided samples under a guided name: refused when fitting starts."""
    import pytest
    from hydra.utils import instantiate

    from tests.conftest import FAST, compose_cfg

    cfg = compose_cfg(tmp_path, *FAST, "callbacks.sample_grid.guidance=2")
    model = instantiate(cfg.model)
    grid = instantiate(cfg.callbacks.sample_grid)
    with pytest.raises(ValueError, match="guidance=2.* unconditional model"):
        grid.on_fit_start(None, model)
    instantiate(cfg.callbacks.sample_grid, guidance=1.0).on_fit_start(None, model)
