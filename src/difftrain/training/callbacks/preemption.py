"""`Preemption`: a run that is told to stop saves its exact state first, and says so."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch

from difftrain.console import override, quoted

log = logging.getLogger(__name__)
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")  # schedulers, spot instances; Ctrl-C
EXIT_CODE = 143  # 128 + SIGTERM: what schedulers expect of a job that was preempted
INTERRUPTED = 130  # 128 + SIGINT: a run stopped with Ctrl-C (nothing should requeue it)


class Preempted(SystemExit):
    """The run stopped on a signal after saving a checkpoint; exits with 143 so it is requeued."""

    run_status = "preempted"  # what summary.json calls a run that ends this way

    def __init__(self, message: str, code: int = EXIT_CODE):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def launched_by_lightning(trainer: L.Trainer) -> bool:
    """Whether this process is a child that Lightning's launcher started (DDP on one machine,
    rank > 0). The launcher's main process SIGKILLs itself and every child within seconds of a
    child exiting with a non-zero code: a stopped child exits 0 so that the main process (rank
    0) can finish its summary and give the job its exit code. Processes that a scheduler or
    torchrun started keep theirs."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    environment = getattr(trainer.strategy, "cluster_environment", None)
    return (
        trainer.world_size > 1
        and isinstance(environment, LightningEnvironment)
        and environment.local_rank() > 0
    )


class Preemption(L.Callback):
    """On SIGTERM, SIGUSR1 or SIGUSR2 the current step (or validation) finishes, a checkpoint
    with the exact-resume state is written to `dirpath/last.ckpt`, and the run stops with
    `Preempted`: summary.json says `preempted` and the process exits with 143. Ctrl-C (SIGINT)
    does the same and exits with 130; a second Ctrl-C stops at once, as it would without us.

    A handler that was there before (submitit's requeue, Lightning's SLURM requeue) is called
    once the checkpoint is written. `ckpt_path=last` resumes from it. Under DDP the processes
    stop together at the first logging step after the signal.
    """

    def __init__(self, dirpath: str, signals: tuple[str, ...] = SIGNALS):
        self.dirpath, self.signals = Path(dirpath), tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning's own handlers (installed when fitting starts), which would stop the
        # run at the next step without a checkpoint.
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if signum != signal.SIGINT:
            log.warning("received %s: stopping after this step", signal.Signals(signum).name)
            return
        log.warning(
            "Ctrl-C: stopping after this step and saving last.ckpt; press Ctrl-C again to stop at "
            "once, losing the steps since the last checkpoint"
        )
        previous = self._previous.pop(signum, None)
        if previous is not None:  # the next Ctrl-C goes where it went before (KeyboardInterrupt)
            signal.signal(signum, previous)

    def _stop_if_asked(self, trainer: L.Trainer) -> None:
        received = self.received is not None
        if trainer.world_size > 1:  # one process told is all told: they stop at the same step
            flag = torch.tensor(float(received), device=trainer.strategy.root_device)
            received = bool(trainer.strategy.reduce(flag, reduce_op="max") > 0)
        if not received:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)  # every process takes part; the first one writes
        name = signal.Signals(self.received or signal.SIGTERM).name
        previous = self._previous.get(self.received)
        self._restore()
        if name not in ("SIGTERM", "SIGINT") and callable(previous):
            previous(self.received, None)  # a scheduler's own requeue (submitit, Lightning's SLURM)
        how = "stopped by Ctrl-C (SIGINT)" if name == "SIGINT" else f"preempted by {name}"
        code = INTERRUPTED if name == "SIGINT" else EXIT_CODE
        raise Preempted(
            f"{how} at step {trainer.global_step}: saved {quoted(path)}; resume with "
            f"{override('ckpt_path', path)} (or ckpt_path=last in the same run dir)",
            0 if launched_by_lightning(trainer) else code,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        # Several processes agree on whether one was told, which makes the host wait for the
        # device: they do so on logging steps only (every trainer.log_every_n_steps).
        if trainer.world_size == 1 or outputs["report"].logs:
            self._stop_if_asked(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._stop_if_asked(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        """Put back the handlers we replaced, where ours is still the one installed (Lightning
        restores its own originals when it tears down, before or after us)."""
        for signum, handler in self._previous.items():
            mine = signal.getsignal(signum) == self._note
            if (
                mine
                and handler is not None
                and threading.current_thread() is threading.main_thread()
            ):
                signal.signal(signum, handler)
        self._previous = {}
