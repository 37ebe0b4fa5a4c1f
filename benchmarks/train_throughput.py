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
machine; it puts ``src/`` on ``sys.path`` itself.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset  # noqa: E402

from rakuten.artifacts import atomic_write_json  # noqa: E402
from rakuten.data.image_cache import (IMAGENET_MEAN, IMAGENET_STD, CachedImageDataset,  # noqa: E402
                                      GpuImageAugment, build_image_cache, load_image_cache,
                                      make_image_batch_transform)
from rakuten.models.encoder_kwargs import encoder_kwargs  # noqa: E402
from rakuten.training.engine import Engine, make_optimizer, resolve_device, seed_everything  # noqa: E402
from rakuten.training.samplers import LengthGroupedBatchSampler, pad_collate  # noqa: E402

# ------------------------------------------------------------------------------------ the challenge
N_TRAIN = 84_916          # labelled products
N_TEST = 13_812           # products of the challenge's test set
N_FOLDS = 5
N_CLASSES = 27            # prdtypecode values
IMAGE_SIDE = 500          # every catalogue image is a 500x500 JPEG

# length fit (see the module docstring)
MEDIAN_WORDS = 35.0
MAX_WORDS = 2000.0
TOKENS_PER_WORD = 1.4
SPECIAL_TOKENS = 2

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name pattern, first match wins
NOMINAL_BF16_TFLOPS = [
    (r"GH200|H200", 989.0),
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100|H800", 989.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
]

TEXT_MODELS = {
    # base dimensions of the published checkpoints; weights are random (no hub access needed)
    "camembert-base": {
        "family": "camembert", "pad_id": 1, "vocab": 32005,
        "config": dict(vocab_size=32005, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                       pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5),
        "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64),
    },
    "flaubert/flaubert_base_cased": {
        "family": "flaubert", "pad_id": 2, "vocab": 68729,
        "config": dict(vocab_size=68729, emb_dim=768, n_layers=12, n_heads=12, max_position_embeddings=512,
                       pad_index=2, pad_token_id=2, layer_norm_eps=1e-6),
        "tiny": dict(vocab_size=1000, emb_dim=32, n_layers=2, n_heads=2),
    },
}
ALIASES = {
    "camembert": "camembert-base", "camembert/camembert-base": "camembert-base",
    "almanach/camembert-base": "camembert-base",
    "flaubert": "flaubert/flaubert_base_cased", "flaubert_base_cased": "flaubert/flaubert_base_cased",
    "flaubert-base-cased": "flaubert/flaubert_base_cased",
    "seresnext50": "seresnext50_32x4d", "image_loader": "image-loader", "loader": "image-loader",
}
IMAGE_MODEL = "seresnext50_32x4d"
# --all order: the image model before FlauBERT, so a tight time budget drops FlauBERT's extra variants
# first (CamemBERT's figures stand for both: same dimensions)
ALL_BENCHMARKS = ["image-loader", "camembert-base", IMAGE_MODEL, "flaubert/flaubert_base_cased"]


def log(msg: str = "") -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------- text lengths
def lognormal_fit(median_words: float = MEDIAN_WORDS, max_words: float = MAX_WORDS, n: int = N_TRAIN):
    """(mu, sigma) of ln(words): median -> mu; the longest of n rows sits at the 1 - 1/n quantile."""
    z = statistics.NormalDist().inv_cdf(1.0 - 1.0 / n)
    return math.log(median_words), math.log(max_words / median_words) / z


def sample_token_lengths(n: int, seq_len: int, rng: np.random.Generator, tokens_per_word: float = TOKENS_PER_WORD,
                         lengths_file: str | None = None) -> np.ndarray:
    if lengths_file:
        real = np.load(lengths_file).astype(np.int64).reshape(-1)
        return np.clip(rng.choice(real, size=n, replace=True), 1, seq_len)
    mu, sigma = lognormal_fit()
    words = np.maximum(1.0, rng.lognormal(mu, sigma, size=n))
    tokens = np.ceil(words * tokens_per_word).astype(np.int64) + SPECIAL_TOKENS
    return np.clip(tokens, SPECIAL_TOKENS + 1, seq_len)


# ------------------------------------------------------------------------------------------- models
class TextClassifier(nn.Module):
    """Backbone + linear head on the first token: the model contract (``logits``, ``embeddings``)."""

    def __init__(self, backbone: nn.Module, hidden: int, n_classes: int = N_CLASSES):
        super().__init__()
        self.backbone = backbone
        self.encoder_kwargs = encoder_kwargs(backbone)  # FlauBERT: no per-forward KV cache
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, batch: dict) -> dict:
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            **self.encoder_kwargs)
        h = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        emb = h[:, 0]
        return {"logits": self.head(self.dropout(emb)), "embeddings": emb}


class ImageClassifier(nn.Module):
    def __init__(self, name: str, n_classes: int = N_CLASSES):
        super().__init__()
        import timm
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0)
        self.head = nn.Linear(self.backbone.num_features, n_classes)

    def forward(self, batch: dict) -> dict:
        emb = self.backbone(batch["image"])
        return {"logits": self.head(emb), "embeddings": emb}


def build_text_model(name: str, attn: str, tiny: bool) -> tuple[nn.Module, str]:
    """Random-weight model of ``name``'s architecture; returns it and the attention actually used."""
    import transformers
    spec = TEXT_MODELS[name]
    cfg_cls = transformers.CamembertConfig if spec["family"] == "camembert" else transformers.FlaubertConfig
    kwargs = dict(spec["config"])
    if tiny:
        kwargs.update(spec["tiny"])
    config = cfg_cls(**kwargs)
    try:
        backbone = transformers.AutoModel.from_config(config, attn_implementation=attn)
    except (TypeError, ValueError, ImportError) as e:
        # transformers < 4.36 has no attn_implementation; FlauBERT has no SDPA path at all. The failed
        # call may have written the request into the config, so the fallback gets a fresh one.
        log(f"    note: attn_implementation={attn!r} unavailable for {name} ({type(e).__name__}); using eager")
        config = cfg_cls(**kwargs)
        try:
            backbone = transformers.AutoModel.from_config(config, attn_implementation="eager")
        except TypeError:
            backbone = transformers.AutoModel.from_config(config)
    used = getattr(backbone.config, "_attn_implementation", None) or "eager"
    hidden = getattr(config, "hidden_size", None) or getattr(config, "emb_dim")
    return TextClassifier(backbone.float(), hidden), used


