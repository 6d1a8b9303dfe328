"""`AtomicCheckpointIO`: Lightning writes its checkpoints whole or not at all (`files.save_atomically`)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from difftrain.files import NO_SPACE, save_atomically

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, then renames it into place, so a kill
    mid-write (preemption, out of memory) leaves the previous checkpoint, never half a file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        fix = "or train into another run dir (paths.log_dir=...)"
        try:
            save_atomically(checkpoint, path)
        except OSError as e:
            if isinstance(e, PermissionError) or e.errno == errno.EROFS:
                raise PermissionError(
                    f"cannot write the checkpoint {path}: {e.strerror} ({path.parent} is "
                    f"read-only?). Fix: make that folder writable, {fix}"
                ) from e
            if e.errno in NO_SPACE:
                raise OSError(
                    e.errno,
                    f"cannot write the checkpoint {path}: {e.strerror}. Fix: free space on that "
                    f"disk (old runs, caches), {fix}",
                ) from e
            raise
