"""captioned_digits: captions say what is drawn, held-out combinations stay out of training."""

from __future__ import annotations

import pytest
import torch

from difftrain.data.captioned import (
    ATTRIBUTES,
    BACKGROUNDS,
    CHOICES,
    COLOURS,
    FOREGROUNDS,
    Attributes,
    caption_vocab,
    captioned_digits,
    is_held_out,
    parse_held_out,
)
from difftrain.text.tokenizer import WordTokenizer

HELD_OUT = ["digit=7,foreground=red", "background=dark green,size=small"]


@pytest.fixture(scope="module")
def splits():
    return {s: captioned_digits(s, held_out=HELD_OUT, max_glyphs=400) for s in ("train", "val")}


def test_captions_tokens_and_attributes_agree(splits):
    ds = splits["train"]
    assert ds.images.shape[1:] == (3, 32, 32) and ds.images.dtype == torch.uint8
    tokenizer = WordTokenizer(caption_vocab(), 16)
    for i in (0, 1, 2, len(ds) - 1):
        caption = Attributes(*ds.attributes[i].tolist()).caption()
        assert ds.captions[i] == caption
        assert tokenizer.decode(ds.labels[i : i + 1]) == [caption.replace(",", "")]


def test_each_image_is_drawn_in_its_colours(splits):
    """Every pixel is the background, the foreground or a blend of the two, and the strokes
    reach (nearly) the foreground."""
    ds = splits["train"]
    for i in range(20):
        fg = torch.tensor(list(FOREGROUNDS.values())[ds.attributes[i, 1]]).float()
        bg = torch.tensor(list(BACKGROUNDS.values())[ds.attributes[i, 2]]).float()
        pixels = ds.images[i].reshape(3, -1).T.float()
        alpha = ((pixels - bg) @ (fg - bg)) / (fg - bg).square().sum()
        residual = (pixels - (bg + alpha[:, None] * (fg - bg))).abs().max()
        assert residual < 2 and (alpha == 0).float().mean() > 0.4, ds.captions[i]
        assert alpha.max() > 0.6, ds.captions[i]


def test_held_out_combinations_are_only_in_val(splits):
    combos = parse_held_out(HELD_OUT)
    assert combos == [
        {"digit": 7, "foreground": 0},
        {"background": CHOICES["background"].index("dark green"), "size": 0},
    ]
    assert not is_held_out(splits["train"].attributes, combos).any()
    assert is_held_out(splits["val"].attributes, combos).any()
    assert splits["train"].held_out == combos


def test_bad_held_out_entries_are_named():
    with pytest.raises(ValueError, match=r"unknown attribute 'colour'; use \('digit'"):
        parse_held_out(["colour=red"])
    with pytest.raises(ValueError, match="foreground must be one of"):
        parse_held_out(["foreground=purple"])


def test_the_vocabulary_covers_every_caption():
    vocab = set(caption_vocab())
    assert {"seven", "dark", "blue", "background", "top", "left", "small"} <= vocab
    assert len(ATTRIBUTES) == 5


def test_without_mnist_under_root_the_glyphs_are_scikit_learns_digits(tmp_path, caplog):
    from difftrain.data.captioned import load_glyphs

    images, labels = load_glyphs("train", str(tmp_path / "no_mnist_here"))
    assert images.shape[1:] == (1, 16, 16) and len(images) == len(labels) > 1000
    assert "the glyphs are scikit-learn's digits" in caplog.text


def test_a_palette_draws_other_colours_and_the_default_is_unchanged(splits):
    """data.dataset.foregrounds: orange (a new concept) alone, or seven colours; None draws the
    six exactly as before."""
    again = captioned_digits("train", held_out=HELD_OUT, max_glyphs=400, foregrounds=None)
    assert torch.equal(again.images, splits["train"].images)
    orange = captioned_digits("train", max_glyphs=50, copies=1, foregrounds=["orange"])
    assert len(orange) == 50 and all(" orange " in c for c in orange.captions)
    assert orange.schema.choices["foreground"] == ("orange",)
    fg = torch.tensor(COLOURS["orange"]).float()
    strokes = orange.images[0].reshape(3, -1).T.float()
    assert (strokes - fg).abs().sum(1).min() < 10  # the strokes reach orange
    seven = captioned_digits("val", max_glyphs=200, foregrounds=[*FOREGROUNDS, "orange"])
    assert set(seven.attributes[:, 1].tolist()) == set(range(7))
    with pytest.raises(ValueError, match=r"unknown colours \['teal'\]"):
        captioned_digits("train", max_glyphs=5, foregrounds=["teal"])