# -------------------------------------------------------------------------------------------- FLOPs
def count_step_flops(model: nn.Module, batch: dict) -> float:
    """FLOPs of one forward + backward (optimizer excluded) as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode
    model.train()
    with FlopCounterMode(display=False) as fc:
        out = model(batch)
        F.cross_entropy(out["logits"].float(), batch["labels"]).backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def measure_matmul_tflops(device: torch.device, tiny: bool) -> dict:
    """The card's achievable dense matmul rate (bf16 on CUDA, fp32 on CPU) and its nominal peak."""
    if device.type == "cuda":
        dtype, n, iters = torch.bfloat16, 8192, 100  # ~0.15 s of work on an H100: past clock ramp-up
    else:
        dtype, n, iters = torch.float32, 256 if tiny else 1024, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(10):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    dt = time.perf_counter() - t0
    measured = 2.0 * n ** 3 * iters / dt / 1e12
    name = device_name(device)
    nominal = None
    if device.type == "cuda":
        for pat, tf in NOMINAL_BF16_TFLOPS:
            if re.search(pat, name):
                nominal = tf
                break
    del a, b
    free_memory()
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "measured_tflops": measured,
            "nominal_bf16_tflops": nominal}


def mfu(flops: float, seconds: float, peak: dict) -> dict:
    rate = flops / seconds / 1e12 if seconds > 0 else float("nan")
    out = {"achieved_tflops": rate, "mfu_vs_measured": rate / peak["measured_tflops"]}
    if peak.get("nominal_bf16_tflops"):
        out["mfu_vs_nominal"] = rate / peak["nominal_bf16_tflops"]
    return out


# --------------------------------------------------------------------------------------- text bench
class TokenDataset(Dataset):
    """Unpadded rows for the project loop: ``input_ids`` of each row's own length."""

    def __init__(self, ids: list[np.ndarray], labels: np.ndarray):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": np.ones(len(ids), dtype=np.int64),
                "labels": int(self.labels[i]), "index": i}


def make_text_data(n: int, seq_len: int, vocab: int, pad_id: int, args, rng: np.random.Generator):
    lengths = sample_token_lengths(n, seq_len, rng, args.tokens_per_word, args.lengths_file)
    ids = [rng.integers(5, vocab, size=int(L), dtype=np.int64) for L in lengths]
    labels = rng.integers(0, N_CLASSES, size=n, dtype=np.int64)
    return lengths, ids, labels


def padded_tensors(ids: list[np.ndarray], seq_len: int, pad_id: int):
    n = len(ids)
    x = np.full((n, seq_len), pad_id, dtype=np.int64)
    m = np.zeros((n, seq_len), dtype=np.int64)
    for i, r in enumerate(ids):
        x[i, :len(r)] = r[:seq_len]
        m[i, :len(r)] = 1
    return torch.from_numpy(x), torch.from_numpy(m)


