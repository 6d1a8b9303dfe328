"""Prompt alignment on captioned_digits: does a sample show what its prompt asked for?

An attribute judge (one small classifier per judged attribute, trained on captioned_digits'
training images and cached) predicts each sample's digit, foreground and background colour, size
and position: every attribute a caption names. Alignment accuracy is the share of samples whose
predicted attributes match their prompt's: per attribute, for all at once, and apart for prompts
of held-out combinations (never seen in training). The digit and colour judges' penultimate
features, side by side, also give an FID against real images.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from difftrain.data.captioned import ATTRIBUTES, CHOICES, Attributes, CaptionedImages
from difftrain.data.datasets import TensorImages
from difftrain.evaluation.classifier import Classifier, load_or_train_classifier

log = logging.getLogger(__name__)
JUDGED = ("digit", "foreground", "background", "size", "position")
FEATURED = ("digit", "foreground", "background")  # the FID's features (as before size and position)
JUDGE_VERSION = 1  # part of the cache key: bump it when the judge or its training changes


def fingerprint(dataset: CaptionedImages) -> str:
    """A short hash of a dataset's images and attributes: the judge's cache key."""
    digest = hashlib.sha256()
    digest.update(dataset.images[:: max(1, len(dataset) // 512)].numpy().tobytes())
    digest.update(dataset.attributes.numpy().tobytes())
    return digest.hexdigest()[:12]


class AttributeJudge:
    """One trained `Classifier` per judged attribute; `predict(uint8 images)` -> (N, 3) indices."""

    def __init__(self, classifiers: dict[str, Classifier], accuracies: dict[str, float]):
        self.classifiers, self.accuracies = classifiers, accuracies

    @classmethod
    def load_or_train(
        cls,
        train: CaptionedImages,
        val: CaptionedImages,
        cache_dir: str | Path,
        images: int = 20000,
        epochs: int = 3,
        min_accuracy: float = 0.9,
    ) -> AttributeJudge:
        """The judge of these data (trained on first use on `images` training images at most,
        `epochs` for the digit, one for each other attribute), refused when an attribute's validation
        accuracy is under `min_accuracy`."""
        train = CaptionedImages(
            train.images[:images], train.labels[:images], train.captions[:images],
            train.attributes[:images], train.held_out,
        )  # fmt: skip
        key = f"captioned-{fingerprint(train)}-{len(train)}img"
        classifiers, accuracies = {}, {}
        for attribute in JUDGED:
            column = ATTRIBUTES.index(attribute)
            splits = {
                "train": TensorImages(train.images, train.attributes[:, column]),
                "val": TensorImages(val.images, val.attributes[:, column]),
            }
            rounds = epochs if attribute == "digit" else 1  # a colour, size or place: one epoch
            path, accuracy = load_or_train_classifier(
                f"{key}-{rounds}ep-v{JUDGE_VERSION}-{attribute}", cache_dir, splits.__getitem__,
                train.images.shape[1], len(CHOICES[attribute]), rounds, f"the {attribute} judge",
            )  # fmt: skip
            if accuracy < min_accuracy:
                raise ValueError(
                    f"the {attribute} judge reaches only {accuracy:.3f} validation accuracy (needs "
                    f"{min_accuracy}): train it on more images (callbacks.alignment.judge_images) "
                    f"or longer (callbacks.alignment.judge_epochs); delete {path} to retrain"
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
            classifier = Classifier(**state["config"])
            classifier.load_state_dict(state["state_dict"])
            classifiers[attribute], accuracies[attribute] = classifier.eval(), accuracy
        return cls(classifiers, accuracies)

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """uint8 images (N, C, H, W) -> the digit and colour judges' penultimate features (N, D)."""
        return torch.cat([
            torch.cat([self.classifiers[a](chunk)[0] for a in FEATURED], dim=1)
            for chunk in images.split(batch_size)
        ])  # fmt: skip

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """uint8 images (N, C, H, W) -> predicted attribute indices (N, len(JUDGED))."""
        return torch.stack([self.classifiers[a](images)[1].argmax(1) for a in JUDGED], dim=1)


def prompt_set(
    n_seen: int, n_per_held_out: int, held_out: Sequence[dict[str, int]], seed: int = 0
) -> tuple[list[Attributes], Tensor]:
    """Attributes of `n_seen` prompts of combinations seen in training and `n_per_held_out` of
    each held-out combination (the others drawn at random), and a mask (N,) of the held-out."""
    from difftrain.data.captioned import is_held_out

    generator = torch.Generator().manual_seed(seed)

    def draw(n: int) -> Tensor:
        return torch.stack(
            [torch.randint(len(CHOICES[a]), (n,), generator=generator) for a in ATTRIBUTES], dim=1
        )

    seen = draw(4 * n_seen + 64)
    seen = seen[~is_held_out(seen, list(held_out))][:n_seen]
    rows, mask = [seen], [torch.zeros(len(seen), dtype=torch.bool)]
    for combo in held_out:
        rows_of_combo = draw(n_per_held_out)
        for key, value in combo.items():
            rows_of_combo[:, ATTRIBUTES.index(key)] = value
        rows.append(rows_of_combo)
        mask.append(torch.ones(n_per_held_out, dtype=torch.bool))
    attributes = torch.cat(rows)
    return [Attributes(*row) for row in attributes.tolist()], torch.cat(mask)


def alignment(predicted: Tensor, asked: Sequence[Attributes], held_out: Tensor) -> dict[str, float]:
    """Alignment accuracy per judged attribute and for all at once, over the seen prompts and
    (`heldout_*`) over the held-out ones."""
    target = torch.tensor([[getattr(a, name) for name in JUDGED] for a in asked])
    correct = predicted == target
    scores = {}
    for prefix, rows in (("", ~held_out), ("heldout_", held_out)):
        if not rows.any():
            continue
        for i, name in enumerate(JUDGED):
            scores[f"{prefix}{name}"] = correct[rows, i].float().mean().item()
        scores[f"{prefix}all"] = correct[rows].all(1).float().mean().item()
    return scores
