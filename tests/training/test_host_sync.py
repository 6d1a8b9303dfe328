"""A training step that logs nothing never reads a tensor on the host.

On a GPU each such read (`.item()`, `bool(t)`, `.tolist()`, boolean-mask indexing, ...) makes the
host wait for the device, and the device then idles while the host queues the next step. The
test watches every tensor call of whole steps (the step, the backward pass, the update and every
callback's hooks) with a TorchFunctionMode, on the CPU, where the same calls are made.
"""

from __future__ import annotations

from collections import Counter

import lightning as L
import torch
from torch.overrides import TorchFunctionMode

from tests.conftest import FAST, compose_cfg

HOST_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "cpu",
              "numpy"}  # fmt: skip


class HostReadCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.reads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        index = args[1] if name == "__getitem__" and len(args) > 1 else None
        if name in HOST_READS or (
            isinstance(index, torch.Tensor) and index.dtype == torch.bool
        ):  # a boolean mask's result size is known only on the host
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


class HostReads(L.Callback):
    """Counts host reads from the start of each step to the start of the next."""

    made: list[HostReads] = []  # the instances Hydra built, for the test to read

    def __init__(self):
        self.mode: HostReadCounter | None = None
        self.per_step: dict[int, Counter[str]] = {}
        HostReads.made.append(self)

    def _close(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.per_step[self.step] = self.mode.reads
            self.mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close()
        self.step, self.mode = trainer.global_step, HostReadCounter()
        self.mode.__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()


def test_steps_that_log_nothing_make_no_host_reads(tmp_path):
    from difftrain.cli.train import train

    log_every = 5
    with_bar = [o for o in FAST if o != "~callbacks.progress_bar"]  # the default bar, too
    cfg = compose_cfg(
        tmp_path, *with_bar, "logger=none", "trainer.max_steps=16", "trainer.val_check_interval=100",
        "trainer.limit_train_batches=null", f"trainer.log_every_n_steps={log_every}",
        "~callbacks.evaluate", "+callbacks.host_reads._target_=tests.training.test_host_sync.HostReads",
    )  # fmt: skip
    cfg.callbacks.guard.snapshot_every = 100
    HostReads.made.clear()
    train(cfg)
    per_step = HostReads.made[-1].per_step
    assert len(per_step) == 16
    quiet = {
        step: dict(reads)
        for step, reads in per_step.items()
        if (step + 1) % log_every and 0 < step < 15  # neither logging, nor first or last
    }
    assert len(quiet) == 11
    assert all(not reads for reads in quiet.values()), quiet
    logging = [per_step[step] for step in (4, 9)]
    assert all(logging), "the logging steps read the statistics: the test can see reads"
