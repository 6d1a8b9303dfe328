"""Metrics on feature sets, computed by torch-fidelity's own functions, plus class coverage."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from difftrain.evaluation.features import FeatureSet

METRICS = ("fid", "kid", "prc", "isc")


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """FID between feature sets (N, D) and (M, D) (Heusel et al. 2017), by torch-fidelity."""
    stats_a, stats_b = (
        fid_features_to_statistics(a.double()),
        fid_features_to_statistics(b.double()),
    )
    return fid_statistics_to_metric(stats_a, stats_b, verbose=False)["frechet_inception_distance"]


def compute_metrics(
    generated: FeatureSet,
    reference: FeatureSet,
    metrics: Sequence[str] = ("fid", "kid", "prc"),
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """FID, KID (raw, not x1000), precision/recall (k=3, Kynkaanniemi et al. 2019) and IS of `generated`.

    Precision and recall compare `generated` with as many reference images, drawn with `seed`.
    """
    if unknown := set(metrics) - set(METRICS):
        raise ValueError(f"unknown metrics {sorted(unknown)}: choose from {list(METRICS)}")
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(generated.features, reference.features)
    if "kid" in metrics:
        size = min(kid_subset_size, len(generated), len(reference))
        kid = kid_features_to_metric(
            generated.features,
            reference.features,
            kid_subset_size=size,
            rng_seed=seed,
            verbose=False,
        )
        out["kid"], out["kid_std"] = (
            kid["kernel_inception_distance_mean"],
            kid["kernel_inception_distance_std"],
        )
    if "prc" in metrics:  # on equally many reference images: k-NN radii depend on the set size
        real = _subsample(reference.features, len(generated), seed)
        prc = prc_features_to_metric(generated.features, real, save_cpu_ram=True, verbose=False)
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
    if "isc" in metrics:
        isc = isc_features_to_metric(generated.logits, rng_seed=seed)
        out["isc"], out["isc_std"] = isc["inception_score_mean"], isc["inception_score_std"]
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
    low = (share < threshold / num_classes).nonzero().flatten().tolist()
    return {"class_share": share.tolist(), "class_entropy": entropy, "classes_under_threshold": low}
