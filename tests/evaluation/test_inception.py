"""Inception features: the offline failure is fast and clear; the plumbing works with local weights."""

from __future__ import annotations

import time

import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from difftrain.evaluation import features as features_module
from difftrain.evaluation.features import (
    INCEPTION,
    build_extractor,
    extract_features,
    inception_weights,
)
from difftrain.evaluation.metrics import compute_metrics


def test_missing_weights_fail_fast_naming_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(features_module, "URL_INCEPTION_V3", "http://127.0.0.1:9/weights.pth")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"evaluator.inception_weights=.*evaluator=classifier"):
        inception_weights(None, timeout=5)
    assert time.perf_counter() - start < 10
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inception_weights(str(tmp_path / "missing.pth"))


@pytest.fixture
def random_inception_weights(tmp_path, monkeypatch):
    """A state dict of the right shape (random values): real weights cannot be downloaded here."""
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        m.setattr(torch, "load", lambda *a, **k: {})
        model = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path="x"
        )
    path = tmp_path / "inception.pth"
    torch.save(model.state_dict(), path)
    return path


def test_inception_features_from_a_local_file(random_inception_weights):
    extractor = build_extractor(INCEPTION, inception_weights(str(random_inception_weights)))
    gray = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    features = extract_features(extractor, gray, batch_size=4)  # grayscale is repeated to RGB
    assert features.features.shape == (6, 2048) and features.logits.shape == (6, 1008)
    results = compute_metrics(features, features, ["fid", "isc"])
    assert (
        results["fid"] == pytest.approx(0, abs=1e-3) and "isc" in results
    )  # random weights: IS is meaningless
