"""Training-health statistics that need no framework: loss-spike detection and trend."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence

import torch


class SpikeDetector:
    """Flags a loss far above its recent median: loss > median + threshold * 1.4826 MAD.

    The median and MAD (median absolute deviation; 1.4826 MAD estimates a standard deviation)
    come from the last `window` finite losses; nothing is flagged before `warmup` of them.
    """

    def __init__(self, window: int = 200, threshold: float = 6.0, warmup: int = 50):
        self.threshold, self.warmup = threshold, warmup
        self.history: deque[float] = deque(maxlen=window)

    def __call__(self, loss: float) -> bool:
        spike = False
        if len(self.history) >= self.warmup:
            values = torch.tensor(list(self.history))
            median = values.median().item()
            mad = (values - median).abs().median().item()
            spike = loss > median + self.threshold * 1.4826 * max(mad, 1e-12)
        if math.isfinite(loss) and not spike:
            self.history.append(loss)
        return spike

    def reset(self) -> None:
        self.history.clear()


def log_slope(steps: list[int], losses: list[float]) -> float:
    """Least-squares slope of log(loss) per 1000 steps; negative while the loss still falls."""
    pairs = [
        (s, math.log(v)) for s, v in zip(steps, losses, strict=True) if math.isfinite(v) and v > 0
    ]
    if len(pairs) < 2:
        return float("nan")
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum().clamp(min=1e-12) * 1000)


def bucket_names(edges: Sequence[float], prefix: str) -> list[str]:
    """Metric names for the noise-level buckets cut by `edges`, e.g. val/loss_sigma_0.1-1."""
    if not edges:
        return []
    b = [f"{e:g}" for e in sorted(edges)]
    middle = [f"{prefix}_sigma_{lo}-{hi}" for lo, hi in itertools.pairwise(b)]
    return [f"{prefix}_sigma_lt{b[0]}", *middle, f"{prefix}_sigma_ge{b[-1]}"]
