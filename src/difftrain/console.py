"""What difftrain says on the console: `Progress` of long work, a line every few seconds so that
it never looks hung, and paths and overrides `quoted` ready to paste into a shell.

Imports the standard library only: data/, text/, evaluation/ and the CLIs all report with it.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

log = logging.getLogger("difftrain.console")


def quoted(path: str | Path) -> str:
    """A path as a shell reads it back: quoted where it has spaces or other special characters."""
    return shlex.quote(str(path))


def override(key: str, value: object) -> str:
    """`key=value` as a Hydra override typed into a shell: quoted for both where the value has
    spaces or other special characters (`"ckpt_path='/my runs/last.ckpt'"`)."""
    text = str(value)
    if shlex.quote(text) == text:
        return f"{key}={text}"
    if not set(text) & set("\"$`\\'"):
        return f"\"{key}='{text}'\""
    return shlex.quote(f"{key}={text}")


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
    end how long it took. Work that ends within `every` seconds says no more than its start.

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
        self.reported = False  # a line of how far it is: the end is said too
        if not quiet:
            log.info("%s: %d %s ...", what, total, unit)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every or self.done >= self.total:
            return
        self.last, self.reported = now, True
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / max(rate, 1e-9)
        log.info(
            "%s: %d/%d %s (%.0f%%), %.3g %s/s, about %s left",
            self.what, self.done, self.total, self.unit, 100 * self.done / self.total, rate,
            self.unit, duration(left),
        )  # fmt: skip

    def close(self) -> float:
        """Say that it is done, when it took a while; the seconds it took."""
        seconds = time.monotonic() - self.start
        if self.reported or seconds >= self.every:
            log.info("%s: %d %s in %s", self.what, self.done, self.unit, duration(seconds))
        return seconds
