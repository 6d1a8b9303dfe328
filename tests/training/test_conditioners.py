"""Conditioners: each batch to the net's conditioning, with null entries at the dropout rate."""

from __future__ import annotations

import pytest
import torch

from difftrain.streams import WHOLE, Share
from difftrain.text.tokenizer import PAD
from difftrain.training.clusters import Clusters
from difftrain.training.conditioners import (
    Captions,
    ClassLabels,
    ClusterLabels,
    Conditioning,
    conditioning_for,
)


class Net:
    def __init__(self, num_classes=0, tokenizer=None):
        self.num_classes, self.tokenizer = num_classes, tokenizer


def test_each_net_gets_the_conditioning_it_reads():
    assert type(conditioning_for(Net())) is Conditioning
    assert type(conditioning_for(Net(num_classes=10))) is ClassLabels
    assert type(conditioning_for(Net(num_classes=10, tokenizer=object()))) is Captions
    assert type(conditioning_for(Net(num_classes=4), clusters=Clusters(4))) is ClusterLabels
    with pytest.raises(ValueError, match="set net.num_classes=4"):
        conditioning_for(Net(num_classes=10), clusters=Clusters(4))
    with pytest.raises(ValueError, match=r"label_dropout must be in \[0, 1\)"):
        conditioning_for(Net(num_classes=10), dropout=1.0)


def test_labels_and_captions_are_dropped_at_the_rate_and_only_in_training():
    labels, x0 = torch.arange(1000) % 10, torch.zeros(1000, 1)
    drop = ClassLabels(10, dropout=0.25)
    assert torch.equal(drop(x0, labels)["class_labels"], labels)  # no generator: validation
    dropped = drop(x0, labels, torch.Generator().manual_seed(0))["class_labels"]
    assert 0.2 < (dropped == 10).float().mean() < 0.3  # the null class is num_classes
    rows = torch.randint(2, 9, (1000, 5))
    captions = Captions(0.25)(x0, rows, torch.Generator().manual_seed(0))["text_tokens"]
    empty = (captions == PAD).all(1)
    assert 0.2 < empty.float().mean() < 0.3 and torch.equal(captions[~empty], rows[~empty])
    assert Conditioning()(x0, labels, torch.Generator()) == {}


def test_two_processes_drop_what_one_process_drops_of_the_global_batch():
    labels, x0 = torch.arange(8), torch.zeros(8, 1)
    drop = ClassLabels(10, dropout=0.5)
    whole = drop(x0, labels, torch.Generator().manual_seed(3))["class_labels"]
    parts = [
        drop(x0[r * 4 : r * 4 + 4], labels[r * 4 : r * 4 + 4], torch.Generator().manual_seed(3),
             Share(r, 2))["class_labels"]
        for r in (0, 1)
    ]  # fmt: skip
    assert torch.equal(torch.cat(parts), whole)


def test_a_conditioning_given_in_the_config_is_the_one_that_trains(make_cfg):
    from difftrain.cli.train import train
    from tests.conftest import FAST

    cfg = make_cfg(*FAST, "logger=none", "~callbacks.evaluate", "net.num_classes=10",
                   "model.conditioning={_target_: tests.training.test_conditioners.AllOnes, num_classes: 10}")  # fmt: skip
    train(cfg)
    assert AllOnes.calls > 0


class AllOnes(ClassLabels):
    """A toy conditioning: every example is of class 1; it counts the training batches it saw."""

    calls = 0

    def __call__(self, x0, labels, generator=None, share=WHOLE):
        if generator is not None:
            AllOnes.calls += 1
        return super().__call__(x0, torch.ones_like(labels), generator, share)
