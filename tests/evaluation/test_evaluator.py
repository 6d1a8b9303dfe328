"""The evaluator on MNIST-shaped data: each metric reacts to the defect it should catch."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from difftrain.data import datasets as ds
from difftrain.evaluation.evaluator import Evaluator, dataset_uint8
from tests.conftest import SHARED_DATA


def blur(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.ones(1, 1, 5, 5) / 25
    return F.conv2d(images.float(), kernel, padding=2).round().to(torch.uint8)


def check_metrics_react(
    evaluator: Evaluator, good: torch.Tensor, labels: torch.Tensor, num_classes: int
):
    """good: real held-out images; they score well, and each corruption scores worse."""
    noise = torch.randint(
        0, 256, good.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    half = good[labels < num_classes // 2]
    scores = {name: evaluator(images) for name, images in
              {"good": good, "blurred": blur(good), "noise": noise, "half": half}.items()}  # fmt: skip
    fid = {name: s["fid"] for name, s in scores.items()}
    assert (
        fid["blurred"] > 5 * fid["good"]
        and fid["noise"] > 20 * fid["good"]
        and fid["half"] > 3 * fid["good"]
    ), fid
    assert scores["half"]["recall"] < scores["good"]["recall"] - 0.2
    assert scores["half"]["precision"] > 0.8 * scores["good"]["precision"]
    assert scores["half"]["classes_under_threshold"] == list(range(num_classes // 2, num_classes))
    assert scores["good"]["classes_under_threshold"] == []
    return scores


def test_metrics_react_on_digits_at_mnist_shape(tmp_path):
    datasets = partial(ds.digits, image_size=28)
    evaluator = Evaluator(
        datasets, num_classes=10, cache_dir=str(tmp_path), classifier_images=10_000
    )
    evaluator.setup()
    assert evaluator.info["classifier_test_accuracy"] > 0.9
    val = datasets("val")
    check_metrics_react(evaluator, dataset_uint8(val), val.labels, 10)


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not at ../shared/data"
)
def test_metrics_react_on_real_mnist(tmp_path):
    datasets = partial(ds.mnist, root=str(SHARED_DATA), image_size=32)
    evaluator = Evaluator(
        datasets, num_classes=10, cache_dir=str(tmp_path), classifier_images=60_000
    )
    evaluator.setup()
    assert evaluator.info["classifier_test_accuracy"] > 0.98
    test = datasets("val")
    check_metrics_react(evaluator, dataset_uint8(test, 5000), test.labels[:5000], 10)


def test_reference_features_are_cached(tmp_path, monkeypatch):
    import difftrain.evaluation.evaluator as module

    datasets = partial(ds.digits, image_size=16)
    first = Evaluator(datasets, num_classes=10, cache_dir=str(tmp_path), classifier_images=10_000)
    first.setup()
    assert first.info["reference_cached"] is False
    calls = []
    original = module.extract_features
    monkeypatch.setattr(
        module, "extract_features", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    second = Evaluator(datasets, num_classes=10, cache_dir=str(tmp_path), classifier_images=10_000)
    second.setup()
    assert (
        second.info["reference_cached"] is True and calls == []
    )  # no feature pass over the reference
    torch.testing.assert_close(second.reference.features, first.reference.features)
    # A cache file cut short (a full disk, a kill) is computed again and rewritten whole, for
    # the classifier as for the features: the run goes on, and the next one reuses it.
    files = [*tmp_path.glob("classifiers/*.pt"), *tmp_path.glob("reference/*.pt")]
    assert len(files) == 2
    for file in files:
        file.write_bytes(file.read_bytes()[:100])
    third = Evaluator(datasets, num_classes=10, cache_dir=str(tmp_path), classifier_images=10_000)
    third.setup()
    assert third.info["reference_cached"] is False
    torch.testing.assert_close(third.reference.features, first.reference.features)
    assert all(torch.load(file, weights_only=True) for file in files)
    assert not list(tmp_path.rglob("*.tmp"))


def test_bad_settings_fail_clearly():
    datasets = partial(ds.digits, image_size=16)
    with pytest.raises(ValueError, match="Inception Score needs evaluator.feature=inception"):
        Evaluator(datasets, num_classes=10, metrics=["fid", "isc"])
    with pytest.raises(ValueError, match="feature must be one of"):
        Evaluator(datasets, num_classes=10, feature="clip")
    with pytest.raises(ValueError, match="labelled dataset"):
        Evaluator(datasets, num_classes=0).setup()


def test_a_small_datasets_classifier_trains_for_capped_epochs_and_says_so(tmp_path, caplog):
    import json
    import logging

    caplog.set_level(logging.INFO)
    datasets = partial(ds.digits, image_size=16)  # 1617 training images: 62 epochs of 100k
    evaluator = Evaluator(datasets, num_classes=10, cache_dir=str(tmp_path), min_accuracy=0,
                          classifier_images=100_000, classifier_max_epochs=2)  # fmt: skip
    evaluator.setup()
    (record,) = (tmp_path / "classifiers").glob("*.json")
    assert json.loads(record.read_text())["epochs"] == 2
    assert "would be 62 epochs of these 1617 images: capped at" in caplog.text
    assert "training the evaluation classifier on 1617 images for 2 epochs" in caplog.text
    assert "computing the reference features of" in caplog.text
