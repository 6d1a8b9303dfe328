"""Evaluation: FID, KID, Inception Score, precision/recall and class coverage on torch-fidelity.

Features come from torch-fidelity's Inception-v3 (the standard) or from a small classifier that
difftrain trains on the dataset itself (offline, fast on a CPU, and it measures class coverage).
"""

from difftrain.evaluation.classifier import CLASSIFIER, Classifier, load_or_train_classifier
from difftrain.evaluation.evaluator import Evaluator
from difftrain.evaluation.features import FeatureSet, build_extractor, extract_features
from difftrain.evaluation.metrics import class_coverage, compute_metrics, frechet_distance
from difftrain.evaluation.toy import ToyEvaluator

__all__ = [
    "CLASSIFIER",
    "Classifier",
    "Evaluator",
    "FeatureSet",
    "ToyEvaluator",
    "build_extractor",
    "class_coverage",
    "compute_metrics",
    "extract_features",
    "frechet_distance",
    "load_or_train_classifier",
]
