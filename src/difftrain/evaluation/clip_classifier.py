"""A small 3D CNN trained on the clips themselves: the features of a Fréchet distance on clips.

This is not FVD. FVD (Unterthiner et al. 2018) is the Fréchet distance on the features of I3D
trained on Kinetics-400; its weights cannot be downloaded here and its features know nothing of
moving digits. Like the per-frame classifier (`evaluation.classifier`), this net is trained on the
dataset (once, then cached by the clips' fingerprint), and for its features to see time as well as
content it learns two things at once: the clip's class (where the data has labels) and whether
its frames come in order, shuffled or frozen (one frame held). Only distances with the same
extractor compare; `VideoEvaluator` reports the real-vs-real floor beside each.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from difftrain.evaluation.evaluator import fingerprint

ORDERS = ("in_order", "shuffled", "frozen")
CLIP_CLASSIFIER_VERSION = 1  # part of the cache key: bump it when the net or its task changes


class ClipClassifier(nn.Module):
    """Three 3-D convolutions after a per-frame one, global average pool -> 8 width features ->
    logits of (class, order). uint8 clips (B, C, T, H, W) -> (features, logits)."""

    def __init__(self, channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.config = {"channels": channels, "num_classes": num_classes, "width": width}

        def block(cin: int, cout: int, kernel: tuple[int, int, int]) -> list[nn.Module]:
            padding = tuple(k // 2 for k in kernel)
            conv = nn.Conv3d(cin, cout, kernel, padding=padding)
            return [conv, nn.BatchNorm3d(cout), nn.ReLU()]

        w = width
        self.body = nn.Sequential(
            *block(channels, w, (1, 3, 3)), nn.MaxPool3d((1, 2, 2)),  # each frame alone first
            *block(w, 2 * w, (3, 3, 3)), nn.MaxPool3d((1, 2, 2)),
            *block(2 * w, 4 * w, (3, 3, 3)), nn.MaxPool3d((2, 2, 2)),
            *block(4 * w, 8 * w, (3, 3, 3)), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(8 * w, num_classes))

    def forward(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(clips.float() / 127.5 - 1)  # (B, 8 width)
        return features, self.head(features)


def reorder(clip: Tensor, order: int, generator: torch.Generator) -> Tensor:
    """A clip (C, T, H, W) in order (0), with its frames shuffled (1: any order but the true
    one) or frozen at one of its frames (2)."""
    frames = clip.shape[1]
    if order == 1:
        permutation = torch.randperm(frames, generator=generator)
        if torch.equal(permutation, torch.arange(frames)):
            permutation = permutation.roll(1)
        return clip[:, permutation]
    if order == 2:
        held = int(torch.randint(frames, (1,), generator=generator))
        return clip[:, held : held + 1].expand_as(clip)
    return clip


class OrderTask(Dataset):
    """Each clip of uint8 clips (N, C, T, H, W) three times, in order, shuffled and frozen
    (fixed by `seed`), as (clip in [0, 1], class * 3 + order); the class is 0 without labels."""

    def __init__(self, clips: Tensor, labels: Tensor | None, seed: int = 0):
        self.clips, self.labels, self.seed = clips, labels, seed

    def __len__(self) -> int:
        return 3 * len(self.clips)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        clip, order = self.clips[i // 3], i % 3
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        label = 0 if self.labels is None else int(self.labels[i // 3])
        return reorder(clip, order, generator).float() / 255, label * len(ORDERS) + order


def clip_classifier_key(clips: Tensor, num_labels: int, clips_used: int, epochs: int) -> str:
    """The cache key of the clip classifier trained on `clips` (uint8 (N, C, T, H, W))."""
    shape = "x".join(map(str, clips.shape[1:]))
    return (
        f"clips-{fingerprint(clips)}-{shape}-{num_labels}cls-v{CLIP_CLASSIFIER_VERSION}"
        f"-{clips_used}clips-{epochs}ep"
    )


def epochs_for(examples: int, available: int, max_epochs: int) -> int:
    """Epochs over `available` examples that see about `examples`, at least 1, at most max."""
    return min(max_epochs, max(1, math.ceil(examples / max(available, 1))))
