"""`ClipTextEncoder`: transformers' CLIP text model, frozen, as a net's text encoder."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from difftrain.console import Progress
from difftrain.files import filling, load_cached, save_atomically
from difftrain.text.tokenizer import PAD, make_tokenizer

log = logging.getLogger(__name__)


class ClipTextEncoder(nn.Module):
    """transformers' CLIPTextModel and CLIPTokenizer from a local folder or a hub name (Stable
    Diffusion 1.x reads openai/clip-vit-large-patch14's last hidden states), frozen; in a
    Stable Diffusion folder they are the subfolders text_encoder and tokenizer.

    The net's token rows are `TextTokenizer` rows (tokenizer="text", conf/text_encoder/clip.yaml):
    the text itself, which CLIP's own tokenizer reads, so any prompt is read, words outside the
    training captions included. Caption dropout's empty caption (an all-PAD row) is "", Stable
    Diffusion's unconditional prompt. tokenizer="words" (runs made before) reads the words of
    `WordTokenizer` rows over the data's vocabulary instead. The states are CLIP's last hidden
    states at all clip_max_length positions, read without a padding mask as Stable Diffusion's
    pipelines read them; the mask tells the real tokens.

    Frozen states are computed once per distinct caption: `precompute(rows)` (the data's
    captions, at the start of fitting) reads them with CLIP, or from `cache_dir` where a run with
    the same model and captions left them (the file is named by their fingerprint), and keeps a
    table that `forward` looks up by a hash of each row, that is of the text. A training step
    thus neither runs CLIP nor waits for the device; outside training, rows not in the table
    (new prompts) are read.
    """

    def __init__(
        self, vocab: Sequence[str] | None, path: str, max_length: int = 16,
        clip_max_length: int = 77, cache_dir: str | None = None, subfolder: str | None = None,
        tokenizer_subfolder: str | None = None, tokenizer: str = "words",
    ):  # fmt: skip
        super().__init__()
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as e:
            raise ImportError(
                "text_encoder=clip needs transformers: pip install -e '.[text]'"
            ) from e

        if not vocab:
            raise ValueError(
                "text_encoder=clip reads the data's captions, and this dataset has none: "
                "use data=captioned_digits or data=caption_folder"
            )
        try:
            tokenizer_in = {"subfolder": tokenizer_subfolder} if tokenizer_subfolder else {}
            self.clip_tokenizer = CLIPTokenizer.from_pretrained(path, **tokenizer_in)
            model = CLIPTextModel.from_pretrained(
                path, **({"subfolder": subfolder} if subfolder else {})
            )
        except OSError as e:
            raise FileNotFoundError(
                f"text_encoder=clip could not load {path!r}: {e}. Fix: text_encoder.path=<a folder "
                "with config.json, the weights and the tokenizer files, as save_pretrained writes "
                "them>, or a hub name on a machine that reaches the hub"
            ) from e
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = make_tokenizer(tokenizer, vocab, max_length)
        self.path, self.cache_dir = str(path), cache_dir
        self.dim = model.config.hidden_size
        self.clip_max_length = min(clip_max_length, model.config.max_position_embeddings)
        length = self.tokenizer.max_length
        weights = torch.randint(1, 2**61, (length,), generator=torch.Generator().manual_seed(0))
        # The table: plain attributes, not buffers, so that neither checkpoints nor the EMA
        # carry it; the EMA's copy of this encoder shares it (`share_table`).
        self.table: dict[str, Tensor] = {"hash": weights}

    def train(self, mode: bool = True) -> ClipTextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: no dropout, in training too
        return self

    @torch.no_grad()
    def read(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """CLIP's last hidden states (B, clip_max_length, dim) and the mask of real tokens of token
        rows, read without a padding mask, as Stable Diffusion's pipelines read prompts."""
        texts = self.tokenizer.decode(tokens)  # an all-PAD row decodes to ""
        encoded = self.clip_tokenizer(
            texts, padding="max_length", max_length=self.clip_max_length, truncation=True,
            return_tensors="pt",
        ).to(tokens.device)  # fmt: skip
        states = self.model(input_ids=encoded["input_ids"]).last_hidden_state
        return states, encoded["attention_mask"].bool()

    def fingerprint(self, rows: Tensor) -> str:
        """Names the states of `rows`: the model (its config and a weight checksum) and the rows."""
        digest = hashlib.sha256(json.dumps(self.model.config.to_dict(), sort_keys=True).encode())
        digest.update(str(sum(float(p.double().sum()) for p in self.model.parameters())).encode())
        digest.update(f"unmasked:{self.clip_max_length}:{self.tokenizer.vocab}".encode())
        digest.update(rows.cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def precompute(self, rows: Tensor, batch_size: int = 256) -> None:
        """Read every distinct row of `rows` (and the empty caption) once, or load them from the
        cache, into the lookup table (beside the rows tabled before)."""
        empty = torch.full((1, rows.shape[1]), PAD, dtype=rows.dtype)
        rows = torch.unique(torch.cat([rows.cpu(), empty]), dim=0)
        if self.cache_dir is None:
            states, mask = self._read_all(rows, batch_size)
        else:
            file = Path(self.cache_dir, f"clip-{self.fingerprint(rows)}.pt")
            with filling(file):  # another run reading the same captions: wait, then load them
                if (cached := load_cached(file)) is not None:
                    states, mask = cached["states"], cached["mask"]
                else:
                    states, mask = self._read_all(rows, batch_size)
                    save_atomically({"states": states, "mask": mask}, file)
                    log.info("read %d captions with CLIP -> %s", len(rows), file)
        keys = self.key(rows)
        if "keys" in self.table:  # rows tabled before stay (a class prompt joins the captions)
            old = {k: v.cpu() for k, v in self.table.items() if k != "hash"}
            new = ~torch.isin(keys, old["keys"])
            keys = torch.cat([old["keys"], keys[new]])
            states, mask = (
                torch.cat([old["states"], states[new]]),
                torch.cat([old["mask"], mask[new]]),
            )
        if len(keys.unique()) != len(keys):
            raise RuntimeError("two captions share a hash: cannot table them")
        order = keys.argsort()
        self.table.update(keys=keys[order], states=states[order], mask=mask[order])

    def _read_all(self, rows: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """CLIP's states and masks of every row, on the CPU, in batches (with progress)."""
        device = next(self.model.parameters()).device
        progress = Progress("reading the captions with CLIP", len(rows), "captions")
        states, masks = [], []
        for chunk in rows.split(batch_size):
            state, mask = self.read(chunk.to(device))
            states.append(state.cpu())
            masks.append(mask.cpu())
            progress.update(len(chunk))
        progress.close()
        return torch.cat(states), torch.cat(masks)

    def share_table(self, other: ClipTextEncoder) -> None:
        self.table = other.table

    def key(self, tokens: Tensor) -> Tensor:
        weights = self.table["hash"].to(tokens.device)[: tokens.shape[1]]
        return (tokens * weights).sum(1)  # wraps around in int64: a hash

    def _table_on(self, device: torch.device) -> dict[str, Tensor]:
        if self.table["keys"].device != device:  # once: the table follows the net
            self.table.update({k: v.to(device) for k, v in self.table.items()})
        return self.table

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        if "keys" not in self.table:
            return self.read(tokens)
        table = self._table_on(tokens.device)
        keys = self.key(tokens)
        at = torch.searchsorted(table["keys"], keys).clamp(max=len(table["keys"]) - 1)
        states, mask = table["states"][at], table["mask"][at]
        if self.training:  # the data's rows, all in the table: no host check
            return states, mask
        missing = table["keys"][at] != keys
        if bool(missing.any()):  # new prompts
            states[missing], mask[missing] = self.read(tokens[missing])
        return states, mask
