"""Cluster conditioning: k-means clusters as pseudo-labels, drawn by their shares when sampling."""

from __future__ import annotations

import pytest
import torch

from difftrain.cli.train import train
from difftrain.diffusion.generate import class_labels
from difftrain.runs.pretrained import load_trained
from difftrain.training.clusters import Clusters
from tests.conftest import FAST

CLUSTERS = "difftrain.training.clusters.Clusters"


def blobs(sizes: list[int], dim: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (N, 1, dim) around len(sizes) far-apart centres, and which centre each is from."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(len(sizes), dim, generator=g)
    which = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    points = centres[which] + 0.5 * torch.randn(len(which), dim, generator=g)
    return points[:, None], which


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b split the points alike, whatever the names of the parts."""
    return all(len(a[b == j].unique()) == 1 for j in b.unique()) and len(a.unique()) == len(
        b.unique()
    )


def test_clusters_find_the_blobs_and_their_shares():
    points, which = blobs([300, 150, 50])
    clusters = Clusters(k=3, dims=5, examples=500)
    labels = clusters.fit(points)
    assert same_partition(labels, which)
    assert sorted(clusters.prior.tolist()) == pytest.approx([0.1, 0.3, 0.6])
    new, new_which = blobs([20, 20, 20], seed=0)  # the same centres, other points
    assert same_partition(clusters(new + 0.1 * torch.randn_like(new)), new_which)


def test_a_fit_is_reproducible_and_a_checkpoint_restores_it():
    points, _ = blobs([200, 200, 100, 100])
    first, second = Clusters(k=4, dims=3), Clusters(k=4, dims=3)
    first.fit(points), second.fit(points)
    assert torch.equal(first.centroids, second.centroids)
    restored = Clusters(k=4, dims=3)
    assert not restored.fitted
    restored.load_state_dict(first.state_dict())
    assert restored.fitted and torch.equal(restored(points), first(points))


def test_unfitted_clusters_and_bad_settings_say_what_is_wrong():
    with pytest.raises(RuntimeError, match="fit must run"):
        Clusters(k=3)(torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="k must be >= 2"):
        Clusters(k=1)
    with pytest.raises(ValueError, match="need >= 8 examples"):
        Clusters(k=8).fit(torch.zeros(5, 1, 4))


def test_labels_follow_the_prior_in_any_share_of_the_samples():
    prior = torch.tensor([0.5, 0.0, 0.3, 0.2])
    labels = class_labels(1000, 4, prior=prior)
    shares = torch.bincount(labels, minlength=4) / 1000
    assert shares.tolist() == pytest.approx(prior.tolist(), abs=0.005)
    assert (labels != 1).all()  # an empty cluster is never drawn
    assert torch.equal(class_labels(990, 4, start=10, prior=prior), labels[10:])  # processes
    assert class_labels(3, 4, requested=[1], prior=prior).tolist() == [1, 1, 1]  # asked for


def test_training_conditions_on_clusters_and_the_checkpoint_samples_by_their_shares(make_cfg):
    cfg = make_cfg(
        *FAST,
        "logger=none",
        "net.num_classes=4",
        f"model.clusters={{_target_: {CLUSTERS}, k: 4, examples: 200}}",
    )
    train(cfg)  # digits' own labels (0-9) would not fit a 4-class net: it trains on clusters
    model = load_trained(f"{cfg.paths.output_dir}/checkpoints/last.ckpt")
    prior = model.diffusion.class_prior
    assert prior is not None and len(prior) == 4 and prior.sum().item() == pytest.approx(1.0)
    images, _ = model.sample(8)
    assert images.shape == (8, 16, 16, 1)


def test_cluster_count_and_net_classes_must_agree(make_cfg):
    cfg = make_cfg(
        *FAST,
        "logger=none",
        "net.num_classes=10",
        f"model.clusters={{_target_: {CLUSTERS}, k: 4}}",
    )
    with pytest.raises(Exception, match="set net.num_classes=4"):
        train(cfg)


def test_images_at_another_resolution_are_resized_to_the_fitted_one():
    """A resolution curriculum trains on smaller images: each still gets its own cluster."""
    left = torch.zeros(1, 8, 8)
    left[:, :, :4] = 1
    images = torch.stack([left, left.flip(-1)] * 50) + 0.05 * torch.randn(100, 1, 8, 8)
    clusters = Clusters(k=2, dims=4)
    labels = clusters.fit(images)
    small = torch.nn.functional.interpolate(images, size=4, mode="area")
    assert torch.equal(clusters(small), labels) and len(labels.unique()) == 2
