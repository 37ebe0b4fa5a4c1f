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
        """Row ``i``'s token ids (a view of ``flat``)."""
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Every row's token count [n]."""
        return np.diff(self.offsets)

    def subset(self, idx) -> "RaggedTokens":
        """The rows ``idx``, in that order, copied into a new ``RaggedTokens``."""
        rows = [self.row(int(i)) for i in idx]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        flat = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        return RaggedTokens(flat.astype(np.int32), offsets)


def tokenize_texts(tokenizer, texts: list[str], max_len: int, batch: int = 2048) -> RaggedTokens:
    """Tokenise ``texts`` in batches of ``batch`` (special tokens added, truncated to ``max_len`` tokens) into
    a ``RaggedTokens`` of int32 ids."""
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


def first_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Bins of item indices whose lengths sum to at most ``capacity``: longest first, each into the
    first bin with room (within 11/9 of the optimal bin count). Deterministic: ties keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        for b, r in enumerate(room):
            if n <= r:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


class PackCollate:
    """Collate text rows into a packed batch: the batch's texts concatenated into rows of ``pack_len``
    tokens (first-fit decreasing), each text isolated by the model (``rakuten.models.packing``).

    The products of a batch are the loader's (same sampler, same loss over the same products), only
    their layout changes, so packing changes speed, not results. Keys out: ``input_ids`` [R, T] (padded
    with ``pad_id``), ``position_ids`` [R, T] (0-based, restarted per text), ``sequence_ids`` [R, T]
    (1, 2, ... per text within its row, 0 on padding), per product ``unpack_index`` [B, Lb] (flat
    position ``row * T + offset`` of each token; 0 past its end) and ``unpack_mask`` [B, Lb], and every
    other key collated as ``PadCollate`` does, in batch order. ``T = pack_len``, or, for a batch whose
    longest text is longer, that length rounded up to ``pad_to_multiple_of``; ``Lb`` is the longest
    text rounded up to ``pad_to_multiple_of`` (at most ``max_length``). Rows' ``attention_mask`` must be
    all ones (the project's token datasets yield unpadded rows).
    """

    def __init__(self, pad_id: int, pack_len: int, pad_to_multiple_of: int | None = None,
                 max_length: int | None = None):
        if int(pack_len) < 1:
            raise ValueError(f"pack_len must be >= 1 (got {pack_len})")
        self.pad_id = int(pad_id)
        self.pack_len = int(pack_len)
        self.multiple = int(pad_to_multiple_of) if pad_to_multiple_of else 1
        self.max_length = int(max_length) if max_length else None

    def _round(self, n: int) -> int:
        n = -(-n // self.multiple) * self.multiple
        return min(n, self.max_length) if self.max_length else n

    def layout(self, lengths) -> tuple[int, list[list[int]]]:
        """(row length T, bins of text indices) for texts of ``lengths`` (already cut to max_length):
        what a batch of them packs into (the padding benchmark counts slots with it)."""
        longest = max(int(n) for n in lengths)
        T = self.pack_len if longest <= self.pack_len else max(self._round(longest), longest)
        return T, first_fit_decreasing(lengths, T)

    def __call__(self, rows: list[dict]) -> dict:
        if not rows:
            return {}
        seqs = [torch.as_tensor(np.asarray(r["input_ids"]), dtype=torch.long).reshape(-1) for r in rows]
        if self.max_length:
            seqs = [s[:self.max_length] for s in seqs]
        lens = [len(s) for s in seqs]
        longest = max(lens)
        T, bins = self.layout(lens)
        R, B, Lb = len(bins), len(seqs), max(1, self._round(longest))
        ids = torch.full((R, T), self.pad_id, dtype=torch.long)
        pos = torch.zeros((R, T), dtype=torch.long)
        seq_ids = torch.zeros((R, T), dtype=torch.long)
        unpack = torch.zeros((B, Lb), dtype=torch.long)
        umask = torch.zeros((B, Lb), dtype=torch.long)
        for r, items in enumerate(bins):
            o = 0
            for slot, i in enumerate(items, start=1):
                n = lens[i]
                ids[r, o:o + n] = seqs[i]
                pos[r, o:o + n] = torch.arange(n)
                seq_ids[r, o:o + n] = slot
                unpack[i, :n] = torch.arange(r * T + o, r * T + o + n)
                umask[i, :n] = 1
                o += n
        batch = {"input_ids": ids, "position_ids": pos, "sequence_ids": seq_ids,
                 "unpack_index": unpack, "unpack_mask": umask}
        for key in rows[0]:
            if key in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
                continue
            batch[key] = stack_values([r[key] for r in rows])
        return batch


def stack_values(values: list):
    """One batch value from the rows' values: tensors and arrays stacked, ints an int64 tensor, floats a
    float32 tensor, bools a bool tensor, anything else (strings) a list."""
    v0 = values[0]
    if isinstance(v0, torch.Tensor):
        return torch.stack(values)
    if isinstance(v0, np.ndarray):
        return torch.from_numpy(np.stack(values))
    if isinstance(v0, (bool, np.bool_)):
        return torch.tensor(values, dtype=torch.bool)
    if isinstance(v0, (int, np.integer)):
        return torch.tensor(np.asarray(values, dtype=np.int64))
    if isinstance(v0, (float, np.floating)):
        return torch.tensor(np.asarray(values, dtype=np.float32))
    return list(values)
