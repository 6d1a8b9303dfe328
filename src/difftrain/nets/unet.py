"""A UNet denoiser network (Ho et al. 2020; Dhariwal & Nichol 2021, "ADM" without the BigGAN blocks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from difftrain.nets.conditioning import add_labels, null_class, read_prompt
from difftrain.nets.layers import (
    CrossAttention,
    Downsample,
    NoiseEmbedding,
    ResBlock,
    SelfAttention,
    Upsample,
    zero_init,
)
from difftrain.nets.protocol import Cond
from difftrain.nets.temporal import (
    SpaceTimeAttention,
    TemporalAttention,
    TemporalConv,
    as_clips,
    as_frames,
    given_input,
)


class UNet(nn.Module):
    """F(x, c_noise, class_labels, augment_labels) -> x's shape, for images (B, C, H, W) with
    H = W (`sample_shape` (C, H, W)), or clips (B, C, T, H, W) (`sample_shape` (C, T, H, W));
    implements `nets.protocol.Net`.

    For clips it is a factorized space-time UNet (Ho et al. 2022, "Video Diffusion Models"): every
    layer of the image UNet runs on each frame, and each block (and the middle) ends with a
    temporal convolution (`temporal_kernel`) and, at `temporal_attn_resolutions` (None: all),
    attention across the frames with a relative position bias (`nets.temporal`); at
    `spacetime_attn_resolutions` that attention spans every position of every frame instead.
    All are residual branches that start
    at zero, so at initialisation the net is its image net applied frame by frame, and an image
    net's weights load into it by their names (`model.init_from`). With `given_frames`, it also
    reads a clip's given frames (`given` (B, C, T, H, W), 0 where not given) and their mask
    (`given_mask` (B, 1, T, 1, 1)) through one more input convolution, zero at first: prediction
    and interpolation (`training.conditioners.GivenFrames`).

    Level i works at resolution image_size / patch_size / 2^i with channels * channel_mult[i]
    channels and `num_res_blocks` residual blocks; self-attention follows each block at
    `attn_resolutions` (resolutions as the levels work at). With patch_size p > 1 the net reads
    and writes p x p patches as p^2 channels (space-to-depth, as Hoogeboom et al. 2023 shift a
    high resolution down at the input): about p^2 times less compute, for a net that models the
    pixels of a patch jointly in its last convolution.
    With num_classes > 0 the net is class-conditional; label `num_classes` is the null class
    (unconditional), which is what `class_labels=None` means. With augment_dim > 0 the net also
    takes non-leaking augmentation labels (B, augment_dim); None means "not augmented".

    With a `text_encoder` (e.g. `text.encoders.TinyTextEncoder`) the net reads prompts, as token
    rows `text_tokens` (B, L) of the encoder's tokenizer (`self.tokenizer`): their states are added,
    mean-pooled, to the noise embedding, and attended to by cross-attention after each block at
    `cross_attn_resolutions` and in the middle (Stable Diffusion's layout). The empty caption
    (all padding) is "no prompt", which `text_tokens=None` means.

    With `checkpoint_activations`, each block's activations are recomputed in the backward pass
    instead of kept (torch.utils.checkpoint): training memory falls to about the blocks' outputs,
    for about one more forward pass of compute. Evaluation and sampling are unaffected.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (),
        head_channels: int = 64,
        dropout: float = 0.0,
        norm_groups: int = 32,
        num_classes: int = 0,
        augment_dim: int = 0,
        checkpoint_activations: bool = False,
        text_encoder: nn.Module | None = None,
        cross_attn_resolutions: Sequence[int] = (),
        temporal_attn_resolutions: Sequence[int] | None = None,
        spacetime_attn_resolutions: Sequence[int] = (),
        temporal_kernel: Sequence[int] = (3, 1, 1),
        given_frames: bool = False,
        patch_size: int = 1,
    ):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"net.patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.checkpoint_activations = checkpoint_activations
        self.channel_mult = list(channel_mult)
        if len(sample_shape) not in (3, 4) or sample_shape[-1] != sample_shape[-2]:
            raise ValueError(
                f"a UNet takes square images (C, H, W) or clips (C, T, H, W), not sample_shape "
                f"{list(sample_shape)}"
            )
        self._sample_shape = tuple(int(s) for s in sample_shape)
        in_channels, image_size = self._sample_shape[0], self._sample_shape[-1]
        self.frames = self._sample_shape[1] if len(sample_shape) == 4 else 0
        self.check_shape(self._sample_shape)
        resolutions = [image_size // patch_size // 2**i for i in range(len(channel_mult))]
        widths = [channels * m for m in channel_mult]
        _check_layout(resolutions, widths, norm_groups, attn_resolutions, cross_attn_resolutions,
                      text_encoder is not None, spacetime_attn_resolutions)  # fmt: skip
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        emb_ch = 4 * channels

        self.noise_emb = NoiseEmbedding(channels, emb_ch)
        self.class_emb = nn.Embedding(num_classes + 1, emb_ch) if num_classes else None
        self.augment_dim = augment_dim
        self.augment_emb = nn.Linear(augment_dim, emb_ch, bias=False) if augment_dim else None
        self.text_encoder = text_encoder
        self.tokenizer = getattr(text_encoder, "tokenizer", None)
        text_dim = text_encoder.dim if text_encoder is not None else 0
        self.text_pool = nn.Linear(text_dim, emb_ch) if text_encoder is not None else None
        patch = patch_size**2  # channels of a p x p patch, per channel of the samples
        self.conv_in = nn.Conv2d(in_channels * patch, widths[0], 3, padding=1)
        if given_frames and not self.frames:
            raise ValueError("net.given_frames=true needs clips: a sample_shape (C, T, H, W)")
        self.given_frames = given_frames
        # The given frames and their mask, read beside the noisy input (concatenated, as one
        # convolution of both); zero at first, so an inflated net is still the image net. No
        # bias: no frame given (zeros) is exactly no `given_frames` at all, as sampling passes.
        given_in = nn.Conv2d((in_channels + 1) * patch, widths[0], 3, padding=1, bias=False)
        self.given_in = zero_init(given_in) if given_frames else None

        if len(temporal_kernel) != 3 or any(k % 2 == 0 for k in temporal_kernel):
            raise ValueError(
                f"net.temporal_kernel {list(temporal_kernel)} must be 3 odd sizes "
                "(time, height, width), e.g. [3, 1, 1] or [3, 3, 3]"
            )

        def cross(ch: int) -> CrossAttention:
            return CrossAttention(ch, text_dim, min(head_channels, ch), norm_groups)

        def temporal(ch: int, res: int) -> list[nn.Module]:
            """The temporal layers ending a block: after the spatial ones, which keep the image
            net's names."""
            if not self.frames:
                return []
            layers = [TemporalConv(ch, self.frames, norm_groups, temporal_kernel)]
            heads = min(head_channels, ch)
            if res in spacetime_attn_resolutions:  # every position of every frame
                layers.append(SpaceTimeAttention(ch, self.frames, heads, norm_groups))
            elif temporal_attn_resolutions is None or res in temporal_attn_resolutions:
                layers.append(TemporalAttention(ch, self.frames, heads, norm_groups))
            return layers

        def block(cin: int, cout: int, res: int) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, emb_ch, dropout, norm_groups)]
            if res in attn_resolutions:
                layers.append(SelfAttention(cout, min(head_channels, cout), norm_groups))
            if res in cross_attn_resolutions:
                layers.append(cross(cout))
            return nn.ModuleList(layers + temporal(cout, res))

        # Encoder, middle (residual block, attention, residual block), decoder; built in this
        # order, which is the order their weights are drawn in.
        self.down, skips = _encoder(widths, resolutions, num_res_blocks, block)
        ch = widths[-1]
        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_ch, dropout, norm_groups),
                SelfAttention(ch, min(head_channels, ch), norm_groups),
                *([cross(ch)] if text_encoder is not None else []),
                ResBlock(ch, ch, emb_ch, dropout, norm_groups),
                *temporal(ch, resolutions[-1]),
            ]
        )

        self.up = _decoder(widths, resolutions, num_res_blocks, skips, block)
        ch = widths[0]
        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, in_channels * patch, 3, padding=1))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    def null_cond(self, cond: Cond) -> dict[str, Tensor]:
        return null_class(cond, self.num_classes)

    def check_shape(self, shape: Sequence[int]) -> None:
        """Fail with the sizes involved unless samples of `shape` have this net's channels (and
        frames) and a side that can be halved once per level but the last."""
        shape = tuple(shape)
        if len(shape) != len(self._sample_shape) or shape[:-2] != self._sample_shape[:-2]:
            raise ValueError(
                f"this UNet takes samples {list(self._sample_shape[:-2])} + (H, W), not {list(shape)}"
            )
        size = shape[-1]
        levels = len(self.channel_mult)
        factor = self.patch_size * 2 ** (levels - 1)
        if size % factor:
            patches = f" after {self.patch_size}x{self.patch_size} patches" * (self.patch_size > 1)
            raise ValueError(
                f"image size {size} cannot be halved {levels - 1} times{patches} by a UNet with "
                f"{levels} levels (channel_mult={self.channel_mult}): use an image size divisible "
                f"by {factor} (e.g. {size + factor - size % factor}) or fewer levels"
            )

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        *,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        text_tokens: Tensor | None = None,
        given: Tensor | None = None,
        given_mask: Tensor | None = None,
    ) -> Tensor:
        if given is not None and self.given_in is None:
            raise ValueError(
                "frames given, but this UNet does not read them: net.given_frames=true"
            )
        emb = self.noise_emb(c_noise.expand(x.shape[0]))
        context = None
        if self.text_encoder is not None:
            states, mask, pooled = read_prompt(self.text_encoder, text_tokens, len(x), x.device)
            context = (states, mask)
            emb = emb + self.text_pool(pooled.to(emb.dtype))
        emb = add_labels(
            emb, self.num_classes, self.class_emb, class_labels, self.augment_emb, augment_labels
        )
        if self.frames:  # every frame through the spatial layers, with its clip's conditioning
            x = as_frames(x)  # (B, C, T, H, W) -> (B*T, C, H, W)
            emb = emb.repeat_interleave(self.frames, 0)  # (B, E) -> (B*T, E)
            if context is not None:
                context = tuple(t.repeat_interleave(self.frames, 0) for t in context)

        run = _run
        if self.checkpoint_activations and torch.is_grad_enabled():
            run = partial(checkpoint, _run, use_reentrant=False)
        p = self.patch_size
        h = self.conv_in(F.pixel_unshuffle(x, p))  # (N, C, H, W) -> (N, C p^2, H/p, W/p) first
        if given is not None:  # (B, C, T, H, W) and its mask as one more channel, per frame
            h = h + self.given_in(F.pixel_unshuffle(given_input(given, given_mask), p).to(h.dtype))
        skips = [h]
        for layers in self.down:
            h = run(layers, h, emb, context)
            skips.append(h)
        h = run(self.mid, h, emb, context)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = run(layers, h, emb, context)
        out = F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), p)  # patches to pixels
        return as_clips(out, self.frames) if self.frames else out


