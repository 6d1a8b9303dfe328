"""Checkpoint files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, then renames it into place, so a kill
    mid-write (preemption, out of memory) leaves the previous checkpoint, never half a file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except PermissionError as e:
            raise PermissionError(
                f"cannot write the checkpoint {path}: {e.strerror} ({path.parent} is read-only?). "
                "Fix: make that folder writable, or train into another run dir (paths.log_dir=...)"
            ) from e
        finally:
            tmp.unlink(missing_ok=True)
