"""The factorized space-time UNet: its image net frame by frame at initialisation, frames mixed
by the temporal layers once they train."""

from __future__ import annotations

import pytest
import torch

from difftrain.nets.temporal import SpaceTimeAttention, TemporalAttention
from difftrain.nets.unet import UNet

TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, head_channels=8, norm_groups=4)


def perturbed(net: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Every weight moved off its initialisation (zero-initialised output layers included), as
    a trained net's are."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return net


@pytest.mark.parametrize("patch_size", [1, 2])
def test_an_image_nets_weights_make_the_video_net_that_net_frame_by_frame(patch_size):
    torch.manual_seed(0)
    layout = dict(attn_resolutions=(8 // patch_size,), num_classes=3, patch_size=patch_size)
    image = perturbed(UNet((1, 16, 16), **layout, **TINY))
    video = UNet((1, 5, 16, 16), **layout, **TINY)
    missing, unexpected = video.load_state_dict(image.state_dict(), strict=False)
    assert not unexpected and missing  # every image weight has its place; the temporal ones are new
    temporal = {n for n, m in video.named_modules() if type(m).__name__.startswith("Temporal")}
    assert all(any(k.startswith(t + ".") for t in temporal) for k in missing)
    clips = torch.randn(2, 1, 5, 16, 16)
    noise, labels = torch.tensor([0.3, -1.0]), torch.tensor([2, 0])
    out = video(clips, noise, class_labels=labels)
    for t in range(5):
        frame = image(clips[:, :, t], noise, class_labels=labels)
        assert (out[:, :, t] - frame).abs().max() < 1e-5


def test_the_temporal_layers_mix_the_frames_and_attention_sees_its_offsets():
    torch.manual_seed(0)
    video = perturbed(UNet((1, 4, 8, 8), **TINY))
    clips = torch.randn(1, 1, 4, 8, 8)
    changed = clips.clone()
    changed[:, :, 0] += 1.0  # only the first frame
    delta = (video(changed, torch.zeros(1)) - video(clips, torch.zeros(1))).abs()
    assert delta[:, :, 3].max() > 1e-4  # the last frame hears of it
    layer = TemporalAttention(8, frames=4, head_channels=4, groups=4)
    with torch.no_grad():
        layer.bias.copy_(torch.arange(7.0).expand(2, 7))
    bias = layer.position_bias(4)  # (heads, T, T): the offset j - i, shifted to an index
    assert (
        bias.shape == (2, 4, 4) and bias[0, 0, 3] == 6 and bias[0, 3, 0] == 0 and bias[1, 2, 2] == 3
    )


def test_checkpointed_activations_give_the_same_gradients_for_clips():
    torch.manual_seed(0)
    plain = perturbed(UNet((1, 4, 8, 8), **TINY))
    saved = UNet((1, 4, 8, 8), **TINY, checkpoint_activations=True)
    saved.load_state_dict(plain.state_dict())
    clips = torch.randn(2, 1, 4, 8, 8)
    for net in (plain, saved):
        net(clips, torch.zeros(2)).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), saved.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_clip_shapes_are_checked_with_the_fix():
    net = UNet((1, 4, 16, 16), temporal_attn_resolutions=(8,), **TINY)
    net.check_shape((1, 4, 8, 8))  # a curriculum's lower resolution
    with pytest.raises(ValueError, match=r"takes samples \[1, 4\] \+ \(H, W\)"):
        net.check_shape((1, 8, 16, 16))
    with pytest.raises(ValueError, match="square images"):
        UNet((1, 4, 16, 8), **TINY)
    assert not any("TemporalAttention" in type(m).__name__ for m in net.down[0])  # 16 px: none
    assert any("TemporalAttention" in type(m).__name__ for m in net.down[2])  # 8 px


def test_space_time_attention_lets_a_frame_see_other_places_in_other_frames():
    """Per-pixel temporal attention links frame t's pixel only with the same pixel elsewhere in
    time; the space-time one links it with every place of every frame, in one layer."""
    torch.manual_seed(0)
    h = torch.randn(2 * 3, 8, 4, 4)  # (B*T, C, H, W): 2 clips of 3 frames
    changed = h.clone()
    changed[0, :, 0, 0] += 1.0  # clip 0, frame 0, pixel (0, 0)
    for kind, reaches in ((TemporalAttention, False), (SpaceTimeAttention, True)):
        layer = perturbed(kind(8, frames=3, head_channels=4, groups=4))
        layer.norm = torch.nn.Identity()  # GroupNorm would spread the change over its frame
        delta = (layer(changed) - layer(h)).abs()
        assert (delta[2, :, 3, 3].max() > 1e-5) == reaches, kind  # frame 2, pixel (3, 3)
        assert delta[3:].max() == 0  # the other clip hears nothing
    silent = SpaceTimeAttention(8, frames=3, head_channels=4, groups=4)
    assert torch.equal(silent(h), h)  # zero start: inflation stays exact
    net = UNet((1, 3, 8, 8), spacetime_attn_resolutions=(4,), **TINY)
    assert any(isinstance(m, SpaceTimeAttention) for m in net.mid)
    with pytest.raises(ValueError, match=r"spacetime_attn_resolutions \[2\]"):
        UNet((1, 3, 8, 8), spacetime_attn_resolutions=(2,), **TINY)