def naive_train_steps(model, loader, device, warmup: int, steps: int, batch_to_dict) -> dict:
    """The public-notebook loop: blocking copies, fp32, plain AdamW, ``loss.item()`` every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    model.train()
    it = iter(loader)
    running, times = 0.0, None
    for k in range(warmup + steps):
        if k == warmup:
            sync(device)
            times = time.perf_counter()
        batch = batch_to_dict(next(it), device)
        out = model(batch)
        loss = F.cross_entropy(out["logits"], batch["labels"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()  # the per-step host-device sync
    sync(device)
    dt = time.perf_counter() - times
    del opt
    return {"seconds": dt, "steps": steps}


def naive_predict(model, loader, device, steps: int, batch_to_dict) -> dict:
    model.eval()
    n, outs = 0, []
    it = iter(loader)
    with torch.no_grad():
        batch = batch_to_dict(next(it), device)  # warm-up batch
        model(batch)["logits"].cpu()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            try:
                raw = next(it)
            except StopIteration:
                break
            batch = batch_to_dict(raw, device)
            outs.append(model(batch)["logits"].cpu().numpy())  # per-batch copy back, as notebooks do
            n += int(batch["labels"].shape[0])
    sync(device)
    dt = time.perf_counter() - t0
    return {"samples": n, "seconds": dt, "samples_per_s": n / dt if dt > 0 else float("nan")}


def _text_batch(raw, device):
    ids, mask, labels = raw
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def bench_text(name: str, args, device: torch.device, peak: dict) -> dict:
    spec = TEXT_MODELS[name]
    seq, bs = args.seq_len, args.batch_text
    rng = np.random.default_rng(0)
    vocab = spec["tiny"]["vocab_size"] if args.tiny else spec["vocab"]
    pad_id = spec["pad_id"]
    n_proj = args.project_steps * bs
    lengths, ids, labels = make_text_data(n_proj, seq, vocab, pad_id, args, rng)
    res: dict = {"seq_len": seq, "batch": bs, "lengths": {
        "mean": float(lengths.mean()), "median": float(np.median(lengths)),
        "p95": float(np.percentile(lengths, 95)), "truncated_frac": float((lengths >= seq).mean()),
        "padding_waste_naive": float(1.0 - lengths.mean() / seq)}}
    free_memory()

    # ---- naive: padded to seq_len, eager attention, fp32
    seed_everything(0, deterministic=args.deterministic)
    model, attn_naive = build_text_model(name, args.naive_attn, args.tiny)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    x, m = padded_tensors(ids, seq, pad_id)
    y = torch.from_numpy(labels)
    # FLOPs per row at two lengths -> f(L) = a L + c L^2 (linear layers + attention), used to count
    # the FLOPs of variable-length batches and the "useful" FLOPs (no padding) of both loops
    L1, L2 = max(8, seq // 4), seq
    fb = 2
    f_at = {}
    for L in (L1, L2):
        b = {"input_ids": x[:fb, :L].to(device), "attention_mask": torch.ones(fb, L, dtype=torch.long, device=device),
             "labels": y[:fb].to(device)}
        f_at[L] = count_step_flops(model, b) / fb
    c = (f_at[L2] / L2 - f_at[L1] / L1) / (L2 - L1)
    a = f_at[L1] / L1 - c * L1
    flops_row = (lambda L: a * np.asarray(L, dtype=np.float64) + c * np.asarray(L, dtype=np.float64) ** 2)
    useful_per_row = float(flops_row(lengths).mean())
    res["flops"] = {"per_row_at_seq_len": float(flops_row(seq)), "useful_per_row": useful_per_row,
                    "linear_coef": a, "quadratic_coef": c}
    res["params"] = n_params

    naive_loader = DataLoader(TensorDataset(x, m, y), batch_size=bs, shuffle=True, drop_last=True)
    steps = min(args.naive_steps, len(naive_loader) - args.warmup_steps)
    r = naive_train_steps(model, naive_loader, device, args.warmup_steps, steps, _text_batch)
    sps = steps * bs / r["seconds"]
    executed = steps * bs * float(flops_row(seq))
    useful = steps * bs * useful_per_row
    naive = {"attn": attn_naive, "precision": "fp32", "train_samples_per_s": sps, "train_seconds": r["seconds"],
             "train_steps": steps, **{f"train_{k}": v for k, v in mfu(executed, r["seconds"], peak).items()},
             "train_useful_mfu_vs_measured": useful / r["seconds"] / 1e12 / peak["measured_tflops"]}
    eval_loader = DataLoader(TensorDataset(x, m, y), batch_size=2 * bs, shuffle=False)
    ev = naive_predict(model, eval_loader, device, args.eval_steps, _text_batch)
    naive["eval_samples_per_s"] = ev["samples_per_s"]
    res["naive"] = naive
    log(f"    naive   : {sps:9.1f} train samples/s  {ev['samples_per_s']:9.1f} eval samples/s  "
        f"(attn={attn_naive}, fp32, pad to {seq})")
    del model, naive_loader, eval_loader, x, m
    free_memory()

    # ---- project: Engine, bf16, fused AdamW, SDPA, length-grouped dynamic padding; one run per variant
    variants = [(v, bool(TEXT_VARIANTS[v]["compile"]),
                 lambda v=v: _project_text_variant(name, v, args, device, peak, ids, labels, lengths, flops_row,
                                                   pad_id)) for v in args.text_variants]
    _run_variants(args, name, res, variants, same_batch=True)
    if "project" not in res:
        raise RuntimeError(f"no project variant at batch {bs} succeeded: {list(res['variants'])}")
    return res


def _run_variants(args, name: str, res: dict, variants, same_batch: bool = False) -> None:
    """Run each ``(name, compiles, run)`` variant into ``res["variants"]`` within the time budget; a
    failure is recorded and the next one runs. After each: pick ``project``, save what is measured."""
    res["variants"] = {}
    for vname, compiles, run in variants:
        if _over_budget(args, res, compiles):
            log(f"    {vname:22s}: skipped (time budget)")
            continue
        try:
            res["variants"][vname] = run()
        except Exception:
            tb = traceback.format_exc()
            log(f"    {vname:22s}: FAILED\n{tb}")
            res["variants"][vname] = {"error": tb}
        free_memory()
        _pick_best(res, same_batch=same_batch)
        _partial_save(args, name, res)


def _over_budget(args, res: dict, compiles: bool) -> bool:
    """Skip a variant once the time budget is spent (never the first of a benchmark); a compiled
    variant (a minute or more of compilation) once less than ``--compile-reserve`` seconds are left."""
    if not args.time_budget or not res["variants"]:
        return False
    left = args.time_budget - (time.perf_counter() - args._t_start)
    return left < (args.compile_reserve if compiles else 0.0)


def _pick_best(res: dict, same_batch: bool = False) -> None:
    """``project`` = the fastest variant so far (``same_batch``: among those at the benchmark's batch);
    speedups against the naive loop."""
    ok = {k: v for k, v in res.get("variants", {}).items() if "train_samples_per_s" in v}
    for v in ok.values():
        v["speedup_train"] = v["train_samples_per_s"] / res["naive"]["train_samples_per_s"]
    if same_batch:
        ok = {k: v for k, v in ok.items() if v.get("batch", res["batch"]) == res["batch"]}
    if not ok:
        return
    naive = res["naive"]
    best = max(ok, key=lambda k: ok[k]["train_samples_per_s"])
    res["project"] = dict(ok[best], variant=best)
    res["speedup_train"] = res["project"]["speedup_train"]
    res["speedup_eval"] = res["project"]["eval_samples_per_s"] / naive["eval_samples_per_s"]


def _partial_save(args, name: str, res: dict) -> None:
    """Write what is measured so far: a suite killed in a long variant keeps the earlier ones."""
    cb = getattr(args, "_partial", None)
    if cb is not None:
        cb(name, res)


# Project-loop settings compared by --text-variants. pad: pad_to_multiple_of (32 caps a 256-token
# limit at 8 distinct lengths, so CUDA graphs record 8 graphs); compile: Engine(compile=...).
TEXT_VARIANTS = {
    "eager": {"compile": False, "pad": 8},
    "eager-pad32": {"compile": False, "pad": 32},
    "compile": {"compile": True, "pad": 8},
    "cudagraphs": {"compile": "reduce-overhead", "pad": 32},
    "cudagraphs-static": {"compile": "reduce-overhead", "pad": 64, "dynamic": False},
    "eager-w0": {"compile": False, "pad": 8, "workers": 0},
    # off the thesis settings (batch 128, same rows per epoch): what the card does with more work per
    # launch; reported, never picked as 'project'
    "eager-b128": {"compile": False, "pad": 8, "batch": 128},
    "cudagraphs-b128": {"compile": "reduce-overhead", "pad": 32, "batch": 128},
}


def _profile_steps(engine, loader, steps: int, device) -> dict:
    """torch.profiler over ``steps`` training steps: where the wall time goes (host vs GPU kernels)."""
    import itertools
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        engine.train_epoch(itertools.islice(iter(loader), steps), epoch=99)
        sync(device)
        wall = time.perf_counter() - t0
    ka = prof.key_averages()

    def dev_self(e):
        for a in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(e, a):
                return float(getattr(e, a))
        return 0.0
    gpu_us = sum(dev_self(e) for e in ka)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = ka.table(sort_by=sort, row_limit=14, max_name_column_width=48)
    cpu_table = ka.table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=48)
    out = {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps, "gpu_kernel_ms_per_step": gpu_us / 1e3 / steps,
           "gpu_busy_frac": (gpu_us / 1e6) / wall if wall > 0 else float("nan"),
           "n_kernel_launches_per_step": sum(int(getattr(e, "count", 0)) for e in ka
                                             if "cudaLaunchKernel" in e.key or "cuLaunchKernel" in e.key) / steps}
    log(f"    profile : {out['wall_ms_per_step']:.1f} ms/step wall, {out['gpu_kernel_ms_per_step']:.1f} ms/step "
        f"GPU kernels (busy {100 * out['gpu_busy_frac']:.0f}%), {out['n_kernel_launches_per_step']:.0f} launches/step")
    log(table)
    log(cpu_table)
    out["table"] = table
    out["cpu_table"] = cpu_table
    return out


def _project_text_variant(name, vname, args, device, peak, ids, labels, lengths, flops_row, pad_id) -> dict:
    v = TEXT_VARIANTS[vname]
    bs = int(v.get("batch", args.batch_text))
    if bs != args.batch_text:  # same rows per epoch at another batch
        n = len(ids) // bs * bs
        if n == 0:
            raise ValueError(f"variant {vname}: batch {bs} > the {len(ids)} rows of an epoch")
        ids, labels, lengths = ids[:n], labels[:n], lengths[:n]
    t_v = time.perf_counter()
    seed_everything(0, deterministic=args.deterministic)
    model, attn_proj = build_text_model(name, "sdpa", args.tiny)
    model.to(device)
    opt = make_optimizer(model, "adamw", lr=3e-5, weight_decay=0.01)
    engine = Engine(model, nn.CrossEntropyLoss(), opt, device=device, precision=args.precision, clip_grad=1.0,
                    compile=v["compile"], compile_dynamic=v.get("dynamic"), progress=False)
    ds = TokenDataset(ids, labels)
    mult = v["pad"]
    sampler = LengthGroupedBatchSampler(lengths, bs, shuffle=True, seed=0, drop_last=True)
    workers = v.get("workers", min(2, args.workers))
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=pad_collate(pad_id, pad_to_multiple_of=mult),
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    t_w = time.perf_counter()
    engine.train_epoch(loader, epoch=0)  # warm-up: CUDA context, cuBLAS handles, allocator, workers, compile
    sync(device)
    warm_s = time.perf_counter() - t_w
    t0 = time.perf_counter()
    stats = engine.train_epoch(loader, epoch=1)
    sync(device)
    dt = time.perf_counter() - t0
    sampler.set_epoch(1)
    batches = sampler.batches()
    padded = [int(-(-lengths[bt].max() // mult) * mult) for bt in batches]
    executed = float(sum(len(bt) * flops_row(Lp) for bt, Lp in zip(batches, padded)))
    useful = float(sum(flops_row(lengths[bt]).sum() for bt in batches))
    n_rows = sum(len(bt) for bt in batches)
    sps_p = n_rows / dt
    proj = {"attn": attn_proj, "precision": str(engine.amp_dtype).replace("torch.", "") if engine.amp_dtype else "fp32",
            "fused_adamw": bool(opt.defaults.get("fused")), "compile": engine.compile_mode if engine._compiled else False,
            "batch": bs, "pad_to_multiple_of": mult, "workers": workers, "warmup_epoch_seconds": warm_s,
            "train_samples_per_s": sps_p, "train_seconds": dt, "train_steps": stats["steps"],
            "ms_per_step": 1e3 * dt / max(1, stats["steps"]),
            "mean_padded_len": float(np.mean(padded)),
            **{f"train_{k}": v for k, v in mfu(executed, dt, peak).items()},
            "train_useful_mfu_vs_measured": useful / dt / 1e12 / peak["measured_tflops"]}
    if args.profile_steps and vname == args.text_variants[0]:
        try:
            proj["profile"] = _profile_steps(engine, loader, args.profile_steps, device)
        except Exception:
            log(f"    profile failed:\n{traceback.format_exc()}")
    ebs = args.eval_batch_text
    eval_sampler = LengthGroupedBatchSampler(lengths, ebs, shuffle=False)
    eval_loader = DataLoader(ds, batch_sampler=eval_sampler, collate_fn=pad_collate(pad_id, pad_to_multiple_of=mult),
                             num_workers=0, pin_memory=device.type == "cuda")
    if engine._compiled:
        engine.predict(eval_loader)  # compiled: every eval shape compiles/records once, untimed
    else:
        engine.predict(DataLoader(Subset(ds, range(min(len(ds), ebs))), batch_size=ebs,
                                  collate_fn=pad_collate(pad_id, pad_to_multiple_of=mult)))
    sync(device)
    t0 = time.perf_counter()
    engine.predict(eval_loader)
    sync(device)
    dte = time.perf_counter() - t0
    proj["eval_samples_per_s"] = len(ds) / dte
    proj["eval_batch"] = ebs
    proj["eval_order_ok"] = bool(np.array_equal(engine.last_predict_index, np.arange(len(ds))))
    proj["variant_seconds"] = time.perf_counter() - t_v
    log(f"    {vname:22s}: {sps_p:9.1f} train samples/s ({proj['ms_per_step']:.1f} ms/step, MFU "
        f"{100 * proj['train_mfu_vs_measured']:.1f}%)  {proj['eval_samples_per_s']:9.1f} eval samples/s  "
        f"(attn={attn_proj}, {proj['precision']}, compile={proj['compile']}, pad x{mult}, mean padded len "
        f"{proj['mean_padded_len']:.0f}; warm-up epoch {warm_s:.0f}s, variant {proj['variant_seconds']:.0f}s)")
    del engine, model, opt, loader, eval_loader
    return proj


# -------------------------------------------------------------------------------------- image bench
def _write_synthetic_jpeg(task) -> int:
    """A product-like photo: white background, a shaded object with texture, some 'label' stripes."""
    path, seed, side = task
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.full((side, side, 3), 255.0, dtype=np.float32)
    cx, cy = rng.uniform(0.35, 0.65, 2)
    rx, ry = rng.uniform(0.15, 0.4, 2)
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
    colour = rng.uniform(20, 235, 3).astype(np.float32)
    shade = (xx * rng.uniform(-90, 90) + yy * rng.uniform(-90, 90))[..., None]
    obj = colour + shade + rng.normal(0, 8, (side, side, 3)).astype(np.float32)
    stripes = (np.sin(yy * rng.uniform(40, 120)) > 0.6)[..., None] * rng.uniform(-60, 60, 3)
    obj = obj + stripes
    img[mask] = obj[mask]
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return os.path.getsize(path)


class ImageData:
    """Synthetic JPEGs and their cache, made once per process and shared by the image benchmarks."""

    def __init__(self, root: Path, n: int, cache_size: int, workers: int, side: int):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.paths = [str(root / f"{i:06d}.jpg") for i in range(n)]
        tasks = [(p, 1000 + i, side) for i, p in enumerate(self.paths)]
        t0 = time.perf_counter()
        if workers > 0 and n > 64:
            with mp.get_context().Pool(workers) as pool:
                sizes = pool.map(_write_synthetic_jpeg, tasks, chunksize=16)
        else:
            sizes = [_write_synthetic_jpeg(t) for t in tasks]
        self.gen_seconds = time.perf_counter() - t0
        self.mean_jpeg_kb = float(np.mean(sizes)) / 1024
        self.labels = np.random.default_rng(0).integers(0, N_CLASSES, size=n)
        self.cache_file = root / f"cache_{cache_size}.npy"
        t0 = time.perf_counter()
        counts = build_image_cache(self.paths, cache_size, self.cache_file, workers=workers, progress=False)
        self.cache_seconds = time.perf_counter() - t0
        self.cache_counts = counts
        self.cache = load_image_cache(self.cache_file, paths=self.paths, size=cache_size)


class NaiveJpegDataset(Dataset):
    """Decode + augment with PIL each time, as torchvision ``RandomResizedCrop``/flip/rotation/
    ``ToTensor``/``Normalize`` pipelines do (implemented with PIL so torchvision is not needed).
    ``length`` may exceed the number of files: rows wrap around."""

    def __init__(self, paths, labels, size: int, train: bool = True, length: int | None = None):
        self.paths, self.labels, self.size, self.train = paths, labels, size, train
        self.length = length or len(paths)
        self.mean = np.asarray(IMAGENET_MEAN, np.float32)
        self.std = np.asarray(IMAGENET_STD, np.float32)

    def __len__(self):
        return self.length

    def _crop_box(self, w, h):
        area = w * h
        for _ in range(10):
            target = area * random.uniform(0.6, 1.0)
            ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
                return (x0, y0, x0 + cw, y0 + ch)
        return (0, 0, w, h)

    def __getitem__(self, i):
        j = i % len(self.paths)
        with Image.open(self.paths[j]) as im:
            im = im.convert("RGB")
            if self.train:
                im = im.resize((self.size, self.size), Image.BILINEAR, box=self._crop_box(*im.size))
                if random.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                im = im.rotate(random.uniform(-15, 15), Image.BILINEAR, fillcolor=(255, 255, 255))
            else:
                im = im.resize((self.size, self.size), Image.BILINEAR)
            arr = (np.asarray(im, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()), int(self.labels[j])


def _image_batch(raw, device):
    x, y = raw
    return {"image": x.to(device), "labels": y.to(device)}


def _loader_rate(loader, warmup: int, steps: int, device=None, augment=None) -> dict:
    """Images/s of a DataLoader alone (optionally + copy to ``device`` and GPU augmentation)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    if device is not None:
        sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        b = next(it)
        x = b["image"] if isinstance(b, dict) else b[0]
        if device is not None:
            x = x.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, True)
        n += int(x.shape[0])
    if device is not None:
        sync(device)
    dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, "images": n, "seconds": dt}


