"""LR schedules and weight-decay parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difftrain.nets.unet import UNet
from difftrain.training.optim import parameter_groups, warmup_cosine, warmup_inverse_sqrt


def lrs(scheduler_fn, steps, **kwargs):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = scheduler_fn(opt, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine():
    lr = lrs(warmup_cosine, 110, warmup_steps=10, total_steps=110, min_factor=0.1)
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-3)  # halfway through the decay
    assert lr[-1] == pytest.approx(0.1, abs=1e-3)


def test_warmup_inverse_sqrt_is_edm2s():
    lr = lrs(warmup_inverse_sqrt, 401, warmup_steps=10, ref_steps=100)
    assert lr[4] == pytest.approx(0.5) and lr[50] == 1.0 and lr[100] == 1.0
    assert lr[400] == pytest.approx(0.5)  # 1 / sqrt(400 / 100)


def test_weight_decay_skips_norms_biases_and_embeddings():
    net = UNet(
        (1, 8, 8), channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4, num_classes=3
    )
    decay, no_decay = parameter_groups(net)
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    ids = {id(p) for p in no_decay["params"]}
    assert (
        id(net.class_emb.weight) in ids
        and id(net.norm_out.weight) in ids
        and id(net.conv_in.bias) in ids
    )
    assert id(net.conv_in.weight) not in ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
