"""Peak training memory of a diffusers net under the memory options: gradient checkpointing
(net.checkpoint_activations), bf16 autocast (trainer.precision=bf16-mixed), both, and 8-bit Adam
(optimizer=adam8bit: bitsandbytes, on a GPU where it is installed).

    python benchmarks/pretrained_memory.py                        # diffusers_unet, batch 16, 3x64x64
    python benchmarks/pretrained_memory.py --net diffusers_transformer --image-size 32
    python benchmarks/pretrained_memory.py --batch-size 2 --image-size 16 --width 16   # quick

Each setting runs in a fresh process, so that one's peak does not hide another's: the peak is
torch.cuda.max_memory_allocated on a GPU, the growth of the process's peak resident memory
(ru_maxrss) over two training steps on the CPU, after the model and optimizer exist.
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
from difftrain.training.optim import adam8bit

SETTINGS = {  # name: (checkpointing, bf16, 8-bit Adam)
    "fp32": (False, False, False),
    "checkpointing": (True, False, False),
    "bf16": (False, True, False),
    "bf16 + checkpointing": (True, True, False),
    "bf16 + checkpointing + 8-bit Adam": (True, True, True),
}


def width_overrides(net: str, width: int) -> list[str]:
    """A net `width` wide at its first level (UNet: block_out_channels [w, 2w, 4w, 4w], SD's
    proportions; transformer: 6 heads of w/2, 8 layers)."""
    if net == "diffusers_unet":
        return [f"+net.config.block_out_channels=[{width},{2 * width},{4 * width},{4 * width}]",
                "+net.config.down_block_types=[DownBlock2D,AttnDownBlock2D,AttnDownBlock2D,DownBlock2D]",
                "+net.config.up_block_types=[UpBlock2D,AttnUpBlock2D,AttnUpBlock2D,UpBlock2D]",
                "+net.config.layers_per_block=2", "+net.config.norm_num_groups=16"]  # fmt: skip
    return [f"+net.config.attention_head_dim={width // 2}", "+net.config.num_attention_heads=6",
            "+net.config.num_layers=8"]  # fmt: skip


def peak(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def run(net_name: str, batch_size: int, size: int, width: int, setting: str) -> dict:
    """One setting, in this process: the peak memory of a training step, and its seconds."""
    checkpointing, bf16, eight_bit = SETTINGS[setting]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if eight_bit and device != "cuda":
        return {"skipped": "8-bit Adam runs on a GPU"}
    net = compose_net(net_name, 3, size, f"net.checkpoint_activations={checkpointing}",
                      *width_overrides(net_name, width)).to(device)  # fmt: skip
    denoiser = Denoiser(net, EpsObjective())
    if eight_bit:  # optimizer=adam8bit
        try:
            optimizer = adam8bit(net.parameters(), lr=1e-4)
        except ImportError:
            return {"skipped": "bitsandbytes is not installed"}
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x0 = torch.randn(batch_size, *net.sample_shape, device=device)

    def step() -> None:
        sigma = torch.rand(batch_size, device=device) * 10
        with torch.autocast(device, torch.bfloat16, enabled=bf16):
            loss = raw_error(denoiser, x0, sigma, torch.randn_like(x0))[0].float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    parameters = sum(p.numel() for p in net.parameters())
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = 0.0 if device == "cuda" else peak(device)
    start = time.perf_counter()
    step()  # the optimizer's state is made here: counted, as a fine-tune's first step counts it
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 2
    return {"peak_mib": peak(device) - before, "seconds": seconds, "device": device,
            "parameters": parameters}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="diffusers_unet",
                        choices=["diffusers_unet", "diffusers_transformer"])  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="which settings to run (default: all); fp32 is always run")  # fmt: skip
    parser.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (args.batch_size, args.image_size, args.width)
    if args.one:
        print(json.dumps(run(args.net, *sizes, args.one)))
        return
    rows = {}
    for setting in ["fp32", *[s for s in args.settings if s != "fp32"]]:
        command = [sys.executable, __file__, *sys.argv[1:], "--one", setting]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows[setting] = json.loads(out.strip().splitlines()[-1])
    first = rows["fp32"]
    what = "peak allocated" if first["device"] == "cuda" else "peak RSS growth"
    print(f"{args.net} ({first['parameters'] / 1e6:.1f}M parameters), batch {args.batch_size}, "
          f"3x{args.image_size}x{args.image_size} on {first['device']}: {what} of a training step")  # fmt: skip
    print(f"{'setting':36s} {'MiB':>8} {'of fp32':>8} {'ms/step':>8}")
    for setting, r in rows.items():
        if "skipped" in r:
            print(f"{setting:36s} {'-':>8} {'-':>8} {'-':>8}  ({r['skipped']})")
            continue
        share = r["peak_mib"] / first["peak_mib"]
        print(f"{setting:36s} {r['peak_mib']:8.0f} {share:8.2f} {r['seconds'] * 1e3:8.0f}")


if __name__ == "__main__":
    main()
