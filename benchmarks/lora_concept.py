"""Does a LoRA teach a diffusers UNet a concept it never saw, without losing what it knew?

    python benchmarks/lora_concept.py --root ../shared/data               # the whole study
    python benchmarks/lora_concept.py --root ../shared/data --base-minutes 1 --lora-minutes 0.5 \
        --examples 8 --prompts 20 --judge-images 2000 --judge-min-accuracy 0   # a quick try
    python benchmarks/lora_concept.py --root ../shared/data --base <run>/checkpoints/last.ckpt

1. A base model: net=diffusers_unet (a UNet2DConditionModel from scratch) reading prompts with a
   random tiny CLIP (its character-level tokenizer reads any word), trained on captioned_digits
   for --base-minutes. Its six foreground colours do not include orange.
2. Its UNet is saved as a pretrained folder (unet/), and LoRA adapters (lora=attention) are
   trained on it for --lora-minutes on --examples captioned images of orange digits, once with
   DreamBooth's prior preservation (the base model's own images of seen captions, mixed in) and
   once without.
3. A judge that knows orange (captioned_digits' attribute judges, trained on images in seven
   colours) reads each model's guided samples: the share of orange prompts drawn orange, and the
   alignment of seen prompts per attribute, before and after.
"""

from __future__ import annotations

import argparse
import json
import string
import time
from pathlib import Path

import torch

from difftrain.config import CONFIG_DIR

SEVEN = ["red", "green", "blue", "yellow", "white", "magenta", "orange"]


