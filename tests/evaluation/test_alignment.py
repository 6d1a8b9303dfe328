"""Prompt alignment: the prompt set and the scores, on judged attributes."""

from __future__ import annotations

import pytest
import torch

from difftrain.data.captioned import ATTRIBUTES, is_held_out, parse_held_out
from difftrain.evaluation.alignment import JUDGED, alignment, prompt_set

HELD_OUT = parse_held_out(["digit=7,foreground=red", "background=gray"])


def test_the_prompt_set_has_seen_and_held_out_combinations():
    asked, held = prompt_set(40, 10, HELD_OUT, seed=1)
    assert len(asked) == 60 and held.sum() == 20
    rows = torch.tensor([[getattr(a, k) for k in ATTRIBUTES] for a in asked])
    assert torch.equal(is_held_out(rows, HELD_OUT), held)
    assert prompt_set(40, 10, HELD_OUT, seed=1)[0] == asked  # the same prompts in every run


def test_scores_count_matching_attributes_per_group():
    asked, held = prompt_set(4, 2, HELD_OUT[:1], seed=0)
    truth = torch.tensor([[getattr(a, k) for k in JUDGED] for a in asked])
    predicted = truth.clone()
    predicted[0, 0] = (truth[0, 0] + 1) % 10  # one seen sample shows the wrong digit
    predicted[4:, 1] = (truth[4:, 1] + 1) % 6  # both held-out samples the wrong foreground
    scores = alignment(predicted, asked, held)
    assert scores["digit"] == pytest.approx(0.75) and scores["foreground"] == 1.0
    assert scores["all"] == pytest.approx(0.75)
    assert scores["heldout_digit"] == 1.0 and scores["heldout_foreground"] == 0.0
    assert scores["heldout_all"] == 0.0
