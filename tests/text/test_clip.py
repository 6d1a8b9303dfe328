"""text_encoder=clip: transformers' CLIP text model, frozen, with its states read once and cached.

Nothing is downloaded: the model is a randomly initialized tiny CLIPTextConfig with a character-
level CLIP tokenizer, saved as save_pretrained writes a real one.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from difftrain.text.clip import ClipTextEncoder  # noqa: E402
from difftrain.text.tokenizer import PAD, TextTokenizer, WordTokenizer, build_vocab  # noqa: E402
from difftrain.training.ema import EMA, WarmupDecay  # noqa: E402

CAPTIONS = ["a red seven on a blue background", "a small green two", "a large white nine"]


def encoder(clip_dir, cache_dir=None) -> ClipTextEncoder:
    return ClipTextEncoder(build_vocab(CAPTIONS), str(clip_dir), max_length=8, cache_dir=cache_dir)


def rows() -> torch.Tensor:
    return WordTokenizer(build_vocab(CAPTIONS), 8).encode(CAPTIONS)


def test_it_reads_the_words_of_each_row_and_the_empty_caption_as_empty(clip_dir):
    clip = encoder(clip_dir)
    states, mask = clip(rows())
    assert states.shape == (3, 40, 32) and mask.shape == (3, 40)  # clip_max_length: the model's
    empty, empty_mask = clip(torch.full((1, 8), PAD))
    alone, _ = clip.read(rows()[:1])
    expected, _ = clip.read(WordTokenizer(clip.tokenizer.vocab, 8).encode([CAPTIONS[0]]))
    torch.testing.assert_close(alone, expected)
    assert (
        empty_mask[0].sum() == 2
    )  # "" is <start><end>, as CLIP reads Stable Diffusion's null prompt
    assert not any(p.requires_grad for p in clip.parameters())


def test_the_table_gives_what_clip_reads_and_new_prompts_are_read(clip_dir, tmp_path):
    clip = encoder(clip_dir, cache_dir=tmp_path)
    clip.precompute(rows()[:2])
    (cached,) = tmp_path.glob("clip-*.pt")
    direct, direct_mask = clip.read(rows())
    clip.train()
    states, mask = clip(rows()[:2])  # training: table lookups only
    torch.testing.assert_close(states, direct[:2])
    assert torch.equal(mask, direct_mask[:2])
    clip.eval()
    states, mask = clip(rows())  # the third caption was not tabled: read
    torch.testing.assert_close(states, direct)

    again = encoder(clip_dir, cache_dir=tmp_path)  # the same model and captions: from the file
    again.read = lambda tokens: pytest.fail("a cached caption was read again")
    again.precompute(rows()[:2])
    torch.testing.assert_close(again.train()(rows()[:2])[0], direct[:2])
    assert list(tmp_path.glob("clip-*.pt")) == [cached]


def test_it_reads_any_prompt_as_clip_reads_its_text(clip_dir, tmp_path):
    """tokenizer=text (the config's): words outside the captions are read, by CLIP's own
    tokenizer, and a tabled caption's states are those of its text."""
    clip = ClipTextEncoder(
        build_vocab(CAPTIONS), str(clip_dir), cache_dir=str(tmp_path), tokenizer="text"
    )
    assert isinstance(clip.tokenizer, TextTokenizer)
    clip.precompute(clip.tokenizer.encode(CAPTIONS))
    prompts = ["a purple zebra's 8 stripes", CAPTIONS[1], ""]  # unseen words; tabled; empty
    states, mask = clip.eval()(clip.tokenizer.encode(prompts))
    ids = clip.clip_tokenizer(prompts, padding="max_length", max_length=40, return_tensors="pt")
    expected = clip.model(input_ids=ids["input_ids"]).last_hidden_state
    torch.testing.assert_close(states, expected)
    assert mask.sum(1).tolist() == ids["attention_mask"].sum(1).tolist()
    assert mask[0].sum() == len("apurplezebra's8stripes") + 2  # characters, start and end
    assert not torch.allclose(states[0], states[2])


def test_a_missing_model_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder.path=<a folder"):
        ClipTextEncoder(["red"], str(tmp_path / "nothing"))


def test_the_ema_leaves_the_frozen_encoder_alone(clip_dir):
    net = torch.nn.ModuleDict({"clip": encoder(clip_dir), "head": torch.nn.Linear(2, 2)})
    ema = EMA(net, WarmupDecay(0.5))
    ema.update(net)  # a copy
    first = net["head"].weight.detach().clone()
    next(ema.module["clip"].parameters()).data.zero_()
    net["head"].weight.data += 1
    ema.update(net)
    assert next(ema.module["clip"].parameters()).abs().sum() == 0  # not averaged: left as it was
    assert next(net["clip"].parameters()).abs().sum() > 0
    weight = 1 - WarmupDecay(0.5)(1)
    torch.testing.assert_close(ema.module["head"].weight, first + weight)


def test_a_captioned_run_with_clip_trains_caches_and_draws_prompts(clip_dir, tmp_path):
    """The Stable Diffusion shape in pixel space at tiny size: frozen CLIP, cross-attention."""
    from difftrain.cli.train import train
    from difftrain.runs.pretrained import load_trained
    from tests.conftest import TEXT, compose_cfg

    cache = tmp_path / "cache"
    cfg = compose_cfg(
        tmp_path, *TEXT, "text_encoder=clip", f"text_encoder.path={clip_dir}",
        "callbacks.alignment=null",
    )  # fmt: skip
    cfg.text_encoder.cache_dir = str(cache)
    train(cfg)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
    assert len(list(cache.glob("clip-*.pt"))) == 1
    model = load_trained(tmp_path / "run" / "checkpoints" / "last.ckpt")
    net = model.diffusion.denoiser.net
    assert isinstance(net.text_encoder, ClipTextEncoder) and net.text_encoder.dim == 32
    assert isinstance(net.tokenizer, TextTokenizer)  # the data's rows carry the captions' text
    images, _ = model.diffusion.generate(2, prompts=["a red seven"], guidance=2.0)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    unseen = ["an orange zebra", "a red seven"]  # words outside every training caption
    other, _ = model.diffusion.generate(2, prompts=unseen, guidance=2.0)
    assert not torch.allclose(other[0], images[0]) and torch.allclose(other[1], images[1])


def test_clip_score_is_logged_where_a_clip_model_exists(clip_dir, tmp_path):
    """callbacks.alignment.clip_score_model: torchmetrics' CLIPScore with a random tiny CLIP."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )  # fmt: skip

    from difftrain.cli.train import train
    from tests.conftest import TEXT, compose_cfg

    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 128, "vocab_size": 80,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip
    folder = tmp_path / "clip-full"
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer.from_pretrained(clip_dir),
    )  # fmt: skip
    processor.save_pretrained(folder)
    cfg = compose_cfg(tmp_path, *TEXT, f"callbacks.alignment.clip_score_model={folder}")
    train(cfg)
    alignment = json.loads((tmp_path / "run" / "summary.json").read_text())["alignment"]
    assert -100 <= alignment["clip_score"] <= 100 and alignment["fid"] >= 0
