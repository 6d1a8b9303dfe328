"""Prompt alignment: the prompt set and the scores, on judged attributes."""

from __future__ import annotations

import pytest
import torch

from difftrain.data.captioned import is_held_out, parse_held_out
from difftrain.data.clips import CLIP_CAPTIONS
from difftrain.evaluation.alignment import alignment, prompt_set

HELD_OUT = parse_held_out(["digit=7,foreground=red", "background=gray"])


def test_the_prompt_set_has_seen_and_held_out_combinations():
    asked, held = prompt_set(40, 10, HELD_OUT, seed=1)
    assert asked.shape == (60, 5) and held.sum() == 20
    assert torch.equal(is_held_out(asked, HELD_OUT), held)
    assert torch.equal(prompt_set(40, 10, HELD_OUT, seed=1)[0], asked)  # the same in every run
    combos = CLIP_CAPTIONS.parse_held_out(["digit=3,direction=up"])
    clips, held = prompt_set(20, 5, combos, seed=1, schema=CLIP_CAPTIONS)
    assert clips.shape == (25, 3) and torch.equal(CLIP_CAPTIONS.is_held_out(clips, combos), held)
    assert CLIP_CAPTIONS.captions(clips[held][:1])[0].endswith("three moving up")


def test_scores_count_matching_attributes_per_group():
    asked, held = prompt_set(4, 2, HELD_OUT[:1], seed=0)
    truth = asked
    predicted = truth.clone()
    predicted[0, 0] = (truth[0, 0] + 1) % 10  # one seen sample shows the wrong digit
    predicted[4:, 1] = (truth[4:, 1] + 1) % 6  # both held-out samples the wrong foreground
    scores = alignment(predicted, asked, held)
    assert scores["digit"] == pytest.approx(0.75) and scores["foreground"] == 1.0
    assert scores["all"] == pytest.approx(0.75)
    assert scores["heldout_digit"] == 1.0 and scores["heldout_foreground"] == 0.0
    assert scores["heldout_all"] == 0.0


def test_the_judges_features_give_an_fid_that_sees_wrong_colours(tmp_path):
    from difftrain.data.captioned import captioned_digits
    from difftrain.evaluation.alignment import AttributeJudge
    from difftrain.evaluation.metrics import frechet_distance

    train = captioned_digits("train", root=str(tmp_path / "no-mnist"), copies=2, max_glyphs=300)
    val = captioned_digits("val", root=str(tmp_path / "no-mnist"), copies=2, max_glyphs=150)
    judge = AttributeJudge.load_or_train(train, val, tmp_path, images=600, epochs=2,
                                         min_accuracy=0.0)  # fmt: skip
    reference = judge.features(val.images)
    assert reference.shape[0] == len(val.images)
    real = frechet_distance(judge.features(train.images[:200]), reference)
    swapped = frechet_distance(judge.features(train.images[:200].flip(1)), reference)  # BGR
    assert swapped > 2 * real
