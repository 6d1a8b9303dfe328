"""Process-wide settings (seed, threads, matmul precision), applied in one place from the config."""

from __future__ import annotations

import os

import lightning as L
import torch


def apply_runtime(seed: int | None, num_threads: int | None, float32_matmul_precision: str) -> None:
    """Set the seed and torch's global knobs for this run; clears a seed left by an earlier job."""
    if seed is None:
        os.environ.pop("PL_GLOBAL_SEED", None)
    else:
        L.seed_everything(seed, workers=True)
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.set_float32_matmul_precision(float32_matmul_precision)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else CPU; anything else is passed to torch.device."""
    return torch.device(name if name != "auto" else "cuda" if torch.cuda.is_available() else "cpu")


def shared_seed(seed: int | None, strategy: object) -> int:
    """`seed`, or one drawn at random by process 0 and shared with all (so that they agree)."""
    if seed is not None:
        return int(seed)
    drawn = int(torch.randint(0, 2**31 - 1, ()).item())
    return int(strategy.broadcast(drawn, src=0))
