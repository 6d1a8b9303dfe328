"""Where the `difftrain-train` path makes the host wait for the GPU, step by step (CUDA only).

    python benchmarks/cuda_syncs.py                                   # unet_small, batch 64
    python benchmarks/cuda_syncs.py --net unet_base --batch-size 256 --channels 3

Runs the main job's config (evaluation off, no validation) with the default callbacks, and from
step `--warmup` on turns on `torch.cuda.set_sync_debug_mode("warn")`, which warns at every
synchronizing CUDA call: `.item()`, a device-to-host copy, `torch.cuda.synchronize`, a
`nonzero`. Each warning is charged to the step it happened in (from one step's start to the next
one's) and to its innermost caller outside torch. A step that logs nothing should have none; a
logging step (every `trainer.log_every_n_steps`) reads its values once.
"""

from __future__ import annotations

import argparse
import tempfile
import traceback
import warnings
from collections import Counter, defaultdict

import lightning as L
import torch

from difftrain.training.report import logs_this_step


class SyncWatch(L.Callback):
    """Charges each synchronizing CUDA call to its step, and to its innermost caller outside torch."""

    made: list[SyncWatch] = []

    def __init__(self, warmup: int):
        self.warmup, self.step, self.logging = warmup, -1, False
        self.syncs: dict[int, Counter[str]] = defaultdict(Counter)
        self.logging_steps: set[int] = set()
        self.watched: list[int] = []
        self.catcher: warnings.catch_warnings | None = None
        SyncWatch.made.append(self)

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            return
        stack = traceback.extract_stack()[:-1]
        ours = [f for f in stack if "/torch/" not in f.filename and "warnings" not in f.filename]
        where = ours[-1] if ours else stack[-1]
        self.syncs[self.step][f"{where.filename.split('/')[-1]}:{where.lineno} {where.name}"] += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step < self.warmup:
            return
        if self.catcher is None:
            self.catcher = warnings.catch_warnings()
            self.catcher.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = self._show
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        self.step = trainer.global_step
        self.watched.append(self.step)
        if logs_this_step(trainer):
            self.logging_steps.add(self.step)

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")
        if self.catcher is not None:
            self.catcher.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--net", default="unet_small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--trainer", default="gpu")
    parser.add_argument("--overrides", nargs="*", default=[], help="more difftrain-train overrides")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "cuda_syncs.py needs a CUDA device: set_sync_debug_mode watches CUDA calls"
        )

    from hydra import compose, initialize_config_dir

    from difftrain.cli.train import train
    from difftrain.config import CONFIG_DIR

    out = tempfile.mkdtemp(prefix="difftrain-syncs-")
    overrides = [
        f"net={args.net}", f"data.channels={args.channels}", f"data.batch_size={args.batch_size}",
        f"trainer={args.trainer}", f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.val_check_interval=100000", "~callbacks.evaluate",
        f"+callbacks.sync_watch._target_={__name__}.SyncWatch",
        f"+callbacks.sync_watch.warmup={args.warmup}", f"paths.output_dir={out}",
        f"paths.log_dir={out}", *args.overrides,
    ]  # fmt: skip
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train(cfg)
    watch = SyncWatch.made[-1]
    quiet = [s for s in watch.watched if s not in watch.logging_steps]
    print(
        f"{args.net}, batch {args.batch_size}: watched steps {watch.watched[0]}-{watch.watched[-1]}, "
        f"{len(watch.logging_steps)} of them logging steps"
    )
    quiet_syncs = {s: watch.syncs[s] for s in quiet if watch.syncs.get(s)}
    print(f"steps that log nothing: {len(quiet)}, of which with syncs: {len(quiet_syncs)}")
    for step, where in sorted(quiet_syncs.items())[:5]:
        print(f"  step {step}: {dict(where)}")
    per_logging_step = Counter()
    for step in watch.logging_steps:
        per_logging_step.update(watch.syncs.get(step, {}))
    n = max(len(watch.logging_steps), 1)
    print(f"logging steps: syncs per step {sum(per_logging_step.values()) / n:.1f}")
    for where, count in per_logging_step.most_common(12):
        print(f"  {count / n:5.1f}  {where}")


if __name__ == "__main__":
    main()
