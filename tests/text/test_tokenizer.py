"""Word tokenizer and the tiny text encoder: ids, errors that name the problem, the empty caption."""

from __future__ import annotations

import pytest
import torch

from difftrain.text.encoders import TinyTextEncoder
from difftrain.text.tokenizer import PAD, TextTokenizer, WordTokenizer, build_vocab, make_tokenizer

VOCAB = build_vocab(["a red seven", "a blue three, top left"])


def test_captions_round_trip_through_ids():
    tokenizer = WordTokenizer(VOCAB, max_length=6)
    rows = tokenizer.encode(["A red seven.", "a blue three, top left", ""])
    assert rows.shape == (3, 6) and rows.dtype == torch.long
    assert tokenizer.decode(rows) == ["a red seven", "a blue three top left", ""]
    assert (rows[2] == PAD).all()  # the empty caption is all padding


def test_unknown_words_and_long_prompts_are_named():
    tokenizer = WordTokenizer(VOCAB, max_length=4)
    with pytest.raises(
        ValueError, match=r"not trained on: \['green', 'nine'\]\. Its vocabulary: a blue"
    ):
        tokenizer.encode(["a green nine"])
    with pytest.raises(ValueError, match="has 5 words; the model reads at most 4"):
        tokenizer.encode(["a blue three top left"])
    with pytest.raises(ValueError, match=r"not trained on: \['sévén', '七'\]"):  # as written
        tokenizer.encode(["a sévén 七"])


def test_the_encoder_reads_words_and_gives_the_empty_caption_one_state():
    torch.manual_seed(0)
    encoder = TinyTextEncoder(VOCAB, max_length=6, dim=16, depth=1, heads=2)
    torch.nn.init.normal_(encoder.empty)
    rows = encoder.tokenizer.encode(["a red seven", "a blue three", "", ""])
    states, mask = encoder(rows)
    assert states.shape == (4, 6, 16) and mask.tolist()[0] == [True] * 3 + [False] * 3
    assert not torch.allclose(states[0, :3], states[1, :3])  # the words matter
    assert torch.equal(states[2], states[3]) and torch.equal(states[2, 0], encoder.empty)
    assert mask[2].tolist() == [True] + [False] * 5  # "no prompt" is one learned state


def test_text_rows_carry_any_prompt_and_long_ones_are_cut_or_refused():
    tokenizer = TextTokenizer(max_length=12)
    rows = tokenizer.encode(["a  purple  zebra", "", "sévén 七"][1:])
    assert rows.shape == (2, 12) and (rows[0] == PAD).all()  # "" is the empty caption
    assert tokenizer.decode(rows) == ["", "sévén 七"]
    assert tokenizer.decode(tokenizer.encode([" a  red\nox"])) == ["a red ox"]
    with pytest.raises(ValueError, match="has 16 bytes of text; the model reads at most 12"):
        tokenizer.encode(["a purple zebra 1"])
    cut = TextTokenizer(max_length=10).encode(["sévén sévén"], truncate=True)  # byte 10: in é
    assert tokenizer.decode(cut) == ["sévén s"]
    assert isinstance(make_tokenizer("text", None, 4), TextTokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe': use words"):
        make_tokenizer("bpe", VOCAB, 4)
