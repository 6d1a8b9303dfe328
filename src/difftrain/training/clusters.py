"""Cluster conditioning: an unconditional model made class-conditional on k-means clusters of its
own training data, found without labels.

A class-conditional net learns each class's distribution apart and draws much better samples
than an unconditional one of the same size and training time; what it needs, a label per image,
an unlabelled dataset lacks. Clusters of the images stand in for the labels (the idea behind
self-guided diffusion, Hu et al. 2023, and RCG, Li et al. 2024, which cluster or generate
self-supervised features): the net trains on (image, its cluster), and unconditional sampling
draws a cluster by its share of the data, then an image of it. So the model still models p(x),
as the sum over clusters c of p(c) p(x | c), and draws the clusters in the data's proportions.

Here the clusters are k-means in a PCA projection of the pixels (or latents) of the first
`examples` training examples, fitted once when training starts, from a fixed seed: every process
of a multi-process run, and a resumed run, fits the same clusters. The checkpoint carries them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Clusters(nn.Module):
    """k clusters of the training examples: `fit` once, then `forward(x)` gives each example's
    cluster (its pseudo-label) and `prior` each cluster's share of the fitted examples, which
    unconditional sampling draws clusters by (`diffusion.generate.class_labels`)."""

    def __init__(
        self, k: int, dims: int = 64, examples: int = 20000, iterations: int = 50, seed: int = 0
    ):
        super().__init__()
        if k < 2:
            raise ValueError(f"model.clusters.k must be >= 2, got {k}")
        if dims < 1 or examples < k or iterations < 1:
            raise ValueError(
                f"model.clusters needs dims >= 1, examples >= k and iterations >= 1, got dims={dims} "
                f"examples={examples} (k={k}) iterations={iterations}"
            )
        self.k, self.dims, self.examples = k, dims, examples
        self.iterations, self.seed = iterations, seed
        # Sized by `fit` (or by a checkpoint, see _load_from_state_dict).
        self.register_buffer("shape", torch.zeros(0, dtype=torch.long))  # of one example
        self.register_buffer("mean", torch.zeros(0))  # (D,)
        self.register_buffer("basis", torch.zeros(0, 0))  # (D, dims): the top principal axes
        self.register_buffer("centroids", torch.zeros(0, 0))  # (k, dims)
        self.register_buffer("prior", torch.zeros(0))  # (k,): each cluster's share

    @property
    def fitted(self) -> bool:
        return self.prior.numel() == self.k

    @torch.no_grad()
    def fit(self, x: Tensor) -> Tensor:
        """Fit the clusters to examples x (N, ...), on the CPU in float64 (the same result on any
        device and process); returns their clusters (N,)."""
        if len(x) < self.k:
            raise ValueError(
                f"model.clusters.k={self.k} clusters need >= {self.k} examples, "
                f"the data has {len(x)}"
            )
        device = self.mean.device
        flat = x.detach().cpu().flatten(1).double()
        mean = flat.mean(0)
        centred = flat - mean
        # The principal axes: eigenvectors of the covariance, largest eigenvalue first.
        _, vectors = torch.linalg.eigh(centred.T @ centred / len(flat))
        basis = vectors.flip(1)[:, : min(self.dims, flat.shape[1])]
        z = centred @ basis
        generator = torch.Generator().manual_seed(self.seed)
        centroids = _kmeans_plus_plus(z, self.k, generator)
        for _ in range(self.iterations):
            labels = torch.cdist(z, centroids).argmin(1)
            sums = torch.zeros_like(centroids).index_add_(0, labels, z)
            counts = torch.bincount(labels, minlength=self.k).double()
            empty = counts == 0
            if empty.any():  # re-seed an empty cluster at the points farthest from their centroid
                far = (z - centroids[labels]).square().sum(1).topk(int(empty.sum())).indices
                sums[empty], counts[empty] = z[far], 1.0
            moved = sums / counts[:, None]
            if torch.equal(moved, centroids):
                break
            centroids = moved
        labels = torch.cdist(z, centroids).argmin(1)
        prior = torch.bincount(labels, minlength=self.k).double() / len(labels)
        self.shape = torch.tensor(x.shape[1:], device=device)
        self.mean, self.basis = mean.float().to(device), basis.float().to(device)
        self.centroids, self.prior = centroids.float().to(device), prior.float().to(device)
        return labels

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """The cluster (B,) of each example of x (B, ...); x at another resolution than the fitted
        examples (a resolution curriculum) is resized to theirs first."""
        if not self.fitted:
            raise RuntimeError("Clusters.fit must run before the clusters are asked for")
        if x[0].numel() != self.mean.numel():  # known without asking the device (no sync)
            size = tuple(self.shape.tolist())[1:]
            x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True)
        with torch.autocast(x.device.type, enabled=False):
            z = (x.flatten(1).float() - self.mean) @ self.basis
            return torch.cdist(z, self.centroids).argmin(1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Buffers take the checkpoint's shapes (they are empty until fitted)."""
        for name, buffer in self._buffers.items():
            if prefix + name in state_dict:
                saved = state_dict[prefix + name]
                self._buffers[name] = torch.empty_like(saved, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _kmeans_plus_plus(z: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k initial centroids among the rows of z: each drawn with probability proportional to its
    squared distance to the nearest one drawn so far (Arthur & Vassilvitskii 2007)."""
    first = torch.randint(len(z), (1,), generator=generator)
    centroids = [z[first[0]]]
    nearest = (z - centroids[0]).square().sum(1)
    for _ in range(k - 1):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)  # all drawn: any
        pick = torch.multinomial(weights / weights.sum(), 1, generator=generator)[0]
        centroids.append(z[pick])
        nearest = torch.minimum(nearest, (z - z[pick]).square().sum(1))
    return torch.stack(centroids)
