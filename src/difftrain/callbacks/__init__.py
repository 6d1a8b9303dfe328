"""Lightning callbacks that difftrain adds to a run."""

from difftrain.callbacks.checkpoint import Checkpoint
from difftrain.callbacks.evaluate import Evaluate
from difftrain.callbacks.sample_grid import SampleGrid
from difftrain.callbacks.throughput import Throughput

__all__ = ["Checkpoint", "Evaluate", "SampleGrid", "Throughput"]
