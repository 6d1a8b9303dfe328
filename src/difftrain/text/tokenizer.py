"""`WordTokenizer`: a word-level vocabulary built from training captions, kept in the config."""

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
