"""Evaluation: FID, KID, Inception Score, precision/recall and class coverage on torch-fidelity.

Features come from torch-fidelity's Inception-v3 (the standard) or from a small classifier that
difftrain trains on the dataset itself (offline, fast on a CPU, and it measures class coverage).
"""
