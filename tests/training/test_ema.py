"""EMA decay schedules and the averaged copy of the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difftrain.training.ema import PowerDecay, WarmupDecay, ema_model


def test_warmup_decay_grows_to_its_cap():
    decay = WarmupDecay(0.99)
    assert decay(0) == pytest.approx(0.1)
    assert decay(1000) == 0.99
    with pytest.raises(ValueError):
        WarmupDecay(1.0)


def test_power_decay_matches_karras_eq1():
    decay = PowerDecay(gamma=7.0)
    assert decay(1) == 0.0
    assert decay(100) == pytest.approx((1 - 1 / 100) ** 8)


def test_ema_model_averages_with_the_scheduled_decay():
    model = nn.Linear(2, 1, bias=False)
    ema = ema_model(model, WarmupDecay(0.5))
    assert not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update_parameters(model)  # first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # n=1: decay min(0.5, 2/11)
    expected = 1 - 2 / 11
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), expected))
    assert int(ema.n_averaged) == 2
