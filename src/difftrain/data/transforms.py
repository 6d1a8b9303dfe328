"""Normalization to the model's value range, and its exact inverse for every image the project writes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def to_model_range(x: Tensor, value_range: Sequence[float]) -> Tensor:
    """Map images in [0, 1] to [low, high]."""
    low, high = value_range
    return x * (high - low) + low


def to_uint8(x: Tensor, value_range: Sequence[float]) -> Tensor:
    """Map model-range images (B, C, H, W) back to uint8 (B, H, W, C), clipping out-of-range values."""
    low, high = value_range
    x01 = (x.float() - low) / (high - low)
    return (x01 * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
