"""`Progress`: what long work is doing, as a line every few seconds, so that it never looks hung.

Imports the standard library only: data/, text/, evaluation/ and the CLIs all report with it.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("difftrain.progress")


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """Counts `total` items of work called `what` (in `unit`s): says at once what starts (unless
    `quiet`), then every `every` seconds how far it is, how fast and how long is left, and at the
    end how long it took. Quiet work that ends within `every` seconds prints nothing at all.

        progress = Progress("reference features", len(images), "images")
        for batch in batches:
            ...
            progress.update(len(batch))
        progress.close()
    """

    def __init__(
        self, what: str, total: int, unit: str = "images", every: float = 10.0, quiet: bool = False
    ):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self.spoke = not quiet
        if not quiet:
            log.info("%s: %d %s ...", what, total, unit)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every or self.done >= self.total:
            return
        self.last, self.spoke = now, True
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / max(rate, 1e-9)
        log.info(
            "%s: %d/%d %s (%.0f%%), %.3g %s/s, about %s left",
            self.what, self.done, self.total, self.unit, 100 * self.done / self.total, rate,
            self.unit, duration(left),
        )  # fmt: skip

    def close(self) -> float:
        """Say that it is done (when anything was said before); the seconds it took."""
        seconds = time.monotonic() - self.start
        if self.spoke or seconds >= self.every:
            log.info("%s: %d %s in %s", self.what, self.done, self.unit, duration(seconds))
        return seconds
