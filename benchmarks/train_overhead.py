"""The framework's overhead: a bare PyTorch loop vs the `difftrain-train` path, same net and batch.

    python benchmarks/train_overhead.py                               # unet_small, batch 64, CPU
    python benchmarks/train_overhead.py --net unet_base --batch-size 256 --channels 3 --diffusers  # GPU

The bare loop is what a researcher would write: random images already on the device, Adam
(fused where the device has it), the eps-prediction MSE on the cosine schedule, no clipping,
no EMA, no logging. The `difftrain-train` path is the main job's config (digits, in `--channels` channels, the
default callbacks and logger, evaluation off) with the same net, batch and precision, timed by wall
clock from the start of step `--warmup` to the end of the last step, validation excluded (there
is none in between). Each path runs in its own process, so that each reports its own peak memory
(CUDA: max_memory_allocated; CPU: peak resident memory of the process). `--diffusers` adds the
same bare loop around diffusers' UNet2DModel in the DDPM CIFAR-10 config (the counterpart of
unet_base), and `--profile DIR` writes torch.profiler's op table of 10 more steps of each path there.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from difftrain.config import compose_net
from difftrain.diffusion.loss import raw_error


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


class Profile:
    """torch.profiler over the timed steps when `--profile DIR` is given; writes DIR/<path>.txt."""

    def __init__(self, args: argparse.Namespace):
        self.path = Path(args.profile, f"{args.only}.txt") if args.profile else None
        self.profiler = None

    def start(self) -> None:
        if self.path:
            self.profiler = torch.profiler.profile()
            self.profiler.__enter__()

    def stop(self) -> None:
        if self.profiler:
            self.profiler.__exit__(None, None, None)
            averages = self.profiler.key_averages()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(
                averages.table(sort_by="self_cpu_time_total", row_limit=40)
                + averages.table(sort_by="self_device_time_total", row_limit=25)
            )
            self.profiler = None


def bare(args: argparse.Namespace) -> dict:
    from difftrain.diffusion.denoiser import Denoiser
    from difftrain.diffusion.objectives import EpsObjective
    from difftrain.diffusion.schedules import CosineSchedule

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if args.only == "diffusers":
        from train_speed import DiffusersUNet  # beside this file

        net = DiffusersUNet(args.channels, args.image_size, cifar10=True).to(device)
    else:
        net = compose_net(args.net, args.channels, args.image_size).to(device)
    denoiser, schedule = Denoiser(net, EpsObjective()), CosineSchedule()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
    x0 = torch.randn(
        args.batch_size, args.channels, args.image_size, args.image_size, device=device
    )

    def step() -> None:
        sigma = schedule.sigma(torch.rand(args.batch_size, device=device))
        with autocast(args.precision):
            loss = raw_error(denoiser, x0, sigma, torch.randn_like(x0))[0].mean()
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
    seconds = time.perf_counter() - start
    profile = Profile(args)
    if profile.path:
        profile.start()
        for _ in range(args.profile_steps):
            step()
        sync()
        profile.stop()
    return {"images_per_s": args.batch_size * args.steps / seconds}


class WallClock(L.Callback):
    """Seconds from the start of step `warmup` to the end of step `warmup + steps - 1`; the
    profiled steps, if any, come after."""

    made: list[WallClock] = []

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.start, self.end = warmup, steps, 0.0, 0.0
        self.profile = Profile(ARGS)
        WallClock.made.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync()
            self.start = time.perf_counter()
        if trainer.global_step == self.warmup + self.steps:
            sync()
            self.end = time.perf_counter()
            self.profile.start()

    def on_train_end(self, trainer, pl_module) -> None:
        sync()
        self.end = self.end or time.perf_counter()
        self.profile.stop()


def difftrain(args: argparse.Namespace) -> dict:
    from hydra import compose, initialize_config_dir

    from difftrain.cli.train import train
    from difftrain.config import CONFIG_DIR

    out = tempfile.mkdtemp(prefix="difftrain-overhead-")
    overrides = [
        f"net={args.net}", f"data.image_size={args.image_size}", f"data.channels={args.channels}",
        f"data.batch_size={args.batch_size}", f"trainer.precision={args.precision}",
        f"trainer.max_steps={args.warmup + args.steps + args.profile_steps * bool(args.profile)}",
        "trainer.val_check_interval=100000",
        "~callbacks.evaluate", f"+callbacks.wall_clock._target_={__name__}.WallClock",
        f"+callbacks.wall_clock.warmup={args.warmup}", f"+callbacks.wall_clock.steps={args.steps}",
        f"paths.output_dir={out}",
        f"paths.log_dir={out}", f"float32_matmul_precision={args.matmul}", *args.overrides,
    ]  # fmt: skip
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    try:
        train(cfg)
    finally:  # the run dir (checkpoints, W&B files) is scratch: leave nothing in /tmp
        shutil.rmtree(out, ignore_errors=True)
    clock = WallClock.made[-1]
    return {"images_per_s": args.batch_size * args.steps / (clock.end - clock.start)}


PATHS = {"bare": bare, "difftrain": difftrain, "diffusers": bare}
NAMES = {"bare": "bare loop", "difftrain": "difftrain-train", "diffusers": "diffusers bare"}
ARGS: argparse.Namespace  # the arguments of this process's path, for WallClock


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
    parser.add_argument(
        "--matmul", default="highest", help="float32_matmul_precision (high: TF32 on GPUs)"
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="more difftrain-train overrides")
    parser.add_argument("--diffusers", action="store_true", help="also diffusers' UNet2DModel")
    parser.add_argument("--paths", nargs="*", default=["bare", "difftrain"], choices=PATHS)
    parser.add_argument("--profile", metavar="DIR", help="write each path's profiler table here")
    parser.add_argument(
        "--profile-steps", type=int, default=10,
        help="steps profiled after the timed ones (the profiler would slow those down)",
    )  # fmt: skip
    parser.add_argument("--only", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = args.precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    if args.only:
        global ARGS
        ARGS = args
        torch.set_float32_matmul_precision(args.matmul)
        result = PATHS[args.only](args)
        print(json.dumps({**result, "peak_mib": peak_memory_mib()}))
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"{args.net}, batch {args.batch_size}, {args.channels}x{args.image_size}x{args.image_size}, "
        f"{args.precision}, matmul {args.matmul}, {device}, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps {' '.join(args.overrides)}"
    )
    print(f"{'path':<18} {'images/s':>9} {'of first':>9} {'peak MiB':>9}")
    first, failed = None, []
    for path in args.paths + ["diffusers"] * args.diffusers:
        command = [sys.executable, __file__, *sys.argv[1:], "--only", path]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:  # the others still run: one failure must not cost every figure
            print(f"{NAMES[path]:<18} failed:\n{done.stderr[-3000:]}")
            failed.append(path)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        first = first or result["images_per_s"]
        print(
            f"{NAMES[path]:<18} {result['images_per_s']:>9.1f} "
            f"{result['images_per_s'] / first:>9.1%} {result['peak_mib']:>9.0f}"
        )
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
