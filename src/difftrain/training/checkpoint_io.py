"""Checkpoints and caches written whole or not at all."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


def save_atomically(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file beside `path`, then rename it into place: a process killed
    mid-write leaves the previous file, and one that reads the file while another writes it (two
    runs filling one cache) finds the whole file or none."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_cached(path: str | Path) -> Any | None:
    """A cache file's contents (tensors, read onto the CPU); None when there is no such file, or
    when it cannot be read (cut short by a full disk, written by an older difftrain): the caller
    computes it again and saves it whole over the bad one."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a cache is derived data: recompute it rather than fail the run
        log.warning(
            "cannot read the cache %s (%s: %s): computing it again", path, type(e).__name__, e
        )
        return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, then renames it into place, so a kill
    mid-write (preemption, out of memory) leaves the previous checkpoint, never half a file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        try:
            save_atomically(checkpoint, path)
        except PermissionError as e:
            raise PermissionError(
                f"cannot write the checkpoint {path}: {e.strerror} ({path.parent} is read-only?). "
                "Fix: make that folder writable, or train into another run dir (paths.log_dir=...)"
            ) from e