def _check_layout(
    resolutions: list[int],
    widths: list[int],
    norm_groups: int,
    attn_resolutions: Sequence[int],
    cross_attn_resolutions: Sequence[int],
    reads_text: bool,
    spacetime_attn_resolutions: Sequence[int] = (),
) -> None:
    """Refuse, naming the fix, attention at resolutions the UNet has not, cross-attention with
    no text to attend to, and widths that GroupNorm cannot split."""
    for name, chosen in (
        ("attn", attn_resolutions),
        ("cross_attn", cross_attn_resolutions),
        ("spacetime_attn", spacetime_attn_resolutions),
    ):
        if unknown := set(chosen) - set(resolutions):
            raise ValueError(
                f"{name}_resolutions {sorted(unknown)} not among the UNet's resolutions "
                f"{resolutions}"
            )
    if cross_attn_resolutions and not reads_text:
        raise ValueError(
            "net.cross_attn_resolutions attend to text, but there is no text encoder: choose "
            "one (text_encoder=tiny) or set net.cross_attn_resolutions=[]"
        )
    if bad := [w for w in widths if w % norm_groups]:
        raise ValueError(f"channel widths {bad} are not divisible by norm_groups={norm_groups}")


Block = Callable[[int, int, int], nn.ModuleList]  # (in width, out width, resolution) -> layers


