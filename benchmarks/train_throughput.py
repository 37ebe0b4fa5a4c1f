#!/usr/bin/env python
"""Training throughput: the naive loop of public Rakuten solutions vs this project's Engine.

For each architecture, two loops run in the same process on the same device, on the same synthetic
data, with the same batch size and model:

naive    fp32; every text batch padded to ``--seq-len``; eager attention (what 2020-era transformers
         ran); plain ``torch.optim.AdamW``; blocking copies; ``loss.item()`` every step; images
         decoded from JPEG and augmented with PIL in the DataLoader workers, every epoch.
project  ``rakuten.training.engine.Engine``: bf16 autocast, fused AdamW, SDPA attention where the
         architecture has it, length-grouped batches with dynamic padding (``pad_collate``), one
         sync per epoch; images from the uint8 cache, augmented on the GPU, channels_last.

Measured: steady-state training samples/s (warm-up excluded, ``cuda.synchronize`` around the timed
region), inference samples/s, model FLOP utilisation (FLOPs of a step counted with
``torch.utils.flop_counter.FlopCounterMode``, divided by the step time and by the bf16 matmul rate
measured on this card, and by the nominal peak when the card is known), the image input pipeline
alone (JPEG decode vs cache), and a projection of the full 5-fold run from these rates.

Text lengths: token counts are drawn from a log-normal fitted to the catalogue's title+description
word counts (median ~35 words, longest of 84,916 products ~2,000 words, so sigma = ln(2000/35) / z
with z the standard-normal quantile of 1 - 1/84,916, about 4.23, giving sigma ~0.96), times
``--tokens-per-word`` (1.4: CamemBERT's SentencePiece on French catalogue text runs 1.3-1.5), plus 2
special tokens, clipped to ``--seq-len``. With 256 tokens about 4% of rows are truncated and the
mean row is ~75 tokens: the naive loop spends ~70% of its tokens on padding. ``--lengths-file``
(an .npy of real token counts) replaces the fit once the data are tokenised.

Usage::

    python benchmarks/train_throughput.py --model camembert-base --seq-len 256 --batch 32
    python benchmarks/train_throughput.py --all --out-dir benchmarks/results      # the GPU suite
    python benchmarks/train_throughput.py --all --tiny --out-dir /tmp/x           # CPU smoke test

Imports only torch, numpy, PIL, transformers, timm (and tqdm if present), so it runs on a bare GPU
machine (its ``rakuten`` imports need the package: ``pip install -e .``, or ``PYTHONPATH=src`` on a
bare machine).

This file is the entry point only; the benchmark lives in ``benchmarks/throughput/``: ``cli`` (arguments,
driver), ``text`` and ``image`` (the benchmarks), ``loops`` (the naive loop, the variant runner, the
profiler), ``models``, ``flops``, ``projection`` (hours of the full run), ``report`` (versions, markdown,
file name) and ``common`` (constants, helpers).
"""
from __future__ import annotations

import sys

from throughput.cli import main

if __name__ == "__main__":
    sys.exit(main())
