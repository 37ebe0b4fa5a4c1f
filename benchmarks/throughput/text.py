"""Text benchmark: naive padded fp32 loop vs the project's Engine on length-grouped batches, one run
per ``--text-variants`` entry.
"""
from __future__ import annotations

import time
import traceback

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from rakuten.data.text_dataset import PackCollate
from rakuten.training.distributed import EpochShuffleSampler
from rakuten.training.engine import Engine, make_optimizer, seed_everything
from rakuten.training.loaders import EpochBatchSampler
from rakuten.training.samplers import LengthGroupedBatchSampler, pad_collate

from throughput.common import N_CLASSES, TEXT_MODELS, free_memory, log, sample_token_lengths, sync
from throughput.flops import count_step_flops, mfu
from throughput.loops import naive_predict, naive_train_steps, profile_steps, run_variants, timed_epochs
from throughput.models import build_text_model


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


def text_batch(raw, device):
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
    r = naive_train_steps(model, naive_loader, device, args.warmup_steps, steps, text_batch)
    sps = steps * bs / r["seconds"]
    executed = steps * bs * float(flops_row(seq))
    useful = steps * bs * useful_per_row
    naive = {"attn": attn_naive, "precision": "fp32", "train_samples_per_s": sps, "train_seconds": r["seconds"],
             "train_steps": steps, **train_mfu(useful, executed, r["seconds"], peak)}
    eval_loader = DataLoader(TensorDataset(x, m, y), batch_size=2 * bs, shuffle=False)
    ev = naive_predict(model, eval_loader, device, args.eval_steps, text_batch)
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
    run_variants(args, name, res, variants, same_batch=True)
    if "project" not in res:
        raise RuntimeError(f"no project variant at batch {bs} succeeded: {list(res['variants'])}")
    return res


def train_mfu(useful: float, executed: float, seconds: float, peak: dict) -> dict:
    """MFU fields of a timed text run. ``train_mfu_*`` and ``train_achieved_tflops`` count the FLOPs of
    real tokens only (padding excluded), so a loop is credited for useful work and packing shows what
    it buys; ``train_executed_*`` count every token slot the encoder ran (padding included).
    ``train_useful_mfu_vs_measured`` repeats the real-token figure under its pre-2026-12 name."""
    out = {f"train_{k}": v for k, v in mfu(useful, seconds, peak).items()}
    out.update({f"train_executed_{k}": v for k, v in mfu(executed, seconds, peak).items()})
    out["train_useful_mfu_vs_measured"] = out["train_mfu_vs_measured"]
    out["padding_frac_executed"] = 1.0 - useful / executed if executed > 0 else float("nan")
    return out


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
    # sequence packing (data.packing=true, train.sampler=random): the batch's texts share rows of
    # --seq-len tokens, each isolated by a block mask; only the number of rows varies between batches
    "packed": {"compile": False, "pad": 8, "packing": True},
    "packed-b128": {"compile": False, "pad": 8, "packing": True, "batch": 128},
    # pad 32: the per-product unpack width (longest text rounded up) takes few values, so few graphs
    "packed-cudagraphs": {"compile": "reduce-overhead", "pad": 32, "packing": True},
    "packed-cudagraphs-b128": {"compile": "reduce-overhead", "pad": 32, "packing": True, "batch": 128},
}


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
    seq = args.seq_len
    if v.get("packing"):
        collate = PackCollate(pad_id, seq, pad_to_multiple_of=mult, max_length=seq)
        # packing pairs with shuffled batches: length-grouped ones hold similar lengths that pack badly
        # (benchmarks/padding_lengths.py)
        sampler = EpochBatchSampler(EpochShuffleSampler(len(ids), seed=0), bs)
        sampler.drop_last = True
    else:
        collate = pad_collate(pad_id, pad_to_multiple_of=mult)
        sampler = LengthGroupedBatchSampler(lengths, bs, shuffle=True, seed=0, drop_last=True)
    workers = v.get("workers", min(2, args.workers))
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate,
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    warm_s, stats, dt = timed_epochs(engine, loader, device)
    sampler.set_epoch(1)
    batches = [np.asarray(bt) for bt in sampler]
    if v.get("packing"):  # executed: R rows of T tokens per batch
        shapes = [collate.layout(lengths[bt]) for bt in batches]
        executed = float(sum(len(bins) * flops_row(T) for T, bins in shapes))
        padded = [len(bins) * T / len(bt) for bt, (T, bins) in zip(batches, shapes)]   # slots per product
    else:
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
            "mean_padded_len": float(np.mean(padded)), "packing": bool(v.get("packing")),
            **train_mfu(useful, executed, dt, peak)}
    if args.profile_steps and vname == args.text_variants[0]:
        try:
            proj["profile"] = profile_steps(engine, loader, args.profile_steps, device)
        except Exception:
            log(f"    profile failed:\n{traceback.format_exc()}")
    ebs = args.eval_batch_text
    eval_sampler = LengthGroupedBatchSampler(lengths, ebs, shuffle=False)
    eval_loader = DataLoader(ds, batch_sampler=eval_sampler, collate_fn=collate,
                             num_workers=0, pin_memory=device.type == "cuda")
    if engine._compiled:
        engine.predict(eval_loader)  # compiled: every eval shape compiles/records once, untimed
    else:
        engine.predict(DataLoader(Subset(ds, range(min(len(ds), ebs))), batch_size=ebs, collate_fn=collate))
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
        f"{proj['mean_padded_len']:.0f}{', packed' if proj['packing'] else ''}; warm-up epoch {warm_s:.0f}s, variant {proj['variant_seconds']:.0f}s)")
    del engine, model, opt, loader, eval_loader
    return proj
