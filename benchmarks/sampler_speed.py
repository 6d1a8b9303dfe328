"""Sampling speed at equal network evaluations: difftrain's samplers against diffusers' schedulers.

    python benchmarks/sampler_speed.py                    # unet_small, 32x32x1, batch 64, 20 steps
    python benchmarks/sampler_speed.py --net overhead     # a 1x1 conv: the samplers' own cost

Both drive the same network with the same linear (DDPM) schedule; diffusers' model is the network
called with the noise level of its timestep (a table lookup), as a diffusers user would write it.
Prints, per sampler, the NFE, images/s of each and the overhead per step (time beyond the network).
"""

from __future__ import annotations

import argparse
import inspect
import time
from functools import partial

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from difftrain.config import CONFIG_DIR
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.objectives import EpsObjective
from difftrain.diffusion.samplers import (
    Sampler,
    sample_ddim,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from difftrain.diffusion.schedules import LinearSchedule

COMMON = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)
PAIRS = {  # ours, diffusers' scheduler, the spacing both use
    "ddim": (sample_ddim, lambda: DDIMScheduler(**COMMON, set_alpha_to_one=True), "leading"),
    "euler": (sample_euler, lambda: EulerDiscreteScheduler(**COMMON, timestep_spacing="trailing"), "trailing"),
    "euler_ancestral": (sample_euler_ancestral, lambda: EulerAncestralDiscreteScheduler(**COMMON, timestep_spacing="trailing"), "trailing"),
    "heun": (sample_heun, lambda: HeunDiscreteScheduler(**COMMON, timestep_spacing="trailing"), "trailing"),
    "dpmpp_2m": (sample_dpmpp_2m, lambda: DPMSolverMultistepScheduler(**COMMON, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"), "trailing"),
    "dpmpp_2m_sde": (sample_dpmpp_2m_sde, lambda: DPMSolverMultistepScheduler(**COMMON, algorithm_type="sde-dpmsolver++", solver_order=2, timestep_spacing="trailing"), "trailing"),
}  # fmt: skip


class Overhead(torch.nn.Module):
    """A 1x1 convolution: so cheap that the time left is the sampler's own."""

    def __init__(self, channels: int):
        super().__init__()
        self.num_classes = 0
        self.conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x, c_noise, class_labels=None):
        return self.conv(x) * 0.1


def build_net(name: str, image_size: int) -> torch.nn.Module:
    if name == "overhead":
        return Overhead(1)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"net={name}", f"data.image_size={image_size}"])
    return instantiate(cfg.net)


def run_ours(net, solver, spacing: str, steps: int, noise: torch.Tensor) -> int:
    sampler = Sampler(solver, steps=steps, spacing=spacing)
    _, nfe = sampler(
        Denoiser(net, EpsObjective()),
        noise,
        LinearSchedule(),
        generator=torch.Generator().manual_seed(0),
    )
    return nfe


def run_diffusers(net, make_scheduler, steps: int, noise: torch.Tensor) -> int:
    """The standard diffusers loop; the net gets EpsObjective's c_noise for the timestep's sigma."""
    scheduler = make_scheduler()
    scheduler.set_timesteps(steps)
    log_sigma = 0.5 * torch.log((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod)
    sample, nfe = noise * scheduler.init_noise_sigma, 0
    seeded = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": torch.Generator().manual_seed(0)} if seeded else {}
    for t in scheduler.timesteps:
        c_noise = (log_sigma[int(t)] / 4).expand(sample.shape[0])  # EpsObjective: ln(sigma) / 4
        eps = net(scheduler.scale_model_input(sample, t), c_noise)
        nfe += 1
        sample = scheduler.step(eps, t, sample, **extra).prev_sample
    return nfe


def network_time(net: torch.nn.Module, x: torch.Tensor, calls: int = 20) -> float:
    """The fastest of `calls` single network calls, in seconds (after a warm-up call)."""
    c_noise = torch.zeros(x.shape[0])
    net(x, c_noise)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        net(x, c_noise)
        times.append(time.perf_counter() - start)
    return min(times)


def best_time(fn, repeats: int) -> tuple[float, int]:
    times, nfe = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        nfe = fn()
        times.append(time.perf_counter() - start)
    return min(times), nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", default="unet_small", help="a conf/net option, or 'overhead'")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplers", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    args = parser.parse_args()
    torch.manual_seed(0)
    net = build_net(args.net, args.image_size).eval()
    noise = torch.randn(args.batch, 1, args.image_size, args.image_size)
    with torch.inference_mode():
        per_call = network_time(net, noise)
        print(f"{args.net}, batch {args.batch}, {args.image_size}x{args.image_size}x1, "
              f"{args.steps} steps; the network alone: {per_call * 1e3:.2f} ms per call")  # fmt: skip
        print(f"{'sampler':16} {'NFE ours/theirs':>16} {'img/s ours':>11} {'img/s diffusers':>16} "
              f"{'overhead/step ours':>19} {'diffusers':>10}")  # fmt: skip
        for name in args.samplers:
            solver, make_scheduler, spacing = PAIRS[name]
            ours, nfe = best_time(
                partial(run_ours, net, solver, spacing, args.steps, noise), args.repeats
            )
            theirs, nfe_d = best_time(
                partial(run_diffusers, net, make_scheduler, args.steps, noise), args.repeats
            )
            over = [(t - n * per_call) / n * 1e3 for t, n in ((ours, nfe), (theirs, nfe_d))]
            print(f"{name:16} {f'{nfe}/{nfe_d}':>16} {args.batch / ours:11.1f} {args.batch / theirs:16.1f} "
                  f"{over[0]:16.2f} ms {over[1]:7.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
