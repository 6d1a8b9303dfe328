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

from difftrain.evaluation.classifier import CLASSIFIER, load_or_train_classifier
from difftrain.evaluation.features import (
    INCEPTION,
    FeatureSet,
    build_extractor,
    extract_features,
    file_digest,
    inception_weights,
)
from difftrain.evaluation.metrics import METRICS, class_coverage, compute_metrics

log = logging.getLogger(__name__)
FEATURES = {"inception": INCEPTION, "classifier": CLASSIFIER}


def dataset_uint8(dataset: Dataset, limit: int | None = None) -> Tensor:
    """The images of a dataset of (image in [0, 1], label) as uint8 (N, C, H, W)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([(dataset[i][0] * 255).round().to(torch.uint8) for i in range(n)])


def fingerprint(images: Tensor) -> str:
    """A short content hash of a uint8 image set: count plus 16 evenly spaced images."""
    picks = images[torch.linspace(0, len(images) - 1, 16).long()]
    return hashlib.sha1(f"{tuple(images.shape)}".encode() + picks.numpy().tobytes()).hexdigest()[
        :10
    ]


class Evaluator:
    """FID, KID, precision/recall (and IS with Inception) against `split` of a dataset.

    feature="classifier" trains (once, then cached) a small CNN on the dataset's train split and
    also reports class coverage; feature="inception" is torch-fidelity's standard Inception-v3.
    Reference features are computed once per (dataset content, split, resolution, extractor)
    and cached under `cache_dir`; `setup` says whether it reused them.
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
        self.datasets, self.num_classes, self.feature = datasets, num_classes, feature
        self.metrics, self.split, self.max_reference = list(metrics), split, max_reference
        self.cache_dir, self.inception_weights = Path(cache_dir), inception_weights
        self.classifier_images, self.coverage_threshold = classifier_images, coverage_threshold
        self.kid_subset_size, self.batch_size = kid_subset_size, batch_size
        self.extractor = None
        self.reference: FeatureSet | None = None
        self.info: dict[str, object] = {}

    def setup(self, device: torch.device | str = "cpu") -> None:
        """Build the feature extractor and load (or compute and cache) the reference features."""
        if self.extractor is not None:
            self.extractor.to(device)
            return
        reference_images = dataset_uint8(self.datasets(self.split), self.max_reference)
        _, channels, size, _ = reference_images.shape
        data_key = f"{fingerprint(reference_images)}-{size}px"
        if self.feature == "classifier":
            train_size = len(self.datasets("train"))
            epochs = max(1, math.ceil(self.classifier_images / train_size))
            weights, accuracy = load_or_train_classifier(
                data_key, self.cache_dir, self.datasets, channels, self.num_classes, epochs
            )
            self.info["classifier_test_accuracy"] = accuracy
        else:
            weights = inception_weights(self.inception_weights)
        self.extractor = build_extractor(FEATURES[self.feature], weights, device)

        path = (
            self.cache_dir
            / "reference"
            / f"{data_key}-{self.split}-{self.feature}-{file_digest(weights)}.pt"
        )
        if path.is_file():
            self.reference = FeatureSet.load(path)
            log.info("reusing cached reference features %s (%d images)", path, len(self.reference))
            self.info["reference_cached"] = True
        else:
            start = time.perf_counter()
            self.reference = extract_features(self.extractor, reference_images, self.batch_size)
            self.reference.save(path)
            seconds = time.perf_counter() - start
            log.info(
                "computed reference features for %d images in %.1f s -> %s",
                len(reference_images),
                seconds,
                path,
            )
            self.info["reference_cached"] = False
        self.info.update(
            feature=self.feature, reference_split=self.split, reference_images=len(self.reference)
        )

    def features(self, samples: Tensor, datamodule: object) -> FeatureSet:
        """Features of model-range samples, made images by the datamodule's exact inverse."""
        uint8 = datamodule.to_uint8(samples).permute(0, 3, 1, 2)
        return extract_features(self.extractor, uint8, self.batch_size)

    def __call__(self, images: Tensor, seed: int = 0) -> dict[str, object]:
        """Metrics of uint8 images (N, C, H, W), plus class coverage with the classifier."""
        if self.extractor is None:
            self.setup()
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
