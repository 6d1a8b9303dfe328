"""Lightning callbacks that difftrain adds to a run."""

from difftrain.callbacks.checkpoint import Checkpoint
from difftrain.callbacks.curriculum import ResolutionCurriculum
from difftrain.callbacks.evaluate import Evaluate
from difftrain.callbacks.guard import Guard, TrainingDiverged
from difftrain.callbacks.health import TrainingHealth
from difftrain.callbacks.posthoc_ema import PostHocEMA
from difftrain.callbacks.resume import ExactResume
from difftrain.callbacks.sample_grid import SampleGrid
from difftrain.callbacks.throughput import Throughput

__all__ = [
    "Checkpoint",
    "Evaluate",
    "ExactResume",
    "Guard",
    "PostHocEMA",
    "ResolutionCurriculum",
    "SampleGrid",
    "Throughput",
    "TrainingDiverged",
    "TrainingHealth",
]
