"""Gradient clipping by the norm the step already measured, under every precision we allow."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from difftrain.cli.train import train
from tests.conftest import FAST, compose_cfg


def module_with_gradients(tmp_path):
    model = instantiate(compose_cfg(tmp_path, *FAST).model)
    model.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    torch.manual_seed(0)
    for p in model.denoiser.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in model.denoiser.parameters()]
    norm = torch.stack(torch._foreach_norm(grads)).square().sum().sqrt()
    model._report = SimpleNamespace(grad_norm=norm)
    return model, [g.clone() for g in grads]


@pytest.mark.parametrize("algorithm", ["norm", "value"])
@pytest.mark.parametrize("max_value", [0.01, 1e6])  # clips / leaves alone
def test_clipping_equals_torchs(tmp_path, algorithm, max_value):
    model, before = module_with_gradients(tmp_path)
    model.configure_gradient_clipping(None, max_value, algorithm)
    clip = (
        torch.nn.utils.clip_grad_norm_ if algorithm == "norm" else torch.nn.utils.clip_grad_value_
    )
    expected = [torch.nn.Parameter(torch.zeros_like(g)) for g in before]
    for p, g in zip(expected, before, strict=True):
        p.grad = g
    clip(expected, max_value)
    for p, e in zip(model.denoiser.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e.grad, rtol=1e-5, atol=1e-8)


def test_bf16_mixed_trains_with_the_fused_optimizer_and_clipping(tmp_path):
    """Lightning's own clipping refuses fused optimizers under bf16-mixed (it would need to
    unscale, which bf16 never does): the GPU trainer crashed at its first step."""
    cfg = compose_cfg(
        tmp_path, *FAST, "logger=none", "~callbacks.evaluate", "trainer.precision=bf16-mixed",
        "trainer.max_steps=4", "trainer.gradient_clip_val=0.001",
    )  # fmt: skip
    assert cfg.optimizer.fused
    train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["health"]["nonfinite_steps"] == 0
    assert summary["health"]["final_grad_norm"] > 0.001  # measured before clipping
