"""How a net reads its conditioning (`nets.protocol.Cond`): class labels and augmentation labels
added to the noise embedding, prompts read by a text encoder, and the null conditioning that
classifier-free guidance contrasts with. Shared by every net."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from difftrain.text.tokenizer import PAD


def null_class(cond: Mapping[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """`cond` made unconditional: every class label replaced by the null class `num_classes` (no
    class), every caption (`text_tokens`) by the empty caption (all padding)."""
    out = dict(cond)
    if "class_labels" in out:
        out["class_labels"] = torch.full_like(out["class_labels"], num_classes)
    if "text_tokens" in out:
        out["text_tokens"] = torch.full_like(out["text_tokens"], PAD)
    return out


def add_labels(
    emb: Tensor,
    num_classes: int,
    class_emb: nn.Module | None,
    class_labels: Tensor | None,
    augment_emb: nn.Module | None = None,
    augment_labels: Tensor | None = None,
) -> Tensor:
    """`emb` (B, D) plus the class's embedding (no labels: the null class `num_classes`) and the
    augmentation labels' embedding, for the nets that have them."""
    if augment_emb is not None and augment_labels is not None:
        emb = emb + augment_emb(augment_labels.to(emb.dtype))
    if class_emb is not None:
        if class_labels is None:
            class_labels = torch.full((emb.shape[0],), num_classes, device=emb.device)
        emb = emb + class_emb(class_labels)
    return emb


def read_prompt(
    text_encoder: nn.Module, tokens: Tensor | None, batch: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """The prompt's token states (B, L, D), their mask (B, L) and their masked mean (B, D), for
    token rows `tokens`; None is the empty caption (no prompt)."""
    if tokens is None:
        tokens = torch.full((batch, 1), PAD, dtype=torch.long, device=device)
    states, mask = text_encoder(tokens)
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return states, mask, pooled