def _get_image_data(args, state: dict) -> ImageData:
    if "image_data" not in state:
        root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="rakuten_bench_"))
        state["image_root"] = root
        t0 = time.perf_counter()
        state["image_data"] = ImageData(root / "jpeg", args.n_images, args.cache_size, args.workers,
                                        args.image_side)
        d = state["image_data"]
        log(f"    synthetic data: {len(d.paths)} JPEGs ({d.mean_jpeg_kb:.1f} KB mean) in {d.gen_seconds:.1f}s; "
            f"cache {args.cache_size}px built in {d.cache_seconds:.1f}s "
            f"({len(d.paths) / d.cache_seconds:.0f} img/s, {args.workers} workers) "
            f"[{time.perf_counter() - t0:.1f}s]")
    return state["image_data"]


def bench_image_loader(args, device: torch.device, peak: dict, state: dict) -> dict:
    d = _get_image_data(args, state)
    bs, w = args.batch_image, args.workers
    pin = device.type == "cuda"
    steps, warm = args.loader_steps, 2
    need = (steps + warm) * bs
    naive_ds = NaiveJpegDataset(d.paths, d.labels, args.image_size, train=True, length=need)
    naive_loader = DataLoader(naive_ds, batch_size=bs, shuffle=True, num_workers=w, pin_memory=pin, drop_last=True)
    r_naive = _loader_rate(naive_loader, warm, steps)
    del naive_loader
    idx = np.resize(np.random.default_rng(0).permutation(len(d.paths)), need)
    cached_ds = Subset(CachedImageDataset(d.cache, d.labels), idx.tolist())
    cached_loader = DataLoader(cached_ds, batch_size=bs, shuffle=True, num_workers=w, pin_memory=pin,
                               drop_last=True, persistent_workers=w > 0)
    r_cached = _loader_rate(cached_loader, warm, steps)
    aug = GpuImageAugment(args.image_size, channels_last=True)
    r_dev = _loader_rate(cached_loader, warm, steps, device=device, augment=aug)
    del cached_loader
    res = {
        "batch": bs, "workers": w, "image_size": args.image_size, "cache_size": args.cache_size,
        "mean_jpeg_kb": d.mean_jpeg_kb,
        "cache_build_images_per_s": len(d.paths) / d.cache_seconds, "cache_counts": d.cache_counts,
        "naive_jpeg_images_per_s": r_naive["images_per_s"],
        "cached_uint8_images_per_s": r_cached["images_per_s"],
        "cached_plus_device_augment_images_per_s": r_dev["images_per_s"],
        "speedup": r_cached["images_per_s"] / r_naive["images_per_s"],
        "cpu_count": os.cpu_count(),
    }
    log(f"    loader  : naive JPEG+PIL {r_naive['images_per_s']:9.1f} img/s | cached uint8 "
        f"{r_cached['images_per_s']:9.1f} img/s | cached + {device.type} augment {r_dev['images_per_s']:9.1f} img/s "
        f"({w} workers)")
    return res


