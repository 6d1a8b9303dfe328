"""Metric values against direct computations and torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from difftrain.evaluation.features import FeatureSet
from difftrain.evaluation.metrics import class_coverage, compute_metrics, frechet_distance


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture
def features():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(600, 32, generator=gen) @ torch.randn(32, 32, generator=gen) * 0.3
    b = torch.randn(500, 32, generator=gen) * 1.2 + 2.0
    return a, b


def test_fid_equals_scipy_and_torchmetrics(features):
    from torchmetrics.image.fid import _compute_fid

    a, b = features
    ours = frechet_distance(a, b)
    assert ours == pytest.approx(scipy_fid(a.double().numpy(), b.double().numpy()), rel=1e-4)
    mu1, mu2 = a.double().mean(0), b.double().mean(0)
    theirs = _compute_fid(mu1, torch.cov(a.double().T), mu2, torch.cov(b.double().T)).item()
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def test_kid_and_precision_recall_see_the_difference(features):
    a, b = features
    same = compute_metrics(
        FeatureSet(a[:300], a[:300]), FeatureSet(a[300:], a[300:]), kid_subset_size=200
    )
    diff = compute_metrics(FeatureSet(b, b), FeatureSet(a, a), kid_subset_size=200)
    assert abs(same["kid"]) < 0.1 * diff["kid"]
    assert same["precision"] > 0.6 and same["recall"] > 0.6
    assert diff["precision"] < 0.5 * same["precision"]
    assert diff["fid"] > 10 * same["fid"]


def test_unknown_metric_is_an_error(features):
    a, _ = features
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(FeatureSet(a, a), FeatureSet(a, a), metrics=["fid", "lpips"])


def test_class_coverage_flags_missing_classes():
    logits = torch.full((1000, 10), -10.0)
    logits[torch.arange(1000), torch.arange(1000) % 5] = 10.0  # only classes 0-4 appear
    coverage = class_coverage(logits, threshold=0.5)
    assert coverage["classes_under_threshold"] == [5, 6, 7, 8, 9]
    assert coverage["class_entropy"] == pytest.approx(np.log(5) / np.log(10))
    assert coverage["class_share"][:5] == [0.2] * 5
    uniform = class_coverage(torch.randn(10, 10).repeat(100, 1) * 0 + torch.eye(10).repeat(100, 1))
    assert (
        uniform["class_entropy"] == pytest.approx(1.0) and uniform["classes_under_threshold"] == []
    )
