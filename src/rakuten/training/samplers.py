"""Batch samplers and the collate function for dynamic padding.

Text lengths in this dataset are very skewed (titles of ~10 tokens, descriptions of thousands), so
padding every batch to the maximum length wastes most of a transformer's compute. Grouping rows of
similar length into a batch and padding only to that batch's longest row (``pad_collate``) removes
the waste; shuffling at the level of mega-batches keeps the batches random enough for SGD.

All randomness is drawn from ``numpy.random.default_rng((seed, epoch))``: the order of an epoch is a
pure function of the seed and the epoch number, whatever happened before (resume-safe), and
``DataLoader`` workers play no part in it. ``Engine.train_epoch`` calls ``set_epoch`` for you.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from rakuten.data.text_dataset import PackCollate, stack_values


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch`` under ``seed`` (any int: both are taken modulo 2^32, so a
    negative seed is valid); every sampler here and the distributed shuffle draw from it."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF])


class LengthGroupedBatchSampler(Sampler):
    """Batches of row indices whose lengths are close; pass as ``DataLoader(batch_sampler=...)``.

    Training (``shuffle=True``): shuffle all rows, cut the permutation into mega-batches of
    ``batch_size * mega_batch_mult`` rows, sort each mega-batch by length (longest first) and cut it
    into batches, then shuffle the order of the batches. The batch holding the longest row overall
    is moved to the front so an out-of-memory shows up at step 1, not after an hour.

    Evaluation (``shuffle=False``): all rows sorted by length, longest first: the least padding
    possible. The batches are then *not* in dataset order; ``Engine.predict`` restores it from the
    ``"index"`` each batch carries (the project's datasets yield it), so callers get rows back in
    dataset order.

    ``drop_last`` drops the one incomplete batch (training only makes sense with it).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 mega_batch_mult: int = 50, drop_last: bool = False, longest_first: bool = True):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.mega_batch_mult = max(1, int(mega_batch_mult))
        self.drop_last = bool(drop_last)
        self.longest_first = bool(longest_first)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with ``seed``, fixes the training order (evaluation order does not depend on it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches (index arrays), as ``__iter__`` yields them."""
        n, bs = len(self.lengths), self.batch_size
        if n == 0:
            return []
        if not self.shuffle:
            # stable sort on -length: ties keep dataset order, so eval batches are reproducible
            order = np.argsort(-self.lengths, kind="stable")
            batches = [order[i:i + bs] for i in range(0, n, bs)]
            if self.drop_last and len(batches[-1]) < bs:
                batches.pop()
            return batches
        rng = epoch_rng(self.seed, self.epoch)
        perm = rng.permutation(n)
        mega = bs * self.mega_batch_mult
        batches = []
        for start in range(0, n, mega):
            chunk = perm[start:start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + bs] for i in range(0, len(chunk), bs))
        # only the very last batch can be short (every mega-batch but the last is a multiple of bs)
        if self.drop_last and len(batches[-1]) < bs:
            batches.pop()
        return self._shuffled(batches, rng)

    def _shuffled(self, batches: list[np.ndarray], rng) -> list[np.ndarray]:
        """``batches`` in a random order from ``rng``, the longest batch first with ``longest_first``
        (an out-of-memory error then comes at step 1, not late in the epoch)."""
        if not batches:
            return []
        order = rng.permutation(len(batches))
        batches = [batches[k] for k in order]
        if self.longest_first:
            k = int(np.argmax([self.lengths[b].max() for b in batches]))
            batches[0], batches[k] = batches[k], batches[0]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches():
            yield b.tolist()


class BucketBatchSampler(LengthGroupedBatchSampler):
    """Length-bucketed training batches (``train.sampler: bucket``): rows fall into buckets of
    ``width`` tokens (lengths 1..w, w+1..2w, ...; use ``data.pad_to_multiple_of``), batches are cut
    within a bucket from a (seed, epoch) shuffle, so every row of a batch pads to the same multiple:
    at most ``width - 1`` padding tokens per row and one tensor shape per bucket (what CUDA graphs
    record). The short remainder of each bucket joins the next bucket's rows (length-sorted), so all
    batches but the last are full. Batch order is shuffled, the longest batch first (out-of-memory at
    step 1). Evaluation (``shuffle=False``) sorts by length as ``LengthGroupedBatchSampler`` does.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, width: int = 8, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, longest_first: bool = True):
        super().__init__(lengths, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         longest_first=longest_first)
        self.width = max(1, int(width))

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches (index arrays), as ``__iter__`` yields them."""
        if not self.shuffle or len(self.lengths) == 0:
            return super().batches()
        bs = self.batch_size
        rng = epoch_rng(self.seed, self.epoch)
        perm = rng.permutation(len(self.lengths))
        bucket = -(-self.lengths[perm] // self.width)
        perm = perm[np.argsort(bucket, kind="stable")]     # bucket by bucket, shuffled within each
        bucket = np.sort(bucket, kind="stable")
        batches, carry = [], np.zeros(0, dtype=np.int64)
        for b in np.unique(bucket):
            rows = np.concatenate([carry, perm[bucket == b]])
            n_full = len(rows) // bs * bs
            batches.extend(rows[i:i + bs] for i in range(0, n_full, bs))
            carry = rows[n_full:]
        if len(carry) and not self.drop_last:
            batches.append(carry)
        return self._shuffled(batches, rng)


def class_balanced_weights(labels: Sequence[int], power: float = 1.0) -> np.ndarray:
    """Per-row sampling probabilities ∝ ``count(label) ** -power`` (float64, summing to 1).

    ``power=1``: every class is drawn equally often; ``power=0``: uniform over rows (no rebalancing);
    ``0.5`` is the usual compromise (square-root rebalancing) for long-tailed classes.
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return np.zeros(0, dtype=np.float64)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    w = counts[inverse].astype(np.float64) ** (-float(power))
    return w / w.sum()