def bench_image(name: str, args, device: torch.device, peak: dict, state: dict) -> dict:
    d = _get_image_data(args, state)
    bs, w, size = args.batch_image, args.workers, args.image_size
    pin = device.type == "cuda"
    res: dict = {"image_size": size, "cache_size": args.cache_size, "batch": bs, "workers": w}
    free_memory()

    # ---- naive: JPEG decode + PIL augmentation in workers, fp32, NCHW
    seed_everything(0, deterministic=args.deterministic)
    model = ImageClassifier(name).to(device)
    res["params"] = sum(p.numel() for p in model.parameters())
    fb = 2
    fl_batch = {"image": torch.randn(fb, 3, size, size, device=device),
                "labels": torch.zeros(fb, dtype=torch.long, device=device)}
    flops_img = count_step_flops(model, fl_batch) / fb
    res["flops"] = {"per_image_train_step": flops_img}
    need = (args.warmup_steps + args.naive_image_steps) * bs
    loader = DataLoader(NaiveJpegDataset(d.paths, d.labels, size, train=True, length=need), batch_size=bs,
                        shuffle=True, num_workers=w, pin_memory=pin, drop_last=True)
    r = naive_train_steps(model, loader, device, args.warmup_steps, args.naive_image_steps, _image_batch)
    sps = args.naive_image_steps * bs / r["seconds"]
    naive = {"precision": "fp32", "memory_format": "contiguous", "train_samples_per_s": sps,
             "train_seconds": r["seconds"], "train_steps": args.naive_image_steps,
             **{f"train_{k}": v for k, v in mfu(args.naive_image_steps * bs * flops_img, r["seconds"], peak).items()}}
    del loader
    n_eval = (args.eval_steps + 1) * 2 * bs
    ev_loader = DataLoader(NaiveJpegDataset(d.paths, d.labels, size, train=False, length=n_eval),
                           batch_size=2 * bs, shuffle=False, num_workers=w, pin_memory=pin)
    ev = naive_predict(model, ev_loader, device, args.eval_steps, _image_batch)
    naive["eval_samples_per_s"] = ev["samples_per_s"]
    res["naive"] = naive
    log(f"    naive   : {sps:9.1f} train img/s  {ev['samples_per_s']:9.1f} eval img/s  (fp32, JPEG decode per epoch)")
    del model, ev_loader
    free_memory()

    # ---- project: uint8 cache, GPU augmentation, bf16, channels_last, fused AdamW; one run per variant
    res["cache_build_images_per_s"] = len(d.paths) / d.cache_seconds
    variants = [(_image_variant_name(vb, vmode), bool(vmode),
                 lambda vb=vb, vmode=vmode: _project_image_variant(name, args, device, peak, d, flops_img, vb, vmode))
                for vb, vmode in args.image_variants]
    _run_variants(args, name, res, variants)
    if "project" not in res:
        raise RuntimeError(f"every project variant failed: {list(res['variants'])}")
    return res


def _image_variant_name(bs: int, mode) -> str:
    return f"b{bs}" + (f"-{mode}" if mode else "")


