"""Classifier-free guidance as a denoiser wrapper."""

from __future__ import annotations

import torch

from difftrain.diffusion import (
    ClassifierFreeGuidance,
    CosineSchedule,
    Sampler,
    sample_dpmpp_2m,
    sample_heun,
)


def toy_denoiser(x, sigma, labels):
    """Pulls x towards its label (the null label 10 pulls towards 0)."""
    target = torch.where(labels == 10, 0.0, labels.float()).view(-1, 1, 1, 1)
    return x * 0.5 + target * 0.5


def test_scale_one_is_conditional_and_zero_is_unconditional():
    x, sigma, labels = torch.randn(4, 1, 2, 2), torch.tensor(1.0), torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(
        ClassifierFreeGuidance(toy_denoiser, 1.0, 10)(x, sigma, labels),
        toy_denoiser(x, sigma, labels),
    )
    null = torch.full_like(labels, 10)
    torch.testing.assert_close(
        ClassifierFreeGuidance(toy_denoiser, 0.0, 10)(x, sigma, labels),
        toy_denoiser(x, sigma, null),
    )
    guided = ClassifierFreeGuidance(toy_denoiser, 3.0, 10)(x, sigma, labels)
    expected = toy_denoiser(x, sigma, null) + 3 * (
        toy_denoiser(x, sigma, labels) - toy_denoiser(x, sigma, null)
    )
    torch.testing.assert_close(guided, expected)


def test_guidance_works_with_every_sampler_signature():
    labels = torch.tensor([2, 2])
    for solver in (sample_heun, sample_dpmpp_2m):
        guided = ClassifierFreeGuidance(toy_denoiser, 2.0, 10)
        x, nfe = Sampler(solver, steps=5, spacing="karras")(
            guided, torch.randn(2, 1, 2, 2), CosineSchedule(), class_labels=labels
        )
        assert torch.isfinite(x).all() and nfe > 0
