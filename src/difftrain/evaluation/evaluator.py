"""`Evaluator`: scores uint8 images against a dataset split, with cached reference features."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from difftrain.evaluation.classifier import (
    CLASSIFIER,
    CLASSIFIER_VERSION,
    load_or_train_classifier,
)
from difftrain.evaluation.features import (
    INCEPTION,
    FeatureSet,
    build_extractor,
    extract_features,
    file_digest,
    inception_weights,
)
from difftrain.evaluation.metrics import METRICS, class_coverage, compute_metrics
from difftrain.files import filling, load_cached

log = logging.getLogger(__name__)
FEATURES = {"inception": INCEPTION, "classifier": CLASSIFIER}


def dataset_uint8(dataset: Dataset, limit: int | None = None) -> Tensor:
    """The images of a dataset of (image in [0, 1], label) as uint8 (N, C, H, W)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    held = getattr(dataset, "images", None)  # in-memory datasets keep uint8 images already
    if isinstance(held, Tensor) and held.dtype == torch.uint8:
        return held[:n]
    return torch.stack([(dataset[i][0] * 255).round().to(torch.uint8) for i in range(n)])


def fingerprint(images: Tensor) -> str:
    """A short content hash of a uint8 image set: count plus 16 evenly spaced images."""
    picks = images[torch.linspace(0, len(images) - 1, 16).long()]
    digest = hashlib.sha1(f"{tuple(images.shape)}".encode() + picks.numpy().tobytes())
    return digest.hexdigest()[:10]