def _project_image_variant(name, args, device, peak, d, flops_img, bs: int, mode) -> dict:
    """The project image loop at batch ``bs``; ``mode``: None (eager) or a torch.compile mode."""
    w, size = args.workers, args.image_size
    pin = device.type == "cuda"
    t_v = time.perf_counter()
    seed_everything(0, deterministic=args.deterministic)
    model = ImageClassifier(name).to(device)
    opt = make_optimizer(model, "adamw", lr=3e-4, weight_decay=0.01)
    aug = GpuImageAugment(size, channels_last=True)
    engine = Engine(model, nn.CrossEntropyLoss(), opt, device=device, precision=args.precision, clip_grad=1.0,
                    batch_transform=make_image_batch_transform(aug), compile=mode or False,
                    channels_last=True, progress=False)
    # the same number of images per epoch whatever the batch (at least 10 steps)
    steps = max(10 if not args.tiny else 1, args.project_image_steps * args.batch_image // bs)
    n_train = steps * bs
    idx = np.resize(np.random.default_rng(1).permutation(len(d.paths)), n_train)
    ds = Subset(CachedImageDataset(d.cache, d.labels), idx.tolist())
    loader = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=w, pin_memory=pin, drop_last=True,
                        persistent_workers=w > 0)
    t_w = time.perf_counter()
    engine.train_epoch(loader, epoch=0)  # warm-up (cudnn autotuning, workers, allocator, compile)
    sync(device)
    warm_s = time.perf_counter() - t_w
    t0 = time.perf_counter()
    stats = engine.train_epoch(loader, epoch=1)
    sync(device)
    dt = time.perf_counter() - t0
    sps_p = stats["samples"] / dt
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    proj = {"precision": str(engine.amp_dtype).replace("torch.", "") if engine.amp_dtype else "fp32",
            "memory_format": "channels_last", "fused_adamw": bool(opt.defaults.get("fused")), "batch": bs,
            "compile": engine.compile_mode if engine._compiled else False, "train_samples_per_s": sps_p,
            "train_seconds": dt, "train_steps": stats["steps"], "ms_per_step": 1e3 * dt / max(1, stats["steps"]),
            "warmup_epoch_seconds": warm_s, "max_memory_gb": mem,
            **{f"train_{k}": v for k, v in mfu(stats["samples"] * flops_img, dt, peak).items()}}
    del loader
    eval_idx = list(range(min(len(d.paths), args.eval_steps * 2 * args.batch_image)))
    ev_ds = Subset(CachedImageDataset(d.cache, d.labels), eval_idx)
    ev_loader = DataLoader(ev_ds, batch_size=2 * bs, shuffle=False, num_workers=w, pin_memory=pin)
    if engine._compiled:
        engine.predict(ev_loader)  # every eval shape compiles once, untimed
    else:
        engine.predict(DataLoader(Subset(ev_ds, range(min(len(ev_ds), 2 * bs))), batch_size=2 * bs))
    sync(device)
    t0 = time.perf_counter()
    engine.predict(ev_loader)
    sync(device)
    proj["eval_samples_per_s"] = len(ev_ds) / (time.perf_counter() - t0)
    proj["variant_seconds"] = time.perf_counter() - t_v
    vname = _image_variant_name(bs, mode)
    log(f"    {vname:22s}: {sps_p:9.1f} train img/s ({proj['ms_per_step']:.1f} ms/step, MFU "
        f"{100 * proj['train_mfu_vs_measured']:.1f}%)  {proj['eval_samples_per_s']:9.1f} eval img/s  "
        f"({proj['precision']}, channels_last, cache + GPU augment; warm-up {warm_s:.0f}s, "
        f"variant {proj['variant_seconds']:.0f}s" + (f", peak {mem:.1f} GB)" if mem else ")"))
    del engine, model, opt, ev_loader
    return proj


# --------------------------------------------------------------------------------------- projection
def project_full_run(benchmarks: dict, text_epochs=(10, 4, 3), image_epochs: int = 20,
                     image_model: str = IMAGE_MODEL) -> dict:
    """Hours for the thesis plan on this device, from the measured rates.

    Per fold: train on 4/5 of the 84,916 products for E epochs, predict the held-out fifth every
    epoch (early stopping needs it) and the 13,812 test products once. Text: 2 models (CamemBERT,
    FlauBERT) x 2 runs (title, description) at seq 256; both runs use the title+description length
    fit, which overstates the project loop's cost for title runs (the naive loop pads them to 256
    anyway). Image: SE-ResNeXt-50 at 224 px for ``image_epochs`` epochs; the project adds the one-off
    cache build (train + test images).
    """
    n_tr = N_TRAIN * (N_FOLDS - 1) / N_FOLDS
    n_val = N_TRAIN / N_FOLDS

    def run_seconds(r: dict, epochs: int) -> float:
        return n_tr * epochs / r["train_samples_per_s"] + (n_val * epochs + N_TEST) / r["eval_samples_per_s"]

    out: dict = {"assumptions": {
        "n_train": N_TRAIN, "n_test": N_TEST, "folds": N_FOLDS, "text_runs_per_model_per_fold": 2,
        "text_models": [m for m in TEXT_MODELS], "image_model": image_model, "image_epochs": image_epochs,
        "eval": "held-out fold every epoch + test once per fold"}, "scenarios": {}}
    text = {m: benchmarks.get(m) for m in TEXT_MODELS}
    img = benchmarks.get(image_model)
    for E in text_epochs:
        sc = {}
        for loop in ("naive", "project"):
            parts, missing = {}, []
            for m, r in text.items():
                if r and loop in r:
                    parts[m] = N_FOLDS * 2 * run_seconds(r[loop], E) / 3600
                else:
                    missing.append(m)
            if img and loop in img:
                parts[image_model] = N_FOLDS * run_seconds(img[loop], image_epochs) / 3600
                if loop == "project" and img.get("cache_build_images_per_s"):
                    parts["image_cache_build"] = (N_TRAIN + N_TEST) / img["cache_build_images_per_s"] / 3600
            else:
                missing.append(image_model)
            sc[loop] = {"hours": parts, "total_hours": sum(parts.values()), "missing": missing}
        if sc["project"]["total_hours"] > 0 and not sc["naive"]["missing"] and not sc["project"]["missing"]:
            sc["speedup"] = sc["naive"]["total_hours"] / sc["project"]["total_hours"]
        out["scenarios"][f"text_{E}ep_image_{image_epochs}ep"] = sc
    return out


