"""`ToyEvaluator`: mode coverage and sample quality on toy2d data, where the modes are known."""

from __future__ import annotations

import torch
from torch import Tensor

from difftrain.data.toy2d import toy_centers, toy_points
from difftrain.evaluation.features import FeatureSet


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """The sliced 1-Wasserstein distance between point sets a (n, D) and b (m, D): the mean over
    `projections` random directions of the 1-D Wasserstein-1 distance (sorted projections, b's
    read at a's quantiles). W1 rather than W2: a mixture's modes drawn in slightly other shares
    move a few quantiles across the gaps between modes, which squared distances magnify."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa = (a.double() @ directions).sort(0).values  # (n, P)
    pb = (b.double() @ directions).sort(0).values  # (m, P)
    at = torch.linspace(0, len(pb) - 1, len(pa), dtype=torch.float64).round().long()
    return (pa - pb[at]).abs().mean().item()


class ToyEvaluator:
    """modes_captured: modes that receive at least `min_share` of a fair share (n / num_modes) of
    the high-quality samples; hq_share: samples within 3 std of the data (a mode center, or the
    swiss roll's curve); swd: the sliced Wasserstein distance to `reference` fresh data points.
    The same interface as `Evaluator`, so the evaluate callback runs it."""

    def __init__(
        self,
        kind: str,
        num_modes: int,
        scale: float,
        std: float,
        min_share: float = 0.2,
        reference: int = 10_000,
    ):
        self.kind, self.std, self.min_share = kind, std, min_share
        self.reference = toy_points(kind, reference, num_modes, scale, std, seed=10_007)[0]
        self.centers = toy_centers(kind, num_modes, scale)
        self.curve = toy_centers(kind, 2000, scale) if kind == "swiss_roll" else self.centers
        data = f"{kind}-{num_modes}-{scale:g}-{std:g}"
        self.info: dict[str, object] = {
            "feature": "toy2d",
            "extractor": f"toy2d-{min_share:g}",
            "reference": data,
        }

    def setup(self, device: torch.device | str = "cpu") -> None:
        """Nothing to prepare: the modes are known."""

    def features(self, samples: Tensor, datamodule: object = None) -> FeatureSet:
        points = samples.detach().float().cpu()
        return FeatureSet(points, points.new_zeros(len(points), 0))

    def score(self, features: FeatureSet, seed: int = 0) -> dict[str, float]:
        points = features.features
        good = torch.cdist(points, self.curve).min(1).values < 3 * self.std
        nearest = torch.cdist(points[good], self.centers).argmin(1)
        counts = torch.bincount(nearest, minlength=len(self.centers)).float()
        fair = len(points) / len(self.centers)
        return {
            "modes_captured": float((counts >= self.min_share * fair).sum()),
            "num_modes": float(len(self.centers)),
            "hq_share": good.float().mean().item(),
            "swd": sliced_wasserstein(points, self.reference),
        }

    def __call__(self, samples: Tensor, seed: int = 0) -> dict[str, float]:
        return self.score(self.features(samples), seed)