def _encoder(
    widths: list[int], resolutions: list[int], num_res_blocks: int, block: Block
) -> tuple[nn.ModuleList, list[int]]:
    """The down path: `num_res_blocks` blocks per level, a Downsample between levels; and the
    width of every skip connection it leaves for the decoder."""
    down, skips, ch = nn.ModuleList(), [widths[0]], widths[0]
    for i, (w, res) in enumerate(zip(widths, resolutions, strict=True)):
        for _ in range(num_res_blocks):
            down.append(block(ch, w, res))
            ch = w
            skips.append(ch)
        if i < len(widths) - 1:
            down.append(nn.ModuleList([Downsample(ch)]))
            skips.append(ch)
    return down, skips


def _decoder(
    widths: list[int], resolutions: list[int], num_res_blocks: int, skips: list[int], block: Block
) -> nn.ModuleList:
    """The up path: each block consumes one skip connection, an Upsample between levels."""
    up, ch = nn.ModuleList(), widths[-1]
    for i in reversed(range(len(widths))):
        for _ in range(num_res_blocks + 1):
            up.append(block(ch + skips.pop(), widths[i], resolutions[i]))
            ch = widths[i]
        if i > 0:
            up.append(nn.ModuleList([Upsample(ch)]))
    return up


def _run(
    layers: nn.ModuleList, h: Tensor, emb: Tensor, context: tuple[Tensor, Tensor] | None
) -> Tensor:
    for layer in layers:
        h = layer(h, context) if isinstance(layer, CrossAttention) else layer(h, emb)
    return h
