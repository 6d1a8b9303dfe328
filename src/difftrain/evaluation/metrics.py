"""Metrics on feature sets, computed by torch-fidelity's own functions, plus class coverage."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from difftrain.evaluation.features import FeatureSet

Metric = Callable[..., dict[str, float]]


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """FID between feature sets (N, D) and (M, D) (Heusel et al. 2017), by torch-fidelity."""
    stats_a, stats_b = (
        fid_features_to_statistics(a.double()),
        fid_features_to_statistics(b.double()),
    )
    return fid_statistics_to_metric(stats_a, stats_b, verbose=False)["frechet_inception_distance"]


def fid(generated: FeatureSet, reference: FeatureSet, **_: object) -> dict[str, float]:
    return {"fid": frechet_distance(generated.features, reference.features)}


def kid(
    generated: FeatureSet, reference: FeatureSet, kid_subset_size: int = 1000, seed: int = 0,
    **_: object,
) -> dict[str, float]:  # fmt: skip
    """Kernel inception distance (Binkowski et al. 2018), raw (not x1000), and its std."""
    size = min(kid_subset_size, len(generated), len(reference))
    result = kid_features_to_metric(
        generated.features, reference.features, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    return {
        "kid": result["kernel_inception_distance_mean"],
        "kid_std": result["kernel_inception_distance_std"],
    }


def precision_recall(
    generated: FeatureSet, reference: FeatureSet, seed: int = 0, **_: object
) -> dict[str, float]:
    """Precision and recall (k=3, Kynkaanniemi et al. 2019) against as many reference images,
    drawn with `seed`: the k-NN radii depend on the set size."""
    real = _subsample(reference.features, len(generated), seed)
    result = prc_features_to_metric(generated.features, real, save_cpu_ram=True, verbose=False)
    return {"precision": result["precision"], "recall": result["recall"]}


def inception_score(
    generated: FeatureSet, reference: FeatureSet, seed: int = 0, **_: object
) -> dict[str, float]:
    """The Inception Score (Salimans et al. 2016) of the generated logits."""
    result = isc_features_to_metric(generated.logits, rng_seed=seed)
    return {"isc": result["inception_score_mean"], "isc_std": result["inception_score_std"]}


# The metrics `evaluator.metrics` may name: each takes (generated, reference, **options) and
# returns named values. Adding one is a function and an entry here.
METRICS: dict[str, Metric] = {
    "fid": fid,
    "kid": kid,
    "prc": precision_recall,
    "isc": inception_score,
}


def compute_metrics(
    generated: FeatureSet,
    reference: FeatureSet,
    metrics: Sequence[str] = ("fid", "kid", "prc"),
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """The named metrics of `generated` against `reference`."""
    if unknown := set(metrics) - set(METRICS):
        raise ValueError(f"unknown metrics {sorted(unknown)}: choose from {list(METRICS)}")
    out: dict[str, float] = {}
    for name in metrics:
        out.update(METRICS[name](generated, reference, kid_subset_size=kid_subset_size, seed=seed))
    return out


def _subsample(features: Tensor, n: int, seed: int) -> Tensor:
    if len(features) <= n:
        return features
    return features[
        torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:n]
    ]


def class_coverage(logits: Tensor, threshold: float = 0.5) -> dict[str, object]:
    """How evenly the samples cover the classes: what mode collapse looks like.

    Returns the share of samples predicted as each class, its entropy normalized to [0, 1]
    (1 = uniform), and the classes whose share is under threshold / num_classes.
    """
    num_classes = logits.shape[1]
    share = torch.bincount(logits.argmax(1), minlength=num_classes).double() / len(logits)
    entropy = -(share[share > 0] * share[share > 0].log()).sum().item() / math.log(num_classes)
    entropy += 0.0  # one class only: -0.0 becomes 0.0
    low = (share < threshold / num_classes).nonzero().flatten().tolist()
    return {"class_share": share.tolist(), "class_entropy": entropy, "classes_under_threshold": low}
