"""Conditioning: what a batch gives the net besides its noisy input, as one injected part.

`DiffusionModule` asks its conditioning for the net's conditioning mapping of each batch
(`nets.protocol.Cond`), in training with null entries at random (`dropout`: what classifier-free
guidance learns the unconditional model from), and sampling asks it for the prior that classes
are drawn by. One class per kind: none, class labels, captions, and k-means clusters of the images
standing in for labels, and a clip's given frames beside any of them. A new kind is one more
class, passed as `model.conditioning`; the module does not change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from difftrain.diffusion.generate import given_values
from difftrain.streams import WHOLE, Share
from difftrain.text.tokenizer import PAD
from difftrain.training.clusters import Clusters

log = logging.getLogger(__name__)


class Conditioning:
    """None at all: an unconditional net. Base class of the others.

    `setup` reads what the data gives once, when fitting starts; `__call__` turns a batch
    (x0 (B, *shape), labels (B, ...)) into the net's conditioning, replacing entries by their null
    with probability `dropout` when given the training step's `generator`; `prior` is the share of
    each class that sampling draws classes by (None: in turn).
    """

    prior: Tensor | None = None

    def __init__(self, dropout: float = 0.0):
        if not 0 <= dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout

    def setup(self, datamodule: object, denoisers: list) -> None:
        """Once when fitting starts, with the data and the denoisers (online and EMA)."""

    def __call__(
        self,
        x0: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
        share: Share = WHOLE,
    ) -> dict[str, Tensor]:
        return {}

    def dropped(
        self, n: int, generator: torch.Generator | None, share: Share, device
    ) -> Tensor | None:
        """Which of this process's n examples lose their conditioning (B,) bool, drawn for the
        global batch from the step's generator; None outside training or without dropout."""
        if generator is None or not self.dropout:
            return None
        u = share.of(torch.rand(n * share.world, device=device, generator=generator))
        return u < self.dropout


class ClassLabels(Conditioning):
    """`class_labels` (B,): the data's labels; the null class is `num_classes`."""

    def __init__(self, num_classes: int, dropout: float = 0.0):
        super().__init__(dropout)
        self.num_classes = num_classes

    def __call__(self, x0, labels, generator=None, share=WHOLE):
        drop = self.dropped(len(labels), generator, share, labels.device)
        if drop is not None:
            labels = labels.masked_fill(drop, self.num_classes)
        return {"class_labels": labels}


class Captions(Conditioning):
    """`text_tokens` (B, L): the captions' token rows; the null caption is all padding. A frozen
    text encoder (text_encoder=clip) reads the data's captions once, at setup."""

    def setup(self, datamodule, denoisers):
        encoders = [d.net.text_encoder for d in denoisers]
        caption_rows = getattr(datamodule, "caption_rows", None)  # a captioned data module's
        if hasattr(encoders[0], "precompute") and caption_rows is not None:
            encoders[0].precompute(caption_rows())
            for encoder in encoders[1:]:
                encoder.share_table(encoders[0])

    def __call__(self, x0, labels, generator=None, share=WHOLE):
        drop = self.dropped(len(labels), generator, share, labels.device)
        if drop is not None:
            labels = labels.masked_fill(drop[:, None], PAD)  # the empty caption
        return {"text_tokens": labels}


class ClusterLabels(ClassLabels):
    """Class labels that are each example's k-means cluster (`training.clusters`), fitted to the
    training data at setup unless a resumed checkpoint brought them; samples draw clusters by
    their share of the data."""

    def __init__(self, clusters: Clusters, dropout: float = 0.0):
        super().__init__(clusters.k, dropout)
        self.clusters = clusters

    @property
    def prior(self) -> Tensor:
        return self.clusters.prior

    def setup(self, datamodule, denoisers):
        if self.clusters.fitted:
            return
        examples = getattr(datamodule, "examples", None)
        if examples is None:
            raise ValueError(
                "model.clusters fits its clusters to the data's images, and this data module "
                f"({type(datamodule).__name__}) serves none: drop model.clusters"
            )
        labels = self.clusters.fit(examples(self.clusters.examples))
        sizes = torch.bincount(labels, minlength=self.clusters.k)
        log.info(
            "cluster conditioning: %d k-means clusters of %d training examples, %d to %d each",
            self.clusters.k, len(labels), sizes.min(), sizes.max(),
        )  # fmt: skip

    def __call__(self, x0, labels, generator=None, share=WHOLE):
        return super().__call__(x0, self.clusters(x0), generator, share)


