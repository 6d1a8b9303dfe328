"""The framework's overhead: a bare PyTorch loop vs the `difftrain-train` path, same net and batch.

    python benchmarks/train_overhead.py                               # unet_small, batch 64, CPU
    python benchmarks/train_overhead.py --net unet_base --batch-size 256 --channels 3   # on a GPU

The bare loop is what a researcher would write: random images already on the device, Adam
(fused where the device has it), the eps-prediction MSE on the cosine schedule, no clipping,
no EMA, no logging. The `difftrain-train` path is the main job's config (digits, in `--channels` channels, the
default callbacks and logger, evaluation off) with the same net, batch and precision, timed by wall
clock from the start of step `--warmup` to the end of the last step, validation excluded (there
is none in between). Each path runs in its own process, so that each reports its own peak memory
(CUDA: max_memory_allocated; CPU: peak resident memory of the process).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import lightning as L
import torch

from difftrain.config import compose_net


def peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def autocast(precision: str):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, torch.bfloat16, enabled=precision == "bf16-mixed")


def bare(args: argparse.Namespace) -> dict:
    from difftrain.diffusion.denoiser import Denoiser
    from difftrain.diffusion.objectives import EpsObjective
    from difftrain.diffusion.schedules import CosineSchedule

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = compose_net(args.net, args.channels, args.image_size).to(device)
    denoiser, schedule = Denoiser(net, EpsObjective()), CosineSchedule()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
    x0 = torch.randn(
        args.batch_size, args.channels, args.image_size, args.image_size, device=device
    )

    def step() -> None:
        sigma = schedule.sigma(torch.rand(args.batch_size, device=device))
        with autocast(args.precision):
            loss = denoiser.error(x0, sigma, torch.randn_like(x0))[0].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    return {"images_per_s": args.batch_size * args.steps / (time.perf_counter() - start)}


class WallClock(L.Callback):
    """Seconds from the start of step `warmup` to the end of step `warmup + steps - 1`."""

    made: list[WallClock] = []

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, 0.0, 0.0
        WallClock.made.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        sync()
        self.end = time.perf_counter()


def difftrain(args: argparse.Namespace) -> dict:
    from hydra import compose, initialize_config_dir

    from difftrain.cli.train import train
    from difftrain.config import CONFIG_DIR

    out = tempfile.mkdtemp(prefix="difftrain-overhead-")
    overrides = [
        f"net={args.net}", f"data.image_size={args.image_size}", f"data.channels={args.channels}",
        f"data.batch_size={args.batch_size}", f"trainer.precision={args.precision}",
        f"trainer.max_steps={args.warmup + args.steps}", "trainer.val_check_interval=100000",
        "~callbacks.evaluate", f"+callbacks.wall_clock._target_={__name__}.WallClock",
        f"+callbacks.wall_clock.warmup={args.warmup}", f"paths.output_dir={out}",
        f"paths.log_dir={out}", *args.overrides,
    ]  # fmt: skip
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train(cfg)
    clock = WallClock.made[-1]
    return {"images_per_s": args.batch_size * args.steps / (clock.end - clock.start)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--net", default="unet_small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--precision", default=None, help="default: bf16-mixed on CUDA, else 32-true"
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="more difftrain-train overrides")
    parser.add_argument("--only", choices=["bare", "difftrain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = args.precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    if args.only:
        result = {"bare": bare, "difftrain": difftrain}[args.only](args)
        print(json.dumps({**result, "peak_mib": peak_memory_mib()}))
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"{args.net}, batch {args.batch_size}, {args.channels}x{args.image_size}x{args.image_size}, "
        f"{args.precision}, {device}, {torch.get_num_threads()} threads, {args.steps} timed steps"
    )
    print(f"{'path':<18} {'images/s':>9} {'of bare':>8} {'peak MiB':>9}")
    results = {}
    for path in ("bare", "difftrain"):
        command = [sys.executable, __file__, *sys.argv[1:], "--only", path]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the {path} path failed:\n{done.stderr[-3000:]}")
        results[path] = json.loads(done.stdout.strip().splitlines()[-1])
        ratio = results[path]["images_per_s"] / results["bare"]["images_per_s"]
        name = "bare loop" if path == "bare" else "difftrain-train"
        print(
            f"{name:<18} {results[path]['images_per_s']:>9.1f} {ratio:>8.1%} "
            f"{results[path]['peak_mib']:>9.0f}"
        )


if __name__ == "__main__":
    main()
