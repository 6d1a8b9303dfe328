"""The DiT: shapes, adaLN-Zero start, conditioning by class and by text, checkpointing."""

from __future__ import annotations

import pytest
import torch

from difftrain.nets.dit import DiT
from difftrain.text.encoders import TinyTextEncoder

TINY = dict(patch_size=2, dim=32, depth=2, heads=2)


def randomize(net):
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)


def test_it_starts_at_zero_and_keeps_the_shape():
    net = DiT((3, 8, 8), **TINY)
    x = torch.randn(2, 3, 8, 8)
    out = net(x, torch.randn(2))
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # adaLN-Zero


def test_patches_go_back_where_they_came_from():
    """With the blocks silenced, output = a per-patch linear map: it must not mix patches."""
    torch.manual_seed(0)
    net = DiT((1, 8, 8), **TINY)
    randomize(net)
    for block in net.blocks:
        torch.nn.init.zeros_(block.ada[1].weight)
        torch.nn.init.zeros_(block.ada[1].bias)
    x = torch.zeros(1, 1, 8, 8)
    base = net(x, torch.zeros(1))
    x[0, 0, 4, 6] = 1.0  # a change in patch (2, 3) moves only that patch's output
    changed = (net(x, torch.zeros(1)) - base).abs()[0, 0] > 1e-6
    assert changed[4:6, 6:8].any() and not changed[:4].any() and not changed[:, :6].any()


def test_classes_and_prompts_condition_it():
    torch.manual_seed(0)
    encoder = TinyTextEncoder(["a", "red", "blue", "seven"], max_length=4, dim=8, heads=2)
    net = DiT((3, 8, 8), **TINY, num_classes=3, text_encoder=encoder)
    randomize(net)
    x, c = torch.randn(2, 3, 8, 8), torch.randn(2)
    tokens = net.tokenizer.encode(["a red seven", "a blue seven"])
    labels = torch.tensor([0, 1])
    out = net(x, c, class_labels=labels, text_tokens=tokens)
    assert not torch.allclose(out, net(x, c, class_labels=labels, text_tokens=tokens.flip(0)))
    assert not torch.allclose(out, net(x, c, class_labels=labels.flip(0), text_tokens=tokens))
    null = net.null_cond({"class_labels": labels, "text_tokens": tokens})
    torch.testing.assert_close(net(x, c, **null), net(x, c))  # no class, empty caption


def test_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    net = DiT((1, 8, 8), **TINY)
    randomize(net)
    x, c = torch.randn(2, 1, 8, 8), torch.randn(2)
    grads = []
    for on in (False, True):
        net.checkpoint_activations = on
        net.zero_grad()
        net(x, c).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0])


def test_an_image_size_that_is_not_whole_patches_is_refused():
    with pytest.raises(ValueError, match="image size 9 is not a whole number of 2-pixel patches"):
        DiT((1, 9, 9), **TINY)


def test_a_dit_of_clips_keeps_frames_apart_until_its_temporal_blocks_speak():
    """Latte's interleaving: even blocks within a frame, odd blocks across frames. With the
    temporal blocks' gates at zero, each frame's output depends on that frame alone."""
    torch.manual_seed(0)
    net = DiT((1, 4, 8, 8), **TINY, num_classes=3)
    assert net.temporal == [False, True] and net.blocks[1].cross is None
    x, c, labels = torch.randn(2, 1, 4, 8, 8), torch.randn(2), torch.tensor([0, 2])
    out = net(x, c, class_labels=labels)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # adaLN-Zero, clips too
    randomize(net)
    changed = x.clone()
    changed[:, :, 0] += 1.0  # only the first frame
    delta = (net(changed, c, class_labels=labels) - net(x, c, class_labels=labels)).abs()
    assert delta[:, :, 3].max() > 1e-4  # the last frame hears of it
    torch.nn.init.zeros_(net.blocks[1].ada[1].weight)  # the temporal block silenced
    torch.nn.init.zeros_(net.blocks[1].ada[1].bias)
    delta = (net(changed, c, class_labels=labels) - net(x, c, class_labels=labels)).abs()
    assert delta[:, :, 0].max() > 1e-4 and delta[:, :, 1:].max() == 0
    frame = DiT((1, 8, 8), **TINY, num_classes=3)  # the same spatial weights on one frame
    frame.load_state_dict(net.state_dict())
    torch.testing.assert_close(
        frame(x[:, :, 2], c, class_labels=labels),
        net(x, c, class_labels=labels)[:, :, 2],
    )
    with pytest.raises(ValueError, match=r"clips \[1, 4\] \+ \(H, W\)"):
        net.check_shape((1, 8, 8, 8))


def test_a_dit_of_clips_reads_prompts_and_checkpoints_alike():
    torch.manual_seed(0)
    encoder = TinyTextEncoder(["a", "red", "blue", "seven"], max_length=4, dim=8, heads=2)
    net = DiT((1, 3, 8, 8), **TINY, text_encoder=encoder)
    randomize(net)
    x, c = torch.randn(2, 1, 3, 8, 8), torch.randn(2)
    tokens = net.tokenizer.encode(["a red seven", "a blue seven"])
    grads = []
    for on in (False, True):
        net.checkpoint_activations = on
        net.zero_grad()
        out = net(x, c, text_tokens=tokens)
        out.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0])
    assert not torch.allclose(out, net(x, c, text_tokens=tokens.flip(0)))


def test_a_dit_of_clips_reads_given_frames_from_a_zero_start():
    torch.manual_seed(0)
    net = DiT((1, 4, 8, 8), **TINY, given_frames=True)
    randomize(net)
    x, c = torch.randn(2, 1, 4, 8, 8), torch.randn(2)
    given, mask = torch.zeros_like(x), torch.zeros(2, 1, 4, 1, 1)
    given[:, :, 0], mask[:, :, 0] = x[:, :, 0], 1.0
    torch.nn.init.zeros_(net.given_in.weight)  # as it starts: reading them changes nothing
    torch.testing.assert_close(net(x, c, given=given, given_mask=mask), net(x, c))
    torch.nn.init.normal_(net.given_in.weight, std=0.1)
    assert (net(x, c, given=given, given_mask=mask) - net(x, c)).abs().max() > 1e-4
    plain = DiT((1, 4, 8, 8), **TINY)
    with pytest.raises(ValueError, match="net.given_frames=true"):
        plain(x, c, given=given, given_mask=mask)
    with pytest.raises(ValueError, match="needs clips"):
        DiT((1, 8, 8), **TINY, given_frames=True)