class ClassBalancedSampler(Sampler):
    """Row indices drawn with probability :func:`class_balanced_weights` (with replacement by
    default), ``num_samples`` per epoch (default: the number of rows). Pass as
    ``DataLoader(sampler=...)``; the order of each epoch is a function of ``(seed, epoch)``.
    """

    def __init__(self, labels: Sequence[int], power: float = 1.0, num_samples: int | None = None,
                 replacement: bool = True, seed: int = 0):
        self.weights = class_balanced_weights(labels, power)
        self.num_samples = int(num_samples) if num_samples is not None else len(self.weights)
        if not replacement and self.num_samples > np.count_nonzero(self.weights):
            raise ValueError("num_samples exceeds the number of rows without replacement")
        self.replacement = bool(replacement)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with ``seed``, fixes the draw of ``indices``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def indices(self) -> np.ndarray:
        """This epoch's ``num_samples`` row indices, drawn with the class-balanced probabilities from an RNG
        seeded by ``(seed, epoch)``."""
        rng = epoch_rng(self.seed, self.epoch)
        return rng.choice(len(self.weights), size=self.num_samples, replace=self.replacement, p=self.weights)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


# ------------------------------------------------------------------------------------------ collate
# padding value per key; a key not listed here is stacked as is (it must have the same shape per row)
_PAD_KEYS = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}


class PadCollate:
    """Collate a list of dict rows into a batch dict, padding the token sequences on the right to the
    longest row of *this* batch (rounded up to ``pad_to_multiple_of``: 8 keeps bf16 GEMMs on tensor
    cores' preferred shapes).

    ``input_ids`` is padded with ``pad_id``, ``attention_mask`` / ``token_type_ids`` with 0; rows may
    hold lists, numpy arrays or 1-d tensors. Other values: tensors and arrays are stacked, ints become
    an int64 tensor, floats a float32 tensor, anything else (strings) a list. A class, not a closure,
    so it pickles into DataLoader workers under any start method.
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None, max_length: int | None = None):
        self.pad_id = int(pad_id)
        self.multiple = int(pad_to_multiple_of) if pad_to_multiple_of else None
        self.max_length = int(max_length) if max_length else None

    def _pad(self, seqs: list, value: int) -> torch.Tensor:
        seqs = [torch.as_tensor(np.asarray(s), dtype=torch.long).reshape(-1) for s in seqs]
        if self.max_length:
            seqs = [s[:self.max_length] for s in seqs]
        length = max((len(s) for s in seqs), default=0)
        if self.multiple:
            length = -(-length // self.multiple) * self.multiple
            if self.max_length:  # rows were truncated to max_length: never pad beyond it
                length = min(length, self.max_length)
        out = torch.full((len(seqs), length), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = s
        return out

    def __call__(self, rows: list[dict]) -> dict:
        if not rows:
            return {}
        batch = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if key == "input_ids":
                batch[key] = self._pad(values, self.pad_id)
            elif key in _PAD_KEYS:
                batch[key] = self._pad(values, _PAD_KEYS[key])
            else:
                batch[key] = stack_values(values)
        return batch


def pad_collate(pad_id: int, pad_to_multiple_of: int | None = None, max_length: int | None = None) -> PadCollate:
    """The collate function for text loaders: dynamic padding to each batch's longest row."""
    return PadCollate(pad_id, pad_to_multiple_of, max_length)


def text_collate(data_cfg, pad_id: int):
    """The collate of a text experiment from its ``data`` section: ``PackCollate`` when ``data.packing``
    is on (``true``: rows of ``data.max_len`` tokens; an integer N: rows of N tokens), else dynamic
    padding to each batch's longest row. Both round lengths up to ``data.pad_to_multiple_of``."""
    multiple = int(data_cfg.get("pad_to_multiple_of") or 0) or None
    packing = data_cfg.get("packing", False)
    max_len = int(data_cfg.get("max_len"))
    if packing is False or packing is None or packing == 0:
        return pad_collate(pad_id, pad_to_multiple_of=multiple)
    pack_len = max_len if packing is True else int(packing)
    if multiple:
        pack_len = -(-pack_len // multiple) * multiple
    return PackCollate(pad_id, pack_len, pad_to_multiple_of=multiple, max_length=max_len)
