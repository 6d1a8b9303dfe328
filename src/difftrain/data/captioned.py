"""captioned_digits: handwritten digits drawn in colour on colour, with a caption for each image.

Each image is a digit glyph (MNIST where it is on disk, else scikit-learn's bundled digits)
resized to a size, placed at a position of a 32x32 RGB canvas, in a foreground colour on a
background colour. Its caption says all of it, e.g. "a small red seven on a dark blue background,
top left". Attribute combinations listed in `held_out` (e.g. "digit=7,foreground=red") never
appear in training: prompting them measures compositional generalization.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from difftrain.data.datasets import (
    SPLITS,
    ImageFolder,
    TensorImages,
    _image_files,
    _resize_uint8,
    _split_indices,
    digits,
    scan_image_folder,
)
from difftrain.errors import ConfigError
from difftrain.text.tokenizer import build_vocab, make_tokenizer

log = logging.getLogger(__name__)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FOREGROUNDS = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
    "white": (245, 245, 245), "magenta": (220, 50, 220),
}  # fmt: skip
COLOURS = {**FOREGROUNDS, "orange": (250, 140, 20)}  # what a palette may name (foregrounds=)
BACKGROUNDS = {
    "black": (10, 10, 10), "dark blue": (20, 30, 110), "dark green": (20, 80, 30),
    "gray": (120, 120, 120),
}  # fmt: skip
SIZES = {"small": 16, "large": 26}  # glyph side in pixels, on the 32x32 canvas
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
ATTRIBUTES = ("digit", "foreground", "background", "size", "position")
CHOICES = {
    "digit": DIGITS, "foreground": tuple(FOREGROUNDS), "background": tuple(BACKGROUNDS),
    "size": tuple(SIZES), "position": POSITIONS,
}  # fmt: skip
CANVAS = 32


@dataclass(frozen=True)
class CaptionSchema:
    """What a captioned dataset's captions say: its attributes, each one's choices (words), and
    the caption's template (`str.format` over the attribute names). A row of attributes is one
    index into each attribute's choices; `held_out` combinations are written "digit=7,colour=red"
    (digits by number or word). `featured`: the attributes whose judges' features give the
    alignment FID (empty: all)."""

    choices: dict[str, tuple[str, ...]]
    template: str
    featured: tuple[str, ...] = ()

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.choices)

    def caption(self, row: Sequence[int]) -> str:
        return self.template.format(
            **{a: self.choices[a][int(i)] for a, i in zip(self.attributes, row, strict=True)}
        )

    def captions(self, rows: Tensor) -> list[str]:
        return [self.caption(row) for row in rows.tolist()]

    def vocab(self) -> list[str]:
        """Every word a caption can have: the tiny text encoder's vocabulary."""
        every = itertools.product(*(range(len(c)) for c in self.choices.values()))
        return build_vocab(self.caption(row) for row in every)

    def parse_held_out(self, held_out: Sequence[str]) -> list[dict[str, int]]:
        """'digit=7,foreground=red' -> {'digit': 7, 'foreground': 0}."""
        combos = []
        for text in held_out:
            combo = {}
            for part in text.split(","):
                key, _, value = (s.strip() for s in part.partition("="))
                if key not in self.choices:
                    raise ValueError(
                        f"held_out {text!r}: unknown attribute {key!r}; use {self.attributes}"
                    )
                names = self.choices[key]
                if key == "digit" and value.isdigit():
                    value = DIGITS[int(value)]
                if value not in names:
                    raise ValueError(f"held_out {text!r}: {key} must be one of {list(names)}")
                combo[key] = names.index(value)
            combos.append(combo)
        return combos

    def is_held_out(self, rows: Tensor, combos: Sequence[dict[str, int]]) -> Tensor:
        """(N,) whether each row of attributes (N, A) matches any held-out combination."""
        out = torch.zeros(len(rows), dtype=torch.bool)
        for combo in combos:
            match = torch.ones(len(rows), dtype=torch.bool)
            for key, value in combo.items():
                match &= rows[:, self.attributes.index(key)] == value
            out |= match
        return out


DIGIT_CAPTIONS = CaptionSchema(
    CHOICES,
    "a {size} {foreground} {digit} on a {background} background, {position}",
    featured=("digit", "foreground", "background"),  # the FID's features: not size, position
)