def tiny_clip(folder: Path, width: int = 64, heads: int = 4, max_length: int = 77) -> Path:
    """A random tiny CLIP text model (`width` wide, 2 layers) with a character-level CLIP
    tokenizer, saved as save_pretrained writes a real one (the tests' `clip_dir` is one)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + "'":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
        num_hidden_layers=2, num_attention_heads=heads, max_position_embeddings=max_length,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def compose(out: Path, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides))
    cfg.paths.output_dir = str(out)
    return cfg


def common(root: str, clip: Path, cache: Path) -> list[str]:
    return [
        "experiment=captioned_digits", "net=diffusers_unet", "~net.num_res_blocks",
        "~net.cross_attn_resolutions", "text_encoder=clip", f"text_encoder.path={clip}",
        # cross-attention at 8x8 only: 0.88 s a step of 64 here, against 1.8 s with 16x16 too
        "+net.config.down_block_types=[DownBlock2D,DownBlock2D,CrossAttnDownBlock2D]",
        "+net.config.up_block_types=[CrossAttnUpBlock2D,UpBlock2D,UpBlock2D]",
        f"data.dataset.root={root}", "callbacks.alignment=null", "logger=csv",
        f"paths.cache_dir={cache}", "trainer.max_steps=1000000",
    ]  # fmt: skip


def minutes(m: float) -> str:
    seconds = int(round(m * 60))
    return f"trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}"


def train(cfg) -> tuple[Path, int]:
    from difftrain.cli.train import train as run

    run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return ckpt, torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def judge_and_prompts(root: str, cache: Path, images: int, n: int, min_accuracy: float = 0.9):
    """The seven-colour judge, and prompt rows: n seen (no orange) and n orange."""
    from difftrain.data.captioned import captioned_digits
    from difftrain.evaluation.alignment import AttributeJudge

    train = captioned_digits("train", root, copies=2, foregrounds=SEVEN)
    val = captioned_digits("val", root, copies=1, foregrounds=SEVEN)
    judge = AttributeJudge.load_or_train(train, val, cache, images, 3, min_accuracy)
    schema = train.schema
    generator = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randint(len(c), (4 * n,), generator=generator)
                        for c in schema.choices.values()], dim=1)  # fmt: skip
    fg = schema.attributes.index("foreground")
    seen = rows[rows[:, fg] != SEVEN.index("orange")][:n]
    orange = rows[:n].clone()
    orange[:, fg] = SEVEN.index("orange")
    return judge, schema, seen, orange


def judged(ckpt: Path, judge, schema, rows, guidance: float) -> torch.Tensor:
    """The judge's reading (N, A) of the model's guided samples of rows' captions."""
    from difftrain.runs.pretrained import load_trained

    model = load_trained(ckpt)
    images, _ = model.sample(len(rows), prompts=schema.captions(rows), guidance=guidance)
    return judge.predict(images.permute(0, 3, 1, 2).contiguous())  # (N, H, W, C) -> (N, C, H, W)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="where MNIST is (else scikit-learn's digits)")
    parser.add_argument("--out", default="lora_concept")
    parser.add_argument("--base", default=None, help="a base run's checkpoint (skips step 1)")
    parser.add_argument("--base-minutes", type=float, default=12.0)
    parser.add_argument("--lora-minutes", type=float, default=5.0)
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--judge-images", type=int, default=20000)
    parser.add_argument("--judge-min-accuracy", type=float, default=0.9)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    cache, clip = out / "cache", tiny_clip(out / "clip")
    base_args = common(args.root, clip, cache)

    # 1. The base model (no orange).
    start = time.perf_counter()
    if args.base:
        base, base_steps = Path(args.base), -1
    else:
        base, base_steps = train(compose(out / "base", *base_args, minutes(args.base_minutes)))
    print(f"base: {base_steps} steps in {time.perf_counter() - start:.0f} s ({base})")

    # 2. Its UNet as a pretrained folder; LoRA on orange digits, with and without the prior.
    from difftrain.runs.pretrained import load_trained

    pretrained = out / "pretrained"
    load_trained(base).diffusion.denoiser.net.model.save_pretrained(pretrained / "unet")
    judge, schema, seen, orange = judge_and_prompts(
        args.root, cache, args.judge_images, args.prompts, args.judge_min_accuracy
    )
    lora_args = [*base_args, f"net.path={pretrained}", "net.subfolder=unet", "lora=attention",
                 f"model.lora.rank={args.rank}", f"model.lora.alpha={args.rank}",
                 f"optimizer.lr={args.lora_lr}", "data.dataset.foregrounds=[orange]",
                 f"data.dataset.max_glyphs={args.examples}", "data.dataset.copies=1",
                 "data.dataset.held_out=[]", "data.batch_size=16", "ema.decay=0.99",
                 minutes(args.lora_minutes)]  # fmt: skip
    prior = ["prior=dreambooth", "model.prior_preservation.num_images=200"]
    runs = {"base": (base, base_steps)}
    for name, extra in (("LoRA + prior preservation", prior), ("LoRA alone", [])):
        cfg = compose(out / name.split()[-1], *lora_args, *extra)
        if extra:  # the class images: the base model's own drawings of seen captions
            cfg.model.prior_preservation.class_prompt = schema.captions(seen[:50])
        start = time.perf_counter()
        runs[name] = train(cfg)
        print(f"{name}: {runs[name][1]} steps in {time.perf_counter() - start:.0f} s")

    # 3. Judge them.
    fg = schema.attributes.index("foreground")
    print(f"\n{args.prompts} orange prompts and {args.prompts} seen prompts, guidance "
          f"{args.guidance}; the judge's validation accuracy: "
          + ", ".join(f"{a} {v:.3f}" for a, v in judge.accuracies.items()))  # fmt: skip
    names = schema.attributes
    print(f"{'model':28s} {'steps':>6} {'orange':>7} " + " ".join(f"{a:>10}" for a in names))
    for name, (ckpt, steps) in runs.items():
        drawn = judged(ckpt, judge, schema, orange, args.guidance)[:, fg]
        drawn_orange = (drawn == SEVEN.index("orange")).float().mean()
        correct = (judged(ckpt, judge, schema, seen, args.guidance) == seen).float().mean(0)
        print(f"{name:28s} {steps:>6} {drawn_orange:7.3f} "
              + " ".join(f"{v:10.3f}" for v in correct.tolist()))  # fmt: skip


if __name__ == "__main__":
    main()
