"""caption_folder: images with same-named .txt captions; bad files and missing captions skipped."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from difftrain.data.captioned import caption_folder, folder_vocab
from tests.conftest import FAST, compose_cfg


def write_folder(root, n=8):
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a photo of {'red' if i % 2 else 'blue'} noise\n")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "uncaptioned.png")
    (root / "empty.png").write_bytes(b"")
    (root / "empty.txt").write_text("an empty file")
    return root


def test_captions_pair_with_images_and_bad_files_are_skipped(tmp_path, caplog):
    root = write_folder(tmp_path)
    vocab = folder_vocab(str(root))
    assert vocab == ["a", "an", "blue", "empty", "file", "noise", "of", "photo", "red"]
    with caplog.at_level(logging.WARNING):
        train = caption_folder("train", str(root), 16, vocab, val_fraction=0.25)
        val = caption_folder("val", str(root), 16, vocab, val_fraction=0.25)
    assert len(train) + len(val) == 8  # not the empty image, not the uncaptioned one
    assert "skipping 1 image(s) without a .txt caption" in caplog.text
    assert "skipping 1 unreadable file(s)" in caplog.text
    x, tokens = train[0]
    assert x.shape == (3, 16, 16) and tokens.shape == (32,) and (tokens[:4] > 1).all()
    assert all(c.startswith("a photo of") for c in train.captions + val.captions)
    cut = caption_folder("train", str(root), 16, vocab, max_length=2, val_fraction=0.25)
    assert (cut.labels > 1).all()  # long captions are cut to max_length words


def test_a_text_run_trains_on_a_caption_folder(tmp_path):
    from difftrain.cli.train import train

    (tmp_path / "folder").mkdir()
    root = write_folder(tmp_path / "folder")
    overrides = [o for o in FAST if not o.startswith(("callbacks.evaluate", "evaluator."))]
    cfg = compose_cfg(
        tmp_path, *overrides, "data=caption_folder", f"data.dataset.root={root}",
        "data.image_size=16", "data.num_workers=0", "data.dataset.val_fraction=0.25",
        "text_encoder=tiny", "net.cross_attn_resolutions=[8]", "net.channel_mult=[1,2]",
        "callbacks.evaluate=null", "logger=none", "data.batch_size=4", "data.val_batch_size=4",
    )  # fmt: skip
    train(cfg)
    grid_prompts = tmp_path / "run" / "samples" / "step_0000004.txt"
    assert grid_prompts.read_text().startswith("a photo of")
