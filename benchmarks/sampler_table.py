"""Samplers x NFE on one checkpoint: quality (classifier FID, recall, class coverage) and images/s.

    python benchmarks/sampler_table.py CKPT [--n 500] [--nfe 5 10 20 50] [--samplers ddim heun ...]
    python benchmarks/sampler_table.py STUDENT --samplers consistency --nfe 1 2 4 \
        --sampler-overrides sampler.sigma_min=1.5     # a consistency model (README, Few-step)

Each sampler gets the step count whose NFE is closest to the target (Heun: 2 steps - 1).
Reference features and the classifier come from the same cache as difftrain-eval.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from difftrain.config import CONFIG_DIR
from difftrain.data.images import save_grid
from difftrain.diffusion.samplers import steps_for
from difftrain.runs.pretrained import load_trained

SAMPLERS = ["ddim", "ddpm", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ckpt")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--nfe", type=int, nargs="*", default=[5, 10, 20, 50])
    parser.add_argument("--samplers", nargs="*", default=SAMPLERS)
    parser.add_argument(
        "--grids", type=Path, default=None, help="write a 64-image grid per row here"
    )
    parser.add_argument(
        "--sampler-overrides",
        nargs="*",
        default=[],
        help="sampler settings for every row (e.g. sampler.sigma_min=1.5)",
    )
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="eval config overrides (e.g. paths.cache_dir=...)",
    )
    args = parser.parse_args()

    model = load_trained(args.ckpt)
    rows = []
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt={args.ckpt}", *args.overrides])
        with open_dict(cfg):
            cfg.data = model.config.data
        evaluator = instantiate(cfg.evaluator)
        evaluator.setup()
        for name in args.samplers:
            for nfe in args.nfe:
                chosen = [f"sampler={name}", *args.sampler_overrides]
                sampler = instantiate(compose("eval", overrides=chosen).sampler)
                steps = steps_for(sampler.solver, nfe)  # Heun evaluates the net twice a step
                sampler = dataclasses.replace(sampler, steps=steps)
                start = time.perf_counter()
                uint8, real_nfe = model.sample(
                    args.n, sampler, seed=0
                )  # classes 0, 1, 2, ... if conditional
                seconds = time.perf_counter() - start
                scores = evaluator(uint8.permute(0, 3, 1, 2))
                if args.grids:
                    save_grid(uint8[:64], args.grids / f"{name}_nfe{real_nfe}.png")
                rows.append((name, steps, real_nfe, scores, args.n / seconds))
                print(
                    f"{name:<16} steps {steps:>3} NFE {real_nfe:>3}  FID {scores['fid']:8.3f}  "
                    f"KID {scores['kid']:.4f}  P {scores['precision']:.3f}  R {scores['recall']:.3f}  "
                    f"entropy {scores['class_entropy']:.3f}  {args.n / seconds:6.1f} img/s",
                    flush=True,
                )
    print(f"\n{args.n} samples each, seed 0, {torch.get_num_threads()} threads; {evaluator.info}")
    print("| sampler | NFE | FID (classifier) | precision | recall | class entropy | images/s |")
    print("|---|---|---|---|---|---|---|")
    for name, _, nfe, s, speed in rows:
        print(
            f"| {name} | {nfe} | {s['fid']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | "
            f"{s['class_entropy']:.3f} | {speed:.1f} |"
        )


if __name__ == "__main__":
    main()
