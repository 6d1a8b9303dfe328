"""Captions to token rows (B, L): `WordTokenizer` (a word-level vocabulary built from the training
captions, kept in the config; text_encoder=tiny) or `TextTokenizer` (the text itself, for a text
encoder with its own tokenizer: CLIP reads any prompt). `make_tokenizer` picks one by name."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

PAD, UNKNOWN = 0, 1  # token ids; words start at 2. An all-PAD row is the empty caption.
SPECIALS = ("<pad>", "<unk>")


def words(text: str) -> list[str]:
    """Lower-case words of `text` in any script (letters, digits and apostrophes), punctuation
    dropped: "Sévén, 七!" -> ["sévén", "七"]."""
    return re.findall(r"[\w']+", text.lower())


def build_vocab(captions: Iterable[str]) -> list[str]:
    """The sorted words of `captions`: a tokenizer's vocabulary."""
    return sorted({w for caption in captions for w in words(caption)})


class WordTokenizer:
    """Captions to fixed-length rows of token ids (B, max_length), padded with PAD.

    The vocabulary is a list of words (e.g. `build_vocab` of the training captions), part of the
    run's config and so of its checkpoints. A word outside it is an error that names it: a prompt
    the model never saw a word of would be silently wrong.
    """

    def __init__(self, vocab: Sequence[str], max_length: int = 16):
        if not vocab:
            raise ValueError("a tokenizer needs a vocabulary of at least one word")
        self.vocab, self.max_length = list(vocab), max_length
        self.ids = {w: i + len(SPECIALS) for i, w in enumerate(self.vocab)}

    @property
    def size(self) -> int:
        """Token ids are in [0, size)."""
        return len(self.vocab) + len(SPECIALS)

    def encode(self, captions: Sequence[str], truncate: bool = False) -> Tensor:
        """Token rows (B, max_length); `truncate` cuts longer captions (training data) where
        prompts are refused."""
        rows = torch.full((len(captions), self.max_length), PAD, dtype=torch.long)
        for r, caption in enumerate(captions):
            tokens = words(caption)
            if truncate:
                tokens = tokens[: self.max_length]
            if unknown := sorted({w for w in tokens if w not in self.ids}):
                raise ValueError(
                    f"prompt {caption!r} has words the model was not trained on: {unknown}. "
                    f"Its vocabulary: {' '.join(self.vocab)}"
                )
            if len(tokens) > self.max_length:
                raise ValueError(
                    f"prompt {caption!r} has {len(tokens)} words; the model reads at most "
                    f"{self.max_length}"
                )
            rows[r, : len(tokens)] = torch.tensor([self.ids[w] for w in tokens], dtype=torch.long)
        return rows

    def decode(self, rows: Tensor) -> list[str]:
        names = [*SPECIALS, *self.vocab]
        return [" ".join(names[i] for i in row.tolist() if i != PAD) for row in rows]


TEXT_BYTES = 320  # the bytes of a TextTokenizer row: more than CLIP's 77 tokens of English take


class TextTokenizer:
    """Captions as their UTF-8 bytes, each plus one, padded with PAD (B, TEXT_BYTES): any prompt
    in any script. For a text encoder with its own tokenizer (CLIP), which reads the text back
    (`decode`); its cached states are thus keyed by the text. The empty caption is all PAD."""

    vocab = None  # no vocabulary: every text is readable
    size = 257  # token ids are in [0, 257): PAD and the 256 byte values plus one

    def __init__(self, max_length: int = TEXT_BYTES):
        self.max_length = max_length

    def encode(self, captions: Sequence[str], truncate: bool = False) -> Tensor:
        """Token rows (B, max_length); `truncate` cuts longer captions (training data), at a
        character's boundary, where prompts are refused."""
        rows = torch.full((len(captions), self.max_length), PAD, dtype=torch.long)
        for r, caption in enumerate(captions):
            data = " ".join(caption.split()).encode("utf-8")
            if len(data) > self.max_length:
                if not truncate:
                    raise ValueError(
                        f"prompt {caption!r} has {len(data)} bytes of text; the model reads "
                        f"at most {self.max_length}: shorten it"
                    )
                data = data[: self.max_length].decode("utf-8", errors="ignore").encode("utf-8")
            rows[r, : len(data)] = torch.tensor(list(data), dtype=torch.long) + 1
        return rows

    def decode(self, rows: Tensor) -> list[str]:
        return [
            bytes((row[row != PAD] - 1).tolist()).decode("utf-8", errors="replace") for row in rows
        ]


def make_tokenizer(
    kind: str, vocab: Sequence[str] | None, max_length: int
) -> WordTokenizer | TextTokenizer:
    """The tokenizer a text encoder reads rows of: "words" (`WordTokenizer` over `vocab`, rows
    of `max_length` words) or "text" (`TextTokenizer`: any text, for CLIP)."""
    if kind == "words":
        return WordTokenizer(vocab or [], max_length)
    if kind == "text":
        return TextTokenizer()
    raise ValueError(f"unknown tokenizer {kind!r}: use words (text_encoder=tiny) or text (clip)")