class GivenFrames(Conditioning):
    """A clip's given frames (RaMViD, Höppe et al. 2022; MCVD, Voleti et al. 2022) beside another
    conditioning (`inner`: labels, captions or none): `given` (B, C, T, H, W), the clean frames
    where given and 0 elsewhere, and `given_mask` (B, 1, T, 1, 1) (`generate.given_values`). In
    training each clip draws one of `modes` uniformly: "none", "first" (the first k frames, k
    uniform in 1 .. T-1: prediction) or "first_last" (interpolation); the loss leaves the given
    frames out (`diffusion.loss`).
    Outside training no frame is given; sampling passes its own (`Diffusion.generate(given=)`)."""

    MODES = ("none", "first", "first_last")

    def __init__(self, inner: Conditioning, modes: Sequence[str] = MODES):
        super().__init__(inner.dropout)
        unknown = sorted(set(modes) - set(self.MODES))
        if unknown or not modes:
            raise ValueError(
                f"model.given_modes must be some of {list(self.MODES)}, got {list(modes)}"
            )
        self.inner, self.modes = inner, list(modes)

    @property
    def prior(self) -> Tensor | None:
        return self.inner.prior

    def setup(self, datamodule, denoisers):
        self.inner.setup(datamodule, denoisers)

    def __call__(self, x0, labels, generator=None, share=WHOLE):
        cond = self.inner(x0, labels, generator, share)
        if generator is None:
            return cond
        n, frames, device = len(x0) * share.world, x0.shape[2], x0.device
        mode = share.of(torch.randint(len(self.modes), (n,), device=device, generator=generator))
        k = share.of(torch.randint(1, max(frames, 2), (n,), device=device, generator=generator))
        t = torch.arange(frames, device=device)
        shapes = {
            "none": torch.zeros_like(t, dtype=torch.bool)[None],
            "first": t[None] < k[:, None],
            "first_last": ((t == 0) | (t == frames - 1))[None] & (frames > 2),
        }
        mask = torch.zeros(len(x0), frames, dtype=torch.bool, device=device)
        for i, name in enumerate(self.modes):
            mask |= (mode == i)[:, None] & shapes[name]
        mask = mask[:, None, :, None, None]  # (B, T) -> (B, 1, T, 1, 1)
        return {**cond, **given_values(x0, mask)}


def conditioning_for(
    net,
    dropout: float = 0.0,
    clusters: Clusters | None = None,
    given_modes: Sequence[str] = GivenFrames.MODES,
) -> Conditioning:
    """The conditioning a net reads: k-means clusters (model.clusters), captions (a net with a
    tokenizer), class labels (net.num_classes > 0), or none; and a clip's given frames besides
    for a net that reads them (net.given_frames), drawn by `given_modes`."""
    inner = _conditioning_for(net, dropout, clusters)
    return GivenFrames(inner, given_modes) if getattr(net, "given_frames", False) else inner


def _conditioning_for(net, dropout: float, clusters: Clusters | None) -> Conditioning:
    if clusters is not None:
        if net.num_classes != clusters.k:
            raise ValueError(
                f"model.clusters.k={clusters.k} clusters condition a net with as many classes, "
                f"but net.num_classes={net.num_classes}: set net.num_classes={clusters.k}"
            )
        return ClusterLabels(clusters, dropout)
    if getattr(net, "tokenizer", None) is not None:
        return Captions(dropout)
    if net.num_classes:
        return ClassLabels(net.num_classes, dropout)
    return Conditioning(dropout)
