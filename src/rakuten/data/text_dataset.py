"""Tokenise a text field once, cache it, and serve variable-length token rows to the loader.

Tokenising 98k titles and descriptions is redone by most public solutions every epoch; here it runs
once per (tokenizer, field, max_len, data) and is stored as a ragged array (flat ids + offsets), so
an epoch reads slices and the collate function pads each batch only to its own longest row.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rakuten.artifacts import atomic_save_npz


def tokenizer_key(tokenizer) -> str:
    """A stable fingerprint of a tokenizer's vocabulary and special tokens."""
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256(f"{type(tokenizer).__name__}|{len(vocab)}|{tokenizer.pad_token_id}".encode())
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1])[:5000]:
        h.update(f"{tok}\t{i}\n".encode())
    return h.hexdigest()[:12]


class RaggedTokens:
    """Token id rows of varying length: ``flat`` int32 ids and ``offsets`` [n+1]."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, idx) -> "RaggedTokens":
        rows = [self.row(int(i)) for i in idx]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        flat = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        return RaggedTokens(flat.astype(np.int32), offsets)


def tokenize_texts(tokenizer, texts: list[str], max_len: int, batch: int = 2048) -> RaggedTokens:
    rows = []
    for s in range(0, len(texts), batch):
        enc = tokenizer(texts[s:s + batch], truncation=True, max_length=max_len, add_special_tokens=True)
        rows.extend(np.asarray(r, dtype=np.int32) for r in enc["input_ids"])
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    return RaggedTokens(np.concatenate(rows) if rows else np.zeros(0, np.int32), offsets)


def cached_tokens(tokenizer, texts: list[str], max_len: int, cache_dir: Path, tag: str) -> RaggedTokens:
    """Tokenise ``texts`` or load the cached result; ``tag`` names field + data fingerprint."""
    h = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:12]
    path = Path(cache_dir) / "tokens" / f"{tag}_{tokenizer_key(tokenizer)}_L{max_len}_{h}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                rt = RaggedTokens(z["flat"], z["offsets"])
            if len(rt) == len(texts):
                return rt
        except Exception:  # truncated by a killed run: rebuild below
            pass
    rt = tokenize_texts(tokenizer, texts, max_len)
    atomic_save_npz(path, flat=rt.flat, offsets=rt.offsets)
    return rt


class TokenDataset(Dataset):
    """``{"input_ids", "attention_mask", "labels", "index"}`` per row; padding happens in the collate."""

    def __init__(self, tokens: RaggedTokens, labels: np.ndarray | None = None):
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        ids = torch.from_numpy(self.tokens.row(i).astype(np.int64))
        item = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "index": i}
        item["labels"] = int(self.labels[i]) if self.labels is not None else -1
        return item
