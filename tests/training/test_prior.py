"""DreamBooth's prior preservation: the class images mixed into each batch, their loss weighted."""

from __future__ import annotations

import pytest
import torch

from difftrain.streams import Share
from difftrain.training.prior import PriorPreservation


def test_a_batch_gets_as_many_class_images_with_the_class_prompt_and_its_weight():
    prior = PriorPreservation([1, 4, 4], "a digit", num_images=6, weight=0.5)
    prior.images.copy_(torch.arange(6.0)[:, None, None, None].expand(6, 1, 4, 4))
    prior.rows = torch.tensor([[7, 8, 0]])
    x0, tokens = torch.full((3, 1, 4, 4), -1.0), torch.ones(3, 3, dtype=torch.long)
    mixed, cond, weights = prior.mix(x0, {"text_tokens": tokens}, torch.Generator().manual_seed(0))
    assert mixed.shape == (6, 1, 4, 4) and torch.equal(mixed[:3], x0)
    assert set(mixed[3:, 0, 0, 0].tolist()) <= set(range(6))  # class images
    assert cond["text_tokens"][3:].tolist() == [[7, 8, 0]] * 3
    assert weights.tolist() == [1, 1, 1, 0.5, 0.5, 0.5]
    # Two processes draw their shares of the same global draw.
    halves = [prior.mix(x0[:1], {"text_tokens": tokens[:1]}, torch.Generator().manual_seed(0),
                        Share(r, 2))[0][1] for r in (0, 1)]  # fmt: skip
    whole = prior.mix(x0[:2], {"text_tokens": tokens[:2]}, torch.Generator().manual_seed(0))[0]
    assert torch.equal(torch.stack(halves), whole[2:])
    with pytest.raises(ValueError, match="captioned batches only"):
        prior.mix(x0, {"class_labels": torch.zeros(3)}, None)
    with pytest.raises(ValueError, match="num_images >= 1 and weight >= 0"):
        PriorPreservation([1, 4, 4], "a digit", num_images=0)


def test_class_prompts_may_be_several_each_image_with_its_own():
    prior = PriorPreservation([1, 2, 2], ["a red two", "a blue six"], num_images=4)
    prior.images.copy_(torch.arange(4.0)[:, None, None, None].expand(4, 1, 2, 2))
    prior.rows = torch.tensor([[5], [6]])  # prompt i % 2 drew image i
    x0, cond = torch.zeros(8, 1, 2, 2), {"text_tokens": torch.zeros(8, 1, dtype=torch.long)}
    mixed, cond, _ = prior.mix(x0, cond, torch.Generator().manual_seed(1))
    image = mixed[8:, 0, 0, 0].long()
    assert cond["text_tokens"][8:, 0].tolist() == (5 + image % 2).tolist()
