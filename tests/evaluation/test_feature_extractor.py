"""The classifier feature extractor: it separates real from degraded images, and it is refused or
re-trained whenever what shaped it differs."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from difftrain.data import datasets as ds
from difftrain.evaluation.evaluator import Evaluator, dataset_uint8
from tests.conftest import CACHE, SHARED_DATA


def degraded(real: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Real images and four ways to get them wrong."""
    gen = torch.Generator().manual_seed(0)
    noised = real.float() + 25 * torch.randn(real.shape, generator=gen)
    return {
        "real": real,
        "blurred": F.avg_pool2d(real.float(), 3, 1, 1, count_include_pad=False)
        .round()
        .to(torch.uint8),  # a 3x3 box filter
        "noised": noised.clamp(0, 255).round().to(torch.uint8),  # Gaussian noise, std 25 of 255
        "half_the_classes": real[labels < 5],
        "noise": torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=gen),
    }


def check_separation(evaluator: Evaluator, real: torch.Tensor, labels: torch.Tensor) -> dict:
    fid = {name: evaluator(images)["fid"] for name, images in degraded(real, labels).items()}
    assert fid["blurred"] >= 10 * fid["real"], fid
    assert fid["noised"] >= 10 * fid["real"] and fid["half_the_classes"] >= 10 * fid["real"], fid
    assert fid["noise"] >= 100 * fid["real"], fid
    return fid


def test_digits_features_separate_real_from_degraded():
    """As the issue measured it: training images, scored against the train split."""
    datasets = partial(ds.digits, image_size=16)
    evaluator = Evaluator(
        datasets, 10, split="train", cache_dir=str(CACHE), classifier_images=10_000
    )
    train = datasets("train")
    check_separation(evaluator, dataset_uint8(train, 1000), train.labels[:1000])


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not at ../shared/data"
)
def test_mnist_features_separate_held_out_real_from_degraded():
    """2000 held-out test images against the train split, at the mnist config's 32 px."""
    datasets = partial(ds.mnist, root=str(SHARED_DATA), image_size=32)
    evaluator = Evaluator(datasets, 10, split="train", cache_dir=str(CACHE))
    test = datasets("val")
    check_separation(evaluator, dataset_uint8(test, 2000), test.labels[:2000])


def test_samples_of_another_size_than_the_reference_are_refused():
    evaluator = Evaluator(
        partial(ds.digits, image_size=16), 10, cache_dir=str(CACHE), classifier_images=10_000
    )
    evaluator.setup()
    twelve = dataset_uint8(ds.digits("val", image_size=12))
    with pytest.raises(
        ValueError, match=r"samples are \(1, 12, 12\).*reference images are \(1, 16, 16\)"
    ):
        evaluator(twelve)


def shuffled_digits(split: str) -> ds.TensorImages:
    """Digits whose labels are shuffled: no classifier can learn them."""
    data = ds.digits(split, image_size=16)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return ds.TensorImages(data.images, data.labels[perm])


def test_a_classifier_below_the_accuracy_floor_is_refused(tmp_path):
    evaluator = Evaluator(shuffled_digits, 10, cache_dir=str(tmp_path), classifier_images=3000)
    with pytest.raises(
        ValueError,
        match=r"accuracy on the held-out split, below evaluator.min_accuracy=0.95.*meaningless",
    ):
        evaluator.setup()
    lenient = Evaluator(
        shuffled_digits, 10, cache_dir=str(tmp_path), classifier_images=3000, min_accuracy=0.0
    )
    lenient.setup()  # the floor is configurable; the cached classifier is reused
    assert lenient.info["classifier_test_accuracy"] < 0.5


def test_the_cache_key_covers_what_shapes_the_classifier(tmp_path):
    datasets = partial(ds.digits, image_size=16)
    first = Evaluator(datasets, 10, cache_dir=str(tmp_path), classifier_images=10_000)
    second = Evaluator(datasets, 10, cache_dir=str(tmp_path), classifier_images=12_000)
    again = Evaluator(datasets, 10, cache_dir=str(tmp_path), classifier_images=10_000)
    for evaluator in (first, second, again):
        evaluator.setup()
    assert len(list((tmp_path / "classifiers").glob("*.pt"))) == 2
    assert first.info["extractor"] == again.info["extractor"] != second.info["extractor"]
    assert first.info["reference"] == second.info["reference"]  # the same images
    names = sorted(p.name for p in (tmp_path / "classifiers").glob("*.pt"))
    assert [n.split("px-")[1] for n in names] == ["v1-10000img-7ep.pt", "v1-12000img-8ep.pt"]