class Evaluator:
    """FID, KID, precision/recall (and IS with Inception) against `split` of a dataset.

    feature="classifier" trains (once, then cached) a small CNN on the dataset's train split and
    also reports class coverage; feature="inception" is torch-fidelity's standard Inception-v3.
    A classifier whose held-out accuracy is below `min_accuracy` is refused: its features would
    not tell the classes apart, and FID on them drops towards 0 for any samples. Reference
    features are computed once per (dataset content, split, resolution, extractor) and cached
    under `cache_dir`; `setup` says whether it reused them. `info` names the extractor and the
    reference by fingerprint: only metrics with the same two compare.
    """

    def __init__(
        self,
        datasets: Callable[[str], Dataset],
        num_classes: int,
        feature: str = "classifier",
        metrics: Sequence[str] = ("fid", "kid", "prc"),
        split: str = "val",
        max_reference: int | None = None,
        cache_dir: str = ".cache",
        inception_weights: str | None = None,
        classifier_images: int = 100_000,
        classifier_max_epochs: int = 100,
        min_accuracy: float = 0.95,
        coverage_threshold: float = 0.5,
        kid_subset_size: int = 1000,
        batch_size: int = 256,
    ):
        if feature not in FEATURES:
            raise ValueError(f"evaluator.feature must be one of {list(FEATURES)}, got {feature!r}")
        if unknown := set(metrics) - set(METRICS):
            raise ValueError(f"unknown metrics {sorted(unknown)}: choose from {list(METRICS)}")
        if "isc" in metrics and feature != "inception":
            raise ValueError(
                "the Inception Score needs evaluator.feature=inception; drop isc from metrics"
            )
        if not 0 <= min_accuracy <= 1:
            raise ValueError(f"evaluator.min_accuracy must be in [0, 1], got {min_accuracy}")
        self.datasets, self.num_classes, self.feature = datasets, num_classes, feature
        self.metrics, self.split, self.max_reference = list(metrics), split, max_reference
        self.cache_dir, self.inception_weights = Path(cache_dir), inception_weights
        self.classifier_images, self.min_accuracy = classifier_images, min_accuracy
        self.classifier_max_epochs = classifier_max_epochs
        self.coverage_threshold = coverage_threshold
        self.kid_subset_size, self.batch_size = kid_subset_size, batch_size
        self.extractor = None
        self.reference: FeatureSet | None = None
        self.image_shape: tuple[int, ...] | None = None
        self.info: dict[str, object] = {}

    def setup(self, device: torch.device | str = "cpu") -> None:
        """Build the feature extractor and load (or compute and cache) the reference features."""
        if self.extractor is not None:
            self.extractor.to(device)
            return
        weights = (
            self._classifier()
            if self.feature == "classifier"
            else inception_weights(self.inception_weights)
        )
        self.extractor = build_extractor(FEATURES[self.feature], weights, device)
        self.info["extractor"] = f"{self.feature}-{file_digest(weights)}"

        reference_images = dataset_uint8(self.datasets(self.split), self.max_reference)
        self.image_shape = tuple(reference_images.shape[1:])
        reference_key = f"{fingerprint(reference_images)}-{self.image_shape[-1]}px-{self.split}"
        path = self.cache_dir / "reference" / f"{reference_key}-{self.info['extractor']}.pt"
        with filling(path):  # another run computing the same features: wait for it, then read
            self.reference = self._reference(path, reference_images)
        self.info.update(
            feature=self.feature,
            reference=reference_key,
            reference_split=self.split,
            reference_images=len(self.reference),
        )

    def _reference(self, path: Path, images: Tensor) -> FeatureSet:
        """The reference features: cached at `path`, or computed now and cached there."""
        if (cached := load_cached(path)) is not None:
            log.info(
                "reusing cached reference features %s (%d images)", path, len(cached["features"])
            )
            self.info["reference_cached"] = True
            return FeatureSet(**cached)
        log.info("computing the reference features of %d images (first use; cached in %s)",
                 len(images), path.parent)  # fmt: skip
        start = time.perf_counter()
        reference = extract_features(self.extractor, images, self.batch_size, "reference features")
        reference.save(path)
        log.info("computed reference features for %d images in %.1f s -> %s",
                 len(images), time.perf_counter() - start, path)  # fmt: skip
        self.info["reference_cached"] = False
        return reference

    def _classifier(self) -> Path:
        """The weights of the dataset's classifier (cached, or trained now); refuses a weak one."""
        train = dataset_uint8(self.datasets("train"))
        epochs = max(1, math.ceil(self.classifier_images / len(train)))
        if epochs > self.classifier_max_epochs:  # a small dataset: more epochs teach it no more
            log.info(
                "evaluator.classifier_images=%d would be %d epochs of these %d images: capped at "
                "evaluator.classifier_max_epochs=%d", self.classifier_images, epochs, len(train),
                self.classifier_max_epochs,
            )  # fmt: skip
            epochs = self.classifier_max_epochs
        key = (
            f"{fingerprint(train)}-{train.shape[-1]}px-v{CLASSIFIER_VERSION}"
            f"-{self.classifier_images}img-{epochs}ep"
        )
        weights, accuracy = load_or_train_classifier(
            key, self.cache_dir, self.datasets, train.shape[1], self.num_classes, epochs
        )
        self.info["classifier_test_accuracy"] = accuracy
        if accuracy < self.min_accuracy:
            raise ValueError(
                f"the evaluation classifier ({weights}) reaches only {accuracy:.3f} accuracy on the "
                f"held-out split, below evaluator.min_accuracy={self.min_accuracy}: features that "
                "cannot tell the classes apart make FID small for any samples and class coverage "
                "meaningless. Train it on more images (evaluator.classifier_images), check the "
                "labels (data.num_classes), or use evaluator=inception"
            )
        return weights

    def check_images(self, images: Tensor) -> None:
        """Refuse images whose shape differs from the reference's: FID would mostly measure that."""
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            c, h, w = self.image_shape
            raise ValueError(
                f"samples are {tuple(images.shape[1:])} (C, H, W) but the reference images are "
                f"{self.image_shape}: their features differ whatever the content, so FID would "
                f"measure the size. Fix: give "
                f"{w}x{h} images with {c} channels, or set data.image_size to the samples' size"
            )

    def features(self, samples: Tensor, datamodule: object) -> FeatureSet:
        """Features of model-range samples, made images by the datamodule's exact inverse."""
        uint8 = datamodule.to_uint8(samples)  # (N, C, H, W)
        self.check_images(uint8)
        return extract_features(self.extractor, uint8, self.batch_size)

    def __call__(self, images: Tensor, seed: int = 0) -> dict[str, object]:
        """Metrics of uint8 images (N, C, H, W), plus class coverage with the classifier."""
        if self.extractor is None:
            self.setup()
        self.check_images(images)
        features = extract_features(self.extractor, images, self.batch_size)
        return self.score(features, seed)

    def score(self, features: FeatureSet, seed: int = 0) -> dict[str, object]:
        """Metrics of already extracted features (e.g. gathered from several DDP ranks)."""
        results: dict[str, object] = compute_metrics(
            features, self.reference, self.metrics, self.kid_subset_size, seed
        )
        if self.feature == "classifier":
            results.update(class_coverage(features.logits, self.coverage_threshold))
        return results
