"""difftrain-export: a trained run as a diffusers pipeline folder.

    difftrain-export ckpt=<run dir>/checkpoints/last.ckpt out=DIR

DIR then holds model_index.json, the EMA UNet, a scheduler config of the run's schedule and
objective, and the VAE, text encoder and tokenizer (`runs.export`), which
`DiffusionPipeline.from_pretrained(DIR)` loads and samples with, offline; for difftrain's own
nets, a `DifftrainPipeline` (`DifftrainPipeline.from_pretrained(DIR)`); for a LoRA run, the EMA
adapters in diffusers' format, which `pipeline.load_lora_weights(DIR)` loads.
"""

from __future__ import annotations

import sys

from difftrain.errors import ConfigError
from difftrain.runs.export import export

USAGE = "usage: difftrain-export ckpt=PATH out=DIR"


def main(argv: list[str] | None = None) -> None:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv) if "=" in a)
    if "ckpt" not in args or "out" not in args:
        raise SystemExit(USAGE)
    try:
        out = export(args["ckpt"], args["out"])
    except (FileNotFoundError, ValueError, ConfigError) as e:
        raise SystemExit(f"Error: {e}") from None  # a checkpoint it cannot export: no traceback
    if (out / "model_index.json").is_file():
        print(f"wrote a diffusers pipeline: {out} (DiffusionPipeline.from_pretrained('{out}'))")
    else:
        print(f"wrote LoRA adapters: {out} (pipeline.load_lora_weights('{out}'))")


if __name__ == "__main__":
    main()
