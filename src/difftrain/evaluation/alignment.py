"""Prompt alignment on captioned data: does a sample show what its prompt asked for?

An attribute judge (one small classifier per attribute its captions name, trained on the
dataset's training examples and cached) predicts each sample's attributes: on captioned_digits
the digit, foreground and background colour, size and position (image classifiers); on
moving_digits_text the digit, colour and direction of motion (3-D CNNs on the clips,
`evaluation.clip_classifier`). Alignment accuracy is the share of samples whose predicted
attributes match their prompt's: per attribute, for all at once, and apart for prompts of
held-out combinations (never seen in training). Some judges' penultimate features, side by side,
also give an FID against real examples.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difftrain.data.captioned import ATTRIBUTES, DIGIT_CAPTIONS, CaptionSchema
from difftrain.data.datasets import TensorImages
from difftrain.evaluation.classifier import Classifier, load_or_train_classifier
from difftrain.evaluation.clip_classifier import ClipClassifier

log = logging.getLogger(__name__)
JUDGED = ATTRIBUTES  # captioned_digits' judged attributes, in the order `predict` gives them
JUDGE_VERSION = 1  # part of the cache key: bump it when the judge or its training changes


def fingerprint(images: Tensor, attributes: Tensor) -> str:
    """A short hash of captioned images (or clips) and their attributes: the judge's cache key."""
    digest = hashlib.sha256()
    digest.update(images[:: max(1, len(images) // 512)].numpy().tobytes())
    digest.update(attributes.numpy().tobytes())
    return digest.hexdigest()[:12]


class AttributeJudge:
    """One trained classifier per attribute of `schema`; `predict(uint8 images or clips)` -> (N, A)
    predicted indices, in the schema's order."""

    def __init__(
        self,
        classifiers: dict[str, Any],
        accuracies: dict[str, float],
        schema: CaptionSchema = DIGIT_CAPTIONS,
    ):
        self.classifiers, self.accuracies, self.schema = classifiers, accuracies, schema
        self.featured = schema.featured or schema.attributes

    @classmethod
    def load_or_train(
        cls,
        train: Any,
        val: Any,
        cache_dir: str | Path,
        images: int = 20000,
        epochs: int = 3,
        min_accuracy: float = 0.9,
    ) -> AttributeJudge:
        """The judge of these captioned data (`CaptionedImages`, of images or clips: `images`,
        `attributes`, `schema`), trained on first use on `images` training examples at most,
        `epochs` for the digit, one for each other attribute, and refused when an attribute's
        validation accuracy is under `min_accuracy`."""
        schema, clips = train.schema, train.images.ndim == 5
        kept, rows = train.images[:images], train.attributes[:images]
        key = f"captioned{'-clips' if clips else ''}-{fingerprint(kept, rows)}-{len(kept)}img"
        channels = kept.shape[1]
        kind = ClipClassifier if clips else Classifier
        classifiers, accuracies = {}, {}
        for column, attribute in enumerate(schema.attributes):
            splits = {
                "train": TensorImages(kept, rows[:, column]),
                "val": TensorImages(val.images, val.attributes[:, column]),
            }
            rounds = epochs if attribute == "digit" else 1  # any other attribute: one epoch
            classes = len(schema.choices[attribute])
            path, accuracy = load_or_train_classifier(
                f"{key}-{rounds}ep-v{JUDGE_VERSION}-{attribute}", cache_dir, splits.__getitem__,
                channels, classes, rounds, f"the {attribute} judge",
                build=lambda n=classes: kind(channels, n), unit="clips" if clips else "images",
            )  # fmt: skip
            if accuracy < min_accuracy:
                raise ValueError(
                    f"the {attribute} judge reaches only {accuracy:.3f} validation accuracy (needs "
                    f"{min_accuracy}): train it on more examples (callbacks.alignment.judge_images) "
                    f"or longer (callbacks.alignment.judge_epochs); delete {path} to retrain"
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
            classifier = kind(**state["config"])
            classifier.load_state_dict(state["state_dict"])
            classifiers[attribute], accuracies[attribute] = classifier.eval(), accuracy
        return cls(classifiers, accuracies, schema)

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """uint8 images or clips (N, C, ...) -> the featured judges' penultimate features (N, D)."""
        return torch.cat([
            torch.cat([self.classifiers[a](chunk)[0] for a in self.featured], dim=1)
            for chunk in images.split(batch_size)
        ])  # fmt: skip

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """uint8 images or clips (N, C, ...) -> predicted attribute indices (N, A)."""
        return torch.cat([
            torch.stack(
                [self.classifiers[a](chunk)[1].argmax(1) for a in self.schema.attributes], dim=1
            )
            for chunk in images.split(batch_size)
        ])  # fmt: skip


def prompt_set(
    n_seen: int,
    n_per_held_out: int,
    held_out: Sequence[dict[str, int]],
    seed: int = 0,
    schema: CaptionSchema = DIGIT_CAPTIONS,
) -> tuple[Tensor, Tensor]:
    """Attribute rows (N, A) of `n_seen` prompts of combinations seen in training and
    `n_per_held_out` of each held-out combination (the others drawn at random), and a mask (N,)
    of the held-out; `schema.captions(rows)` are the prompts."""
    generator = torch.Generator().manual_seed(seed)

    def draw(n: int) -> Tensor:
        return torch.stack(
            [torch.randint(len(c), (n,), generator=generator) for c in schema.choices.values()],
            dim=1,
        )

    seen = draw(4 * n_seen + 64)
    seen = seen[~schema.is_held_out(seen, held_out)][:n_seen]
    rows, mask = [seen], [torch.zeros(len(seen), dtype=torch.bool)]
    for combo in held_out:
        rows_of_combo = draw(n_per_held_out)
        for key, value in combo.items():
            rows_of_combo[:, schema.attributes.index(key)] = value
        rows.append(rows_of_combo)
        mask.append(torch.ones(n_per_held_out, dtype=torch.bool))
    return torch.cat(rows), torch.cat(mask)


def alignment(
    predicted: Tensor, asked: Tensor, held_out: Tensor, names: Sequence[str] = JUDGED
) -> dict[str, float]:
    """Alignment accuracy per attribute (`names`, the columns of the predicted and asked rows
    (N, A)) and for all at once, over the seen prompts and (`heldout_*`) over the held-out ones."""
    correct = predicted == asked
    scores = {}
    for prefix, rows in (("", ~held_out), ("heldout_", held_out)):
        if not rows.any():
            continue
        for i, name in enumerate(names):
            scores[f"{prefix}{name}"] = correct[rows, i].float().mean().item()
        scores[f"{prefix}all"] = correct[rows].all(1).float().mean().item()
    return scores
