"""Files written whole or not at all (`save_atomically`), caches read back or recomputed
(`load_cached`), and caches filled by one process while the others wait (`filling`).

Imports torch and the standard library only: data/, text/, evaluation/ and training/ all use it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, a full quota
NEARLY_FULL = 16 * 2**20  # bytes free under which a failed torch.save is taken for a full disk


def save_atomically(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file beside `path`, then rename it into place: a process killed
    mid-write leaves the previous file, and one that reads the file while another writes it (two
    runs filling one cache) finds the whole file or none. A full disk raises an OSError (ENOSPC)
    naming `path` and the space left there."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save says "unexpected pos" when a write fails
        code = _no_space(e, path)  # asked while the partial file still holds its space
        if code is None:
            raise
        _remove(tmp)  # first, so that the space reported is what a retry finds
        free = _readable(_free_bytes(path))
        raise OSError(
            code, f"{os.strerror(code)} ({free} free on that filesystem)", str(path)
        ) from e
    finally:
        _remove(tmp)
    return path


def _no_space(error: BaseException, path: Path) -> int | None:
    """ENOSPC or EDQUOT when a write failed for want of space: that errno in the error or what
    it hides (torch.save's RuntimeError keeps the OSError as its context), or a RuntimeError on
    a filesystem that is (nearly) full; None for any other failure."""
    cause: BaseException | None = error
    while cause is not None:
        if getattr(cause, "errno", None) in NO_SPACE:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    full = isinstance(error, RuntimeError) and _free_bytes(path) < NEARLY_FULL
    return errno.ENOSPC if full else None


def _readable(size: int) -> str:
    """'136 kB', '4.2 GB'."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def _free_bytes(path: Path) -> int:
    """The bytes free on the filesystem that holds `path` (or its nearest existing folder)."""
    return shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free


def _remove(tmp: Path) -> None:
    """Remove a partial file; a folder that refuses even that must not hide why the write failed."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as e:  # a read-only filesystem answers EROFS even for a missing file
        if tmp.exists():
            log.warning("cannot remove the partial file %s (%s): delete it by hand", tmp, e)


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


try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two runs may then both compute a cache
    fcntl = None


@contextlib.contextmanager
def filling(path: str | Path) -> Iterator[None]:
    """Hold the lock `<path>.lock` while the body reads, computes and writes the cache `path`.

    A second process that needs the same cache waits here (saying so, and what for) until the
    first is done, then finds the file written: it is computed once, not twice. The lock is the
    kernel's (flock), so a process that dies holding it releases it.
    """
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        locked = _lock(f, block=False)
        if locked is False:
            log.info("waiting for another process that is filling the cache %s", path)
            start = time.monotonic()
            locked = _lock(f, block=True)
            log.info(
                "the cache %s is ready after %.0f s of waiting", path, time.monotonic() - start
            )
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _lock(f, block: bool) -> bool | None:
    """True: locked; False: another process holds it; None: no locks here (Windows, some
    network file systems), so the body runs unlocked."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        log.debug("cannot lock %s (%s): computing without a lock", f.name, os.strerror(e.errno))
        return None
    return True