# ------------------------------------------------------------------------------------------ driver
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
         "cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for mod in ("transformers", "timm", "tqdm"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            v[mod] = None
    try:
        import PIL
        v["pillow"] = PIL.__version__
    except Exception:
        pass
    try:
        v["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True, timeout=5).stdout.strip() or None
    except Exception:
        v["git_commit"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            v["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
            v["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
        except Exception:
            pass
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
        v["gpu_capability"] = list(torch.cuda.get_device_capability(0))
        v["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return v


def markdown_rows(result: dict) -> list[str]:
    """One row per project variant (text: loop settings at the benchmark's batch; image: batch/compile)."""
    dev = result["device"]
    rows = ["| device | benchmark | shape | batch | project variant | naive samples/s | project samples/s | "
            "speedup | MFU naive | MFU project |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["benchmarks"].items():
        if "naive" not in r or "project" not in r:
            continue
        shape = f"seq {r['seq_len']}" if "seq_len" in r else f"{r['image_size']} px"
        n = r["naive"]
        variants = r.get("variants") or {"default": r["project"]}
        for vname, p in variants.items():
            if "train_samples_per_s" not in p:
                rows.append(f"| {dev} | {name} | {shape} | {p.get('batch', r['batch'])} | {vname} | "
                            f"{n['train_samples_per_s']:.1f} | failed | - | - | - |")
                continue
            rows.append(f"| {dev} | {name} | {shape} | {p.get('batch', r['batch'])} | {vname} | "
                        f"{n['train_samples_per_s']:.1f} | {p['train_samples_per_s']:.1f} | "
                        f"{p['train_samples_per_s'] / n['train_samples_per_s']:.2f}x | "
                        f"{100 * n['train_mfu_vs_measured']:.1f}% | {100 * p['train_mfu_vs_measured']:.1f}% |")
    lr = result["benchmarks"].get("image-loader")
    if lr and "naive_jpeg_images_per_s" in lr:
        rows.append(f"| {dev} | image loader ({lr['workers']} workers) | {lr['image_size']} px | {lr['batch']} | "
                    f"uint8 cache | {lr['naive_jpeg_images_per_s']:.1f} | {lr['cached_uint8_images_per_s']:.1f} | "
                    f"{lr['speedup']:.2f}x | - | - |")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="camembert-base | flaubert/flaubert_base_cased | seresnext50_32x4d (or another timm "
                         "model name) | image-loader")
    ap.add_argument("--image-model", default=None,
                    help=f"timm model of the image benchmark under --all (default {IMAGE_MODEL})")
    ap.add_argument("--all", action="store_true", help="every benchmark, sized for a short GPU lease")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU smoke test of the whole harness")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seq-len", type=int, default=None, help="text max length (default 256; tiny 32)")
    ap.add_argument("--batch", type=int, default=None, help="batch size for the --model benchmark")
    ap.add_argument("--batch-text", type=int, default=None, help="text batch under --all (default 32)")
    ap.add_argument("--batch-image", type=int, default=None, help="image batch under --all (default 64)")
    ap.add_argument("--eval-batch-text", type=int, default=None,
                    help="project loop's text inference batch (default 256, the configs' eval_batch_size; "
                         "the naive loop predicts at 2x its training batch)")
    ap.add_argument("--image-size", type=int, default=None, help="model input side (default 224)")
    ap.add_argument("--cache-size", type=int, default=None, help="side of the uint8 cache (default 256)")
    ap.add_argument("--image-side", type=int, default=None, help="side of the synthetic JPEGs (default 500)")
    ap.add_argument("--n-images", type=int, default=None, help="synthetic JPEGs to generate (default 2048)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps of the naive text loop (default 40)")
    ap.add_argument("--project-steps", type=int, default=None, help="batches per project text epoch (200)")
    ap.add_argument("--naive-image-steps", type=int, default=None, help="timed steps, naive image loop (40)")
    ap.add_argument("--project-image-steps", type=int, default=None, help="batches per project image epoch (80)")
    ap.add_argument("--loader-steps", type=int, default=None, help="batches timed per loader (30)")
    ap.add_argument("--eval-steps", type=int, default=None, help="batches timed for inference (20)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="untimed steps before the naive loops (5)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader / cache workers (min(8, cpus))")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op CPU threads (default: torch's; 1 with --tiny, because OpenMP teams "
                         "on a shared, oversubscribed CPU stall each other and a tiny step takes 10x longer)")
    ap.add_argument("--precision", default="auto", help="project loop precision (auto = bf16 on CUDA)")
    ap.add_argument("--naive-attn", default="eager", help="attention of the naive loop (eager = 2020 HF)")
    ap.add_argument("--naive-tf32", action="store_true", help="let the naive fp32 loop use TF32 matmuls")
    ap.add_argument("--compile", action="store_true",
                    help="add the 'compile' text variant and a compiled image variant at --batch-image")
    ap.add_argument("--text-variants", default="eager",
                    help=f"comma-separated project text loops to compare: {', '.join(TEXT_VARIANTS)}; "
                         "the fastest is reported as 'project'")
    ap.add_argument("--image-variants", default=None,
                    help="comma-separated image loops: BATCH or BATCH:MODE (MODE = default | reduce-overhead | "
                         "max-autotune-no-cudagraphs), e.g. 64,256,256:default (default: --batch-image, eager)")
    ap.add_argument("--compile-reserve", type=float, default=150.0,
                    help="seconds of --time-budget a compiled variant needs left to start")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="torch.profiler over this many steps of the first text variant (0 = off)")
    ap.add_argument("--deterministic", action="store_true", help="deterministic kernels in both loops")
    ap.add_argument("--tokens-per-word", type=float, default=TOKENS_PER_WORD)
    ap.add_argument("--lengths-file", default=None, help=".npy of real token counts (replaces the fit)")
    ap.add_argument("--text-epochs", default="10,4,3", help="text epochs for the projection scenarios")
    ap.add_argument("--image-epochs", type=int, default=20)
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds; benchmarks not started by then are skipped (default 360 with --all)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--data-dir", default=None, help="where synthetic JPEGs + cache go (default: a temp dir)")
    ap.add_argument("--keep-data", action="store_true")
    args = ap.parse_args(argv)
    if not args.all and not args.model:
        ap.error("give --model NAME or --all")
    tiny = args.tiny
    # tiny: every code path once, at sizes a loaded 2-core CPU gets through in seconds
    defaults = dict(seq_len=32 if tiny else 256, batch_text=4 if tiny else 32, eval_batch_text=8 if tiny else 256, batch_image=2 if tiny else 64,
                    image_size=32 if tiny else 224, cache_size=40 if tiny else 256,
                    image_side=64 if tiny else IMAGE_SIDE,
                    n_images=16 if tiny else 2048, steps=2 if tiny else 40, project_steps=4 if tiny else 200,
                    naive_image_steps=1 if tiny else 40, project_image_steps=1 if tiny else 80,
                    loader_steps=2 if tiny else 30, eval_steps=1 if tiny else 20, warmup_steps=1 if tiny else 5,
                    workers=0 if tiny else min(8, os.cpu_count() or 1))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.batch is not None:  # --batch applies to the benchmark named by --model
        args.batch_text = args.batch_image = args.batch
    args.naive_steps = args.steps
    if args.time_budget is None and args.all and not tiny:
        args.time_budget = 360.0
    if args.model:
        args.model = ALIASES.get(args.model, args.model)
        if args.model not in TEXT_MODELS and args.model != "image-loader":
            args.image_model = args.image_model or args.model  # any other name: a timm image model
    args.image_model = args.image_model or IMAGE_MODEL
    args.text_epochs = tuple(int(e) for e in str(args.text_epochs).split(",") if e.strip())
    args.text_variants = [v.strip() for v in str(args.text_variants).split(",") if v.strip()]
    if args.compile and "compile" not in args.text_variants:
        args.text_variants.append("compile")
    bad = [v for v in args.text_variants if v not in TEXT_VARIANTS]
    if bad or not args.text_variants:
        ap.error(f"--text-variants: unknown {bad} (choose from {', '.join(TEXT_VARIANTS)})")
    variants = []
    for item in (str(args.image_variants).split(",") if args.image_variants else [str(args.batch_image)]):
        b, _, mode = item.strip().partition(":")
        try:
            variants.append((int(b), mode or None))
        except ValueError:
            ap.error(f"--image-variants: {item!r} is not BATCH or BATCH:MODE")
    if args.compile and not args.image_variants:
        variants.append((args.batch_image, "default"))
    args.image_variants = variants
    return args


def result_path(out_dir: Path, dev_name: str, tiny: bool) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dev_name).strip("-") or "device"
    stamp = _dt.datetime.now().strftime("%Y-%m-%d")
    base = f"{slug}-{stamp}{'-tiny' if tiny else ''}"
    p = out_dir / f"{base}.json"
    if p.exists():
        p = out_dir / f"{base}-{_dt.datetime.now().strftime('%H%M%S')}.json"
    return p


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    args._t_start = t_start  # the variants check the time budget too
    device = resolve_device(args.device)
    threads = args.threads if args.threads is not None else (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32 = bool(args.naive_tf32)
    dev_name = device_name(device)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = result_path(out_dir, dev_name, args.tiny)
    names = [args.image_model if n == IMAGE_MODEL else n for n in ALL_BENCHMARKS] if args.all else [args.model]
    log(f"== train_throughput on {dev_name} ({device}); benchmarks: {', '.join(names)}")
    result = {"device": dev_name, "date": _dt.datetime.now().isoformat(timespec="seconds"),
              "versions": versions(), "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
              "length_fit": dict(zip(("mu", "sigma"), lognormal_fit()), median_words=MEDIAN_WORDS,
                                 max_words=MAX_WORDS, tokens_per_word=args.tokens_per_word,
                                 special_tokens=SPECIAL_TOKENS),
              "peak": None, "benchmarks": {}, "skipped": [], "errors": {}, "projection": None, "markdown": []}

    def save():
        atomic_write_json(out_file, result)

    def partial(name, r):
        result["benchmarks"][name] = r
        result["projection"] = project_full_run(result["benchmarks"], args.text_epochs, args.image_epochs,
                                                args.image_model)
        save()
    args._partial = partial

    try:
        result["peak"] = measure_matmul_tflops(device, args.tiny)
    except Exception:
        traceback.print_exc()
        result["errors"]["peak"] = traceback.format_exc()
        result["peak"] = {"dtype": None, "n": 0, "measured_tflops": float("nan"), "nominal_bf16_tflops": None}
    pk = result["peak"]
    log(f"   matmul {pk['dtype']}: {pk['measured_tflops']:.1f} TFLOP/s measured"
        + (f", {pk['nominal_bf16_tflops']:.0f} nominal" if pk.get("nominal_bf16_tflops") else ""))
    save()
    state: dict = {}
    try:
        for name in names:
            elapsed = time.perf_counter() - t_start
            if args.time_budget and elapsed > args.time_budget:
                log(f"-- {name}: skipped ({elapsed:.0f}s elapsed > budget {args.time_budget:.0f}s)")
                result["skipped"].append(name)
                continue
            log(f"-- {name}")
            t0 = time.perf_counter()
            try:
                if name in TEXT_MODELS:
                    r = bench_text(name, args, device, pk)
                elif name == "image-loader":
                    r = bench_image_loader(args, device, pk, state)
                else:
                    r = bench_image(name, args, device, pk, state)
                r["wall_seconds"] = time.perf_counter() - t0
                result["benchmarks"][name] = r
                if "speedup_train" in r:
                    log(f"    speedup : {r['speedup_train']:.2f}x train, {r['speedup_eval']:.2f}x eval; "
                        f"MFU naive {100 * r['naive']['train_mfu_vs_measured']:.1f}% / project "
                        f"{100 * r['project']['train_mfu_vs_measured']:.1f}% of measured matmul peak "
                        f"[{r['wall_seconds']:.1f}s]")
            except Exception:
                tb = traceback.format_exc()
                log(f"    FAILED:\n{tb}")
                result["errors"][name] = tb
                free_memory()
            result["projection"] = project_full_run(result["benchmarks"], args.text_epochs, args.image_epochs,
                                                    args.image_model)
            save()
    finally:
        if "image_root" in state and not args.keep_data and not args.data_dir:
            shutil.rmtree(state["image_root"], ignore_errors=True)

    lr = result["benchmarks"].get("image-loader")
    im = result["benchmarks"].get(args.image_model)
    if lr and im:
        # can the input pipeline feed the model? >1: the loader keeps up; <1: the GPU waits for it
        lr["naive_loader_over_project_model"] = lr["naive_jpeg_images_per_s"] / im["project"]["train_samples_per_s"]
        lr["cached_loader_over_project_model"] = lr["cached_uint8_images_per_s"] / im["project"]["train_samples_per_s"]
    result["markdown"] = markdown_rows(result)
    result["total_seconds"] = time.perf_counter() - t_start
    save()

    log("")
    for row in result["markdown"]:
        log(row)
    proj = result["projection"] or {"scenarios": {}}
    log("")
    log("Projected full 5-fold run on this device (hours):")
    for sc_name, sc in proj["scenarios"].items():
        n, p = sc["naive"], sc["project"]
        extra = f"  speedup {sc['speedup']:.1f}x" if "speedup" in sc else "  (partial: " + \
            ", ".join(sorted(set(n["missing"] + p["missing"]))) + " missing)"
        log(f"  {sc_name:26s} naive {n['total_hours']:8.2f} h   project {p['total_hours']:8.2f} h{extra}")
    if lr and "naive_loader_over_project_model" in lr:
        log(f"Input pipeline vs project image model: naive JPEG loader {lr['naive_loader_over_project_model']:.2f}x, "
            f"cached loader {lr['cached_loader_over_project_model']:.2f}x of what the model consumes")
    log(f"\nresults: {out_file}  ({result['total_seconds']:.0f}s total; "
        f"{len(result['errors'])} error(s), {len(result['skipped'])} skipped)")
    return 1 if result["errors"] and not result["benchmarks"] else 0


if __name__ == "__main__":
    sys.exit(main())
