"""EMA decay schedules and the averaged copy of the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difftrain.training.ema import EMA, PowerDecay, WarmupDecay


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


def test_ema_averages_with_the_scheduled_decay_like_averaged_model():
    """The same numbers as torch's AveragedModel with this decay (the first update copies)."""
    from torch.optim.swa_utils import AveragedModel

    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, WarmupDecay(0.5))
    reference = AveragedModel(
        model,
        multi_avg_fn=lambda e, c, n: torch._foreach_lerp_(e, c, 1 - WarmupDecay(0.5)(int(n))),
    )
    assert not any(p.requires_grad for p in ema.parameters())
    for value in (0.0, 1.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        reference.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, reference.module.weight)
    assert int(ema.n_averaged) == 3


def test_a_skipped_update_changes_nothing_and_is_not_counted():
    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, PowerDecay())
    ema.update(model)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.fill_(7.0)
    ema.update(model, skip=torch.tensor(True))
    torch.testing.assert_close(ema.module.weight, before)
    assert int(ema.n_averaged) == 1
