"""Peak training memory and clips/s of a space-time UNet at T = 8, 16 and 32 frames, with and
without activation checkpointing.

    python benchmarks/video_memory.py                                   # unet3d_small, batch 8, 1x32x32
    python benchmarks/video_memory.py --net unet3d_tiny --frames 4 8 --batch-size 2 --image-size 16

Each setting runs in a fresh process (`activation_memory.py --frames T`): the peak is
torch.cuda.max_memory_allocated on a GPU, the growth of peak resident memory on the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ONE_SETTING = Path(__file__).with_name("activation_memory.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="unet3d_small")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    rows = []
    for frames in args.frames:
        for setting in ("off", "on"):
            command = [sys.executable, str(ONE_SETTING), "--net", args.net, "--batch-size",
                       str(args.batch_size), "--channels", str(args.channels), "--image-size",
                       str(args.image_size), "--frames", str(frames), "--one", setting]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append((frames, setting, json.loads(out.strip().splitlines()[-1])))
    device = rows[0][2]["device"]
    what = "peak allocated" if device == "cuda" else "peak RSS growth"
    print(f"{args.net}, batch {args.batch_size}, {args.channels}x{args.image_size}x{args.image_size} "
          f"frames on {device}: {what} of a training step")  # fmt: skip
    print(f"{'frames':>6} {'checkpointing':>13} {'MiB':>9} {'ms/step':>9} {'clips/s':>9}")
    for frames, setting, r in rows:
        clips_per_s = args.batch_size / r["seconds"]
        print(
            f"{frames:>6} {setting:>13} {r['peak_mib']:9.0f} {r['seconds'] * 1e3:9.0f} {clips_per_s:9.1f}"
        )


if __name__ == "__main__":
    main()
