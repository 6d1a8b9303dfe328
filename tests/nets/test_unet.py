"""The UNet: shapes, start-up checks, attention and class conditioning."""

from __future__ import annotations

import pytest
import torch

from difftrain.nets.unet import UNet

TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4, head_channels=8)


def randomize(net):
    """Leave the zero init, under which the residual branches (and the conditioning) are silent."""
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)


def test_output_matches_input_shape_and_starts_at_zero():
    net = UNet((3, 16, 16), attn_resolutions=(8,), **TINY)
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.randn(2))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer (ADM)


def test_image_size_that_cannot_be_halved_fails_with_the_sizes():
    with pytest.raises(
        ValueError, match=r"image size 28 cannot be halved 3 times .* divisible by 8 \(e\.g\. 32\)"
    ):
        UNet((1, 28, 28), channels=8, channel_mult=(1, 2, 2, 2), norm_groups=4)


def test_patch_size_2_is_a_net_on_the_space_to_depth_image():
    """A UNet with 2x2 patches is, weight for weight, the UNet of 4-channel images at half the
    side between pixel_unshuffle and pixel_shuffle (torch's space-to-depth)."""
    torch.manual_seed(0)
    patched = UNet((1, 16, 16), attn_resolutions=(4,), patch_size=2, **TINY)
    randomize(patched)
    plain = UNet((4, 8, 8), attn_resolutions=(4,), **TINY)
    plain.load_state_dict(patched.state_dict())
    x, c = torch.randn(2, 1, 16, 16), torch.randn(2)
    expected = torch.nn.functional.pixel_shuffle(
        plain(torch.nn.functional.pixel_unshuffle(x, 2), c), 2
    )
    torch.testing.assert_close(patched(x, c), expected)
    with pytest.raises(ValueError, match=r"halved 1 times after 2x2 patches .* divisible by 4"):
        UNet((1, 18, 18), patch_size=2, **TINY)


def test_unknown_attention_resolution_and_bad_groups_fail():
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNet((1, 16, 16), attn_resolutions=(5,), **TINY)
    with pytest.raises(ValueError, match="norm_groups"):
        UNet((1, 16, 16), **{**TINY, "norm_groups": 3})


def test_class_conditioning_changes_the_output_and_none_is_the_null_class():
    torch.manual_seed(0)
    net = UNet((1, 8, 8), num_classes=10, **TINY)
    randomize(net)
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    a, b = (
        net(x, c, class_labels=torch.tensor([1, 1])),
        net(x, c, class_labels=torch.tensor([2, 2])),
    )
    assert not torch.allclose(a, b)
    torch.testing.assert_close(net(x, c), net(x, c, class_labels=torch.tensor([10, 10])))


def test_gradients_reach_every_parameter():
    net = UNet((1, 16, 16), attn_resolutions=(16, 8), num_classes=3, **TINY)
    randomize(net)
    net(
        torch.randn(2, 1, 16, 16), torch.randn(2), class_labels=torch.tensor([0, 1])
    ).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [] or missing == ["class_emb.weight"]  # unused class rows only


def test_every_net_keeps_the_net_protocol():
    from difftrain.nets.mlp import MLP
    from difftrain.nets.protocol import Net

    for net in (
        UNet((1, 16, 16), channels=8, channel_mult=(1, 2), norm_groups=4, num_classes=3),
        MLP(),
    ):
        assert isinstance(net, Net)
        x = torch.randn(2, *net.sample_shape)
        assert net(x, torch.zeros(2)).shape == x.shape
    cond = {"class_labels": torch.tensor([0, 2])}
    unet = UNet((1, 16, 16), channels=8, channel_mult=(1, 2), norm_groups=4, num_classes=3)
    assert unet.null_cond(cond)["class_labels"].tolist() == [3, 3]


def saved_bytes(net, x, sigma):
    """Bytes autograd keeps for the backward pass of one forward of `net`."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x, sigma)
    return out, total


def test_activation_checkpointing_keeps_gradients_and_saves_memory():
    torch.manual_seed(0)
    net = UNet((1, 16, 16), attn_resolutions=(8,), **{**TINY, "num_res_blocks": 2}, dropout=0.1)
    randomize(net)
    x, sigma = torch.randn(4, 1, 16, 16), torch.rand(4)
    grads, saved = [], []
    for checkpointing in (False, True):
        net.checkpoint_activations = checkpointing
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout masks: recomputation replays the RNG
        out, nbytes = saved_bytes(net, x, sigma)
        out.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        saved.append(nbytes)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    assert saved[1] < saved[0] / 4, saved  # only what lies outside the checkpointed blocks
    with torch.no_grad():  # sampling: the same net
        net.eval()
        checkpointed = net(x, sigma)
        net.checkpoint_activations = False
        torch.testing.assert_close(checkpointed, net(x, sigma))


def text_unet():
    from difftrain.text.encoders import TinyTextEncoder

    encoder = TinyTextEncoder(["a", "red", "blue", "seven", "three"], max_length=4, dim=8, heads=2)
    return UNet((3, 16, 16), **TINY, text_encoder=encoder, cross_attn_resolutions=(8,))


def test_a_text_net_follows_its_prompt_and_no_prompt_is_the_empty_caption():
    torch.manual_seed(0)
    net = text_unet()
    randomize(net)
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2)
    tokens = net.tokenizer.encode(["a red seven", "a blue three"])
    out = net(x, c, text_tokens=tokens)
    swapped = net(x, c, text_tokens=tokens.flip(0))
    assert not torch.allclose(out, swapped)  # the prompt changes the prediction
    empty = net(x, c, **net.null_cond({"text_tokens": tokens}))
    torch.testing.assert_close(empty, net(x, c))  # text_tokens=None is the empty caption


def test_cross_attention_without_a_text_encoder_is_refused():
    with pytest.raises(ValueError, match="no text encoder: choose one \\(text_encoder=tiny\\)"):
        UNet((3, 16, 16), **TINY, cross_attn_resolutions=(8,))
