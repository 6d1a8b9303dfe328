"""Training throughput of each net config: images/s and achieved GFLOP/s (forward + backward + Adam).

    python benchmarks/train_speed.py                         # every conf/net/*.yaml at 32x32x1
    python benchmarks/train_speed.py --nets unet_small --image-size 16 --batch-size 128
    python benchmarks/train_speed.py --diffusers             # also diffusers' UNet2DModel (32/64/64)
    python benchmarks/train_speed.py --nets unet_small --diffusers --precision bf16   # bf16 autocast

FLOPs are counted by torch's FlopCounterMode on one step; GFLOP/s = FLOPs per step / seconds per step.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from difftrain.config import CONFIG_DIR, compose_net
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.loss import raw_error
from difftrain.diffusion.objectives import EpsObjective
from difftrain.diffusion.schedules import CosineSchedule


def measure(
    net: nn.Module, shape: tuple[int, int, int], batch_size: int, steps: int, bf16: bool = False
) -> tuple[float, float, int]:
    """(images/s, GFLOP per image, parameters) for training steps of the eps-prediction loss.

    `bf16` runs the forward under bf16 autocast (weights and Adam stay fp32), as
    `trainer.precision=bf16-mixed` does.
    """
    denoiser, schedule = Denoiser(net, EpsObjective()), CosineSchedule()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x0 = torch.randn(batch_size, *shape)

    def step() -> None:
        sigma = schedule.sigma(torch.rand(batch_size))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = raw_error(denoiser, x0, sigma, torch.randn_like(x0))[0].float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return (
        batch_size / seconds,
        counter.get_total_flops() / batch_size / 1e9,
        sum(p.numel() for p in net.parameters()),
    )


class DiffusersUNet(nn.Module):
    """diffusers' UNet2DModel behind difftrain's net signature, for comparison.

    The default is a small UNet (32/64/64 channels) for CPU work; `cifar10=True` builds the DDPM
    CIFAR-10 config (google/ddpm-cifar10-32: 128/256/256/256, attention at 16x16, 35.7M
    parameters), the counterpart of difftrain's unet_base.
    """

    def __init__(self, in_channels: int, image_size: int, cifar10: bool = False):
        super().__init__()
        from diffusers import UNet2DModel

        if cifar10:
            layout = dict(
                block_out_channels=(128, 256, 256, 256),
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                dropout=0.1,
            )
        else:
            layout = dict(
                block_out_channels=(32, 64, 64),
                norm_num_groups=8,
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            )
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=in_channels, out_channels=in_channels, **layout
        )
        self.sample_shape = (in_channels, image_size, image_size)

    def forward(self, x, c_noise, class_labels=None):
        return self.unet(x, c_noise * 250).sample


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nets", nargs="*", help="net config names (default: all of conf/net)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--diffusers", action="store_true", help="also time diffusers' UNet2DModel")
    parser.add_argument(
        "--precision", choices=["32", "bf16"], default="32", help="bf16: autocast the forward"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    names = args.nets or sorted(p.stem for p in (Path(CONFIG_DIR) / "net").glob("*.yaml"))
    nets = {
        name: partial(compose_net, name, args.channels, args.image_size)
        for name in names
        if not name.startswith("_")  # option bases
    }
    if args.diffusers:
        nets["diffusers_unet2d"] = lambda: DiffusersUNet(args.channels, args.image_size)

    shape = (args.channels, args.image_size, args.image_size)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"images {shape}, precision {args.precision}"
    )
    print(f"{'net':<18} {'params':>9} {'GFLOP/img':>10} {'images/s':>9} {'GFLOP/s':>8}")
    for name, build in nets.items():
        net = build()
        if len(net.sample_shape) != 3:  # not an image net (mlp: toy2d points)
            continue
        images_per_s, gflop, params = measure(
            net, shape, args.batch_size, args.steps, bf16=args.precision == "bf16"
        )
        print(
            f"{name:<18} {params / 1e6:>8.2f}M {gflop:>10.3f} {images_per_s:>9.1f} {images_per_s * gflop:>8.1f}"
        )


if __name__ == "__main__":
    main()
