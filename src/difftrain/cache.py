"""`filling`: one process fills a cache file while the others that need it wait, then read it.

Imports the standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

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
