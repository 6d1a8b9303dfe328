"""Text encoders: token ids (B, L) to token states (B, L, dim) that a net attends to."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from difftrain.text.tokenizer import PAD, WordTokenizer


class TinyTextEncoder(nn.Module):
    """A small transformer encoder trained with the denoiser, over a `WordTokenizer`'s ids.

    Returns the token states (B, L, dim) and a mask (B, L) of real tokens. The empty caption
    (all padding), which caption dropout and classifier-free guidance use, has no real token: a
    net then sees only the learned `empty` state, its "no prompt".
    """

    def __init__(
        self, vocab: Sequence[str] | None, max_length: int = 16, dim: int = 64, depth: int = 2,
        heads: int = 4,
    ):  # fmt: skip
        super().__init__()
        if not vocab:
            raise ValueError(
                "text_encoder=tiny reads captions, and this dataset has none to build its "
                "vocabulary from: use data=captioned_digits"
            )
        self.tokenizer = WordTokenizer(vocab, max_length)
        self.dim, self.max_length = dim, max_length
        self.embed = nn.Embedding(self.tokenizer.size, dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.empty = nn.Parameter(torch.zeros(dim))  # the state of "no prompt"

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        mask = tokens != PAD
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        # A row with no real token attends to its first slot, whose state becomes `empty`.
        attend = mask.clone()
        attend[:, 0] = True
        h = self.norm(self.layers(h, src_key_padding_mask=~attend))
        none = ~mask.any(1)
        h = torch.where(none[:, None, None], self.empty.to(h.dtype).expand_as(h), h)
        return h, attend
