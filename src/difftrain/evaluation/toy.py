"""`ToyEvaluator`: mode coverage and sample quality on toy2d data, where the modes are known."""

from __future__ import annotations

import torch
from torch import Tensor

from difftrain.data.toy2d import toy_centers
from difftrain.evaluation.features import FeatureSet


class ToyEvaluator:
    """modes_captured: modes that receive at least `min_share` of a fair share (n / num_modes) of
    the high-quality samples; hq_share: samples within 3 std of the data (a mode center, or the
    swiss roll's curve). The same interface as `Evaluator`, so the evaluate callback runs it."""

    def __init__(self, kind: str, num_modes: int, scale: float, std: float, min_share: float = 0.2):
        self.kind, self.std, self.min_share = kind, std, min_share
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
        }

    def __call__(self, samples: Tensor, seed: int = 0) -> dict[str, float]:
        return self.score(self.features(samples), seed)