@dataclass(frozen=True)
class Attributes:
    """One captioned_digits image's attributes, as indices into CHOICES."""

    digit: int
    foreground: int
    background: int
    size: int
    position: int

    def caption(self) -> str:
        return DIGIT_CAPTIONS.caption([getattr(self, a) for a in ATTRIBUTES])


def digit_captions(foregrounds: Sequence[str] | None = None) -> CaptionSchema:
    """captioned_digits' captions with the foreground colours `foregrounds` (names in COLOURS,
    e.g. a palette with orange, or orange alone); None: the six of FOREGROUNDS."""
    if not foregrounds:
        return DIGIT_CAPTIONS
    if unknown := [c for c in foregrounds if c not in COLOURS]:
        raise ValueError(
            f"data.dataset.foregrounds: unknown colours {unknown}; use some of {list(COLOURS)}"
        )
    choices = {**CHOICES, "foreground": tuple(foregrounds)}
    return CaptionSchema(choices, DIGIT_CAPTIONS.template, DIGIT_CAPTIONS.featured)


def caption_vocab() -> list[str]:
    """Every word a captioned_digits caption can have: the tiny text encoder's vocabulary."""
    return DIGIT_CAPTIONS.vocab()


def parse_held_out(held_out: list[str]) -> list[dict[str, int]]:
    """'digit=7,foreground=red' -> {'digit': 7, 'foreground': 0}; digits by number or word."""
    return DIGIT_CAPTIONS.parse_held_out(held_out)


def is_held_out(attributes: Tensor, combos: list[dict[str, int]]) -> Tensor:
    """(N,) whether each row of attributes (N, 5) matches any held-out combination."""
    return DIGIT_CAPTIONS.is_held_out(attributes, combos)


def render(
    glyphs: Tensor, attributes: Tensor, foregrounds: Sequence[str] = tuple(FOREGROUNDS)
) -> Tensor:
    """uint8 RGB images (N, 3, 32, 32) of grey glyphs (N, 1, h, w) with attributes (N, 5), the
    foreground an index into `foregrounds`."""
    n = len(glyphs)
    palette = [COLOURS[c] for c in foregrounds]
    fg = torch.tensor(palette, dtype=torch.float32)[attributes[:, 1]]
    bg = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32)[attributes[:, 2]]
    alpha = torch.zeros(n, 1, CANVAS, CANVAS)
    for s, side in enumerate(SIZES.values()):
        chosen = attributes[:, 3] == s
        if not chosen.any():
            continue
        small = _resize_uint8(glyphs[chosen], side).float() / 255
        margin = CANVAS - side
        offsets = {  # (top, left) of each position
            "top left": (0, 0), "top right": (0, margin), "bottom left": (margin, 0),
            "bottom right": (margin, margin), "center": (margin // 2, margin // 2),
        }  # fmt: skip
        for i, (k, pos) in enumerate(
            zip(chosen.nonzero()[:, 0].tolist(), attributes[chosen, 4].tolist(), strict=True)
        ):
            top, left = offsets[POSITIONS[pos]]
            alpha[k, :, top : top + side, left : left + side] = small[i]
    image = bg[:, :, None, None] * (1 - alpha) + fg[:, :, None, None] * alpha
    return image.round().clamp(0, 255).to(torch.uint8)


class CaptionedImages(TensorImages):
    """uint8 RGB images (or clips: moving_digits_text) with their captions' token rows (N, L) as
    labels, their captions, their attribute rows (N, A) as `schema` names them and the held-out
    combinations, for the alignment evaluation."""

    def __init__(
        self,
        images: Tensor,
        tokens: Tensor,
        captions: list[str],
        attributes: Tensor,
        held_out: list[dict[str, int]] | None = None,
        schema: CaptionSchema = DIGIT_CAPTIONS,
    ):
        super().__init__(images, tokens)
        self.captions, self.attributes, self.held_out = captions, attributes, held_out or []
        self.schema = schema

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i].float() / 255, self.labels[i]


def load_glyphs(split: str, root: str | None) -> tuple[Tensor, Tensor]:
    """Grey glyphs (N, 1, h, w) uint8 and digit labels: MNIST under root when there, else
    scikit-learn's digits."""
    if root:
        try:
            from difftrain.data.datasets import mnist

            ds = mnist(split, root, image_size=28)
            return ds.images, ds.labels
        except ConfigError:  # not found or incomplete there
            log.warning("MNIST is not under %s: the glyphs are scikit-learn's digits", root)
    ds = digits(split, image_size=16)
    return ds.images, ds.labels


