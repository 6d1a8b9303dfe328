"""Training memory and speed of a UNet with and without activation checkpointing.

    python benchmarks/activation_memory.py                          # unet_base, batch 32, 32x32x3
    python benchmarks/activation_memory.py --net unet_small --batch-size 64 --channels 1
    python benchmarks/activation_memory.py --net unet3d_small --frames 8 --channels 1   # clips

Each setting runs in a fresh process, so that one's peak does not hide the other's. The peak is
torch.cuda.max_memory_allocated on a GPU; on the CPU it is the growth of the process's peak
resident memory (ru_maxrss) over one forward and backward pass, after the model and optimizer
exist.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from difftrain.config import compose_net
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.loss import raw_error
from difftrain.diffusion.objectives import EpsObjective


def peak_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def run(
    net_name: str, batch_size: int, channels: int, size: int, checkpointing: bool, frames: int = 0
) -> dict:
    """One setting, in this process: peak memory of a training step, and its seconds; clips of
    `frames` frames (data=moving_digits' layout) when frames > 0."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clips = ["data=moving_digits", f"data.frames={frames}"] if frames else []
    net = compose_net(
        net_name, channels, size, f"net.checkpoint_activations={checkpointing}", *clips
    )
    net = net.to(device)
    denoiser = Denoiser(net, EpsObjective())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x0 = torch.randn(batch_size, *net.sample_shape, device=device)

    def step() -> None:
        sigma = torch.rand(batch_size, device=device) * 10
        loss = raw_error(denoiser, x0, sigma, torch.randn_like(x0))[0].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    optimizer.zero_grad()
    loss = raw_error(denoiser, x0, torch.ones(1, device=device), x0)[
        0
    ].mean()  # weights' grads exist
    loss.backward()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_mib() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    step()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 2
    if device == "cuda":
        peak = peak_mib()
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**10
    return {"peak_mib": peak, "seconds": seconds, "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="unet_base")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--frames", type=int, default=0, help="clips of this many frames (0: images)"
    )
    parser.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        on = args.one == "on"
        sizes = (args.batch_size, args.channels, args.image_size)
        print(json.dumps(run(args.net, *sizes, on, args.frames)))
        return
    results = {}
    for setting in ("off", "on"):
        command = [sys.executable, __file__, *sys.argv[1:], "--one", setting]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[setting] = json.loads(out.strip().splitlines()[-1])
    off, on = results["off"], results["on"]
    what = "peak allocated" if off["device"] == "cuda" else "peak RSS growth"
    print(
        f"{args.net}, batch {args.batch_size}, {args.channels}x{args.image_size}x{args.image_size}"
        f" on {off['device']}: {what} of a training step"
    )
    for name, r in (("without checkpointing", off), ("with checkpointing", on)):
        print(f"  {name:22s} {r['peak_mib']:9.0f} MiB  {r['seconds'] * 1e3:8.0f} ms/step")
    print(
        f"  memory x{on['peak_mib'] / off['peak_mib']:.2f}, time x{on['seconds'] / off['seconds']:.2f}"
    )


if __name__ == "__main__":
    main()
