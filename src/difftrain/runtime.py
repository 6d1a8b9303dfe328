"""Process-wide settings (seed, threads, matmul precision), applied in one place from the config."""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def apply_runtime(seed: int | None, num_threads: int | None, float32_matmul_precision: str) -> None:
    """Set the seed and torch's global knobs for this run (clearing a seed left by an earlier
    job), and silence the libraries' known noise (`quiet_known_noise`).

    Threads: `num_threads`, or, for a job of a multirun whose jobs run side by side on this
    machine (hydra/launcher=parallel), its share of the cores; else torch's default (all cores).
    """
    quiet_known_noise()
    if seed is None:
        os.environ.pop("PL_GLOBAL_SEED", None)
    else:
        import lightning as L  # here: the sampling CLIs start without Lightning

        L.seed_everything(seed, workers=True)
    threads = num_threads or (cores() // side_by_side_jobs() if side_by_side_jobs() > 1 else 0)
    if threads:
        torch.set_num_threads(max(1, threads))
    torch.set_float32_matmul_precision(float32_matmul_precision)


# Messages of the libraries below that are not the user's to act on: a cloud-logger ad, a
# deprecation inside Lightning, notes on what difftrain does on purpose (frozen parts in eval
# mode, resuming into a new run dir, a model summary that cannot count bf16).
KNOWN_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"The dirpath has changed from .* won't be reloaded",
    r"Precision bf16-mixed is not supported by the model summary",
)
TIPS = ("litlogger",)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(tip in record.getMessage() for tip in TIPS)


def quiet_known_noise() -> None:
    """Silence the libraries' warnings and tips in KNOWN_NOISE and TIPS, once per process."""
    for message in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in rank_zero.filters):
        rank_zero.addFilter(_NoTips())


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def side_by_side_jobs() -> int:
    """How many jobs of the running multirun share this machine at once: the joblib launcher's
    n_jobs (-1: one per core), else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    if "JoblibLauncher" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return cores() if n_jobs < 0 else n_jobs


def runnable_elsewhere(samples: int = 5, interval: float = 0.02) -> float:
    """Threads of other processes ready to run on this machine now (Linux /proc/loadavg's
    runnable count, less this process's one, median of a few samples); 0 where unknown, and
    where the last minute's load average says the machine has been mostly idle."""
    loadavg = Path("/proc/loadavg")
    if not loadavg.is_file() or os.getloadavg()[0] < cores() / 2:
        return 0.0
    counts = []
    for _ in range(samples):
        counts.append(int(loadavg.read_text().split()[3].split("/")[0]) - 1)
        time.sleep(interval)
    return max(0.0, statistics.median(counts))


def oversubscription(threads: int, others: float, available: int) -> str | None:
    """A warning when `threads` of ours and `others` runnable threads need far more than the
    `available` cores: two CPU trainings side by side each run several times slower than half."""
    if threads + others <= 1.25 * available:
        return None
    return (
        f"this machine is oversubscribed: {others:.0f} other threads are ready to run on its "
        f"{available} cores, beside this run's {threads}. Each run then gets much less than its "
        f"share. Run trainings one after another, or give each a share of the cores "
        f"(num_threads=<cores / runs>; a parallel multirun does this itself)"
    )


def warn_if_oversubscribed() -> None:
    """Log `oversubscription` for this process, on the CPU (GPU runs use few CPU threads)."""
    if os.environ.get("LOCAL_RANK", "0") != "0":  # DDP workers: their siblings are no strangers
        return
    message = oversubscription(torch.get_num_threads(), runnable_elsewhere(), cores())
    if message:
        log.warning(message)


def cpu_flags() -> set[str]:
    """The instruction-set flags of this machine's CPU (Linux /proc/cpuinfo: x86 `flags`, Arm
    `Features`); empty where unknown."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_warning(precision: str, flags: set[str]) -> str | None:
    """A warning when a CPU run asks for bf16 autocast on a CPU without bf16 instructions, where
    it runs emulated and may be slower than fp32. With them (avx512_bf16 or AMX on x86, bf16 on
    Arm) bf16 is the fast choice: on this project's 2-core CPU it trains unet_small 1.5x faster."""
    native = {"avx512_bf16", "amx_bf16", "bf16"}
    if not precision.startswith("bf16") or not flags or flags & native:
        return None
    return (
        f"trainer.precision={precision} on a CPU without bf16 instructions (none of "
        f"{', '.join(sorted(native))}): bf16 is emulated there and may train slower than fp32. "
        "Compare `python benchmarks/train_speed.py --nets unet_small --precision bf16` with the "
        "same command without --precision, and set trainer.precision=32-true if it is slower"
    )


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else CPU; anything else is passed to torch.device."""
    return torch.device(name if name != "auto" else "cuda" if torch.cuda.is_available() else "cpu")


def shared_seed(seed: int | None, strategy: object) -> int:
    """`seed`, or one drawn at random by process 0 and shared with all (so that they agree)."""
    if seed is not None:
        return int(seed)
    drawn = int(torch.randint(0, 2**31 - 1, ()).item())
    return int(strategy.broadcast(drawn, src=0))