def captioned_digits(
    split: str,
    root: str | None = None,
    copies: int = 4,
    held_out: list[str] | tuple[str, ...] = (),
    vocab: list[str] | None = None,
    max_length: int = 16,
    tokenizer: str = "words",
    seed: int = 0,
    max_glyphs: int | None = None,
    foregrounds: Sequence[str] | None = None,
) -> CaptionedImages:
    """`copies` images per glyph of the split, each with attributes drawn at random (seeded by
    split), none of them a `held_out` combination in "train" (all of them are kept in "val").
    `foregrounds` names the colours digits are drawn in (`digit_captions`; default the six)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    glyphs, labels = load_glyphs(split, root)
    if max_glyphs is not None:
        glyphs, labels = glyphs[:max_glyphs], labels[:max_glyphs]
    generator = torch.Generator().manual_seed(seed * 2 + SPLITS.index(split))
    glyphs, digit = glyphs.repeat(copies, 1, 1, 1), labels.repeat(copies)
    n = len(glyphs)
    schema = digit_captions(foregrounds)
    draws = [
        torch.randint(len(schema.choices[a]), (n,), generator=generator) for a in ATTRIBUTES[1:]
    ]
    attributes = torch.stack([digit, *draws], dim=1)
    combos = schema.parse_held_out(list(held_out))
    if split == "train" and combos:
        keep = ~schema.is_held_out(attributes, combos)
        glyphs, attributes = glyphs[keep], attributes[keep]
    captions = schema.captions(attributes)
    tokens = make_tokenizer(tokenizer, vocab or schema.vocab(), max_length).encode(captions)
    images = render(glyphs, attributes, schema.choices["foreground"])
    return CaptionedImages(images, tokens, captions, attributes, combos, schema)


def _caption_file(image: Path) -> Path:
    return image.with_suffix(".txt")


def folder_vocab(root: str) -> list[str]:
    """Every word of the `.txt` captions beside the images under root (empty: no folder yet)."""
    base = Path(root)
    if not base.is_dir():
        return []
    files = [_caption_file(p) for p in _image_files(base)]
    return build_vocab(f.read_text(errors="replace") for f in files if f.is_file())


class CaptionFolder(Dataset):
    """Images of an `ImageFolder` with their captions' token rows as labels (and `captions`)."""

    def __init__(self, images: ImageFolder, captions: list[str], tokens: Tensor):
        self.images_of, self.captions, self.labels = images, captions, tokens

    def __len__(self) -> int:
        return len(self.images_of)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images_of[i][0], self.labels[i]


def caption_folder(
    split: str,
    root: str,
    image_size: int,
    vocab: list[str],
    channels: int = 3,
    max_length: int = 32,
    tokenizer: str = "words",
    val_fraction: float = 0.05,
    seed: int = 0,
) -> CaptionFolder:
    """Images under root with same-named `.txt` captions (a.png + a.txt), the common fine-tuning
    layout: unreadable images are skipped up front as for image_folder, and so are images without
    a caption (one warning with the count); captions longer than max_length words are cut."""
    files, _, _ = scan_image_folder(str(Path(root).resolve()))
    captioned = [p for p in files if _caption_file(p).is_file()]
    if missing := len(files) - len(captioned):
        log.warning(
            "caption folder %s: skipping %d image(s) without a .txt caption of %d, e.g. %s",
            root, missing, len(files), next(p for p in files if not _caption_file(p).is_file()),
        )  # fmt: skip
    if len(captioned) < 2:
        raise FileNotFoundError(
            f"found {len(captioned)} images with a caption under {Path(root).resolve()}: put each "
            "image's caption in a .txt file of the same name (a.png + a.txt)"
        )
    idx = _split_indices(len(captioned), split, val_fraction, seed).tolist()
    chosen = [captioned[i] for i in idx]
    captions = [" ".join(_caption_file(p).read_text(errors="replace").split()) for p in chosen]
    tokens = make_tokenizer(tokenizer, vocab, max_length).encode(captions, truncate=True)
    images = ImageFolder(chosen, [0] * len(chosen), image_size, channels)
    return CaptionFolder(images, captions, tokens)
