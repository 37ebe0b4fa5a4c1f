"""Arguments and driver of ``benchmarks/train_throughput.py``: runs the benchmarks in order within the
time budget and writes the result JSON after each one.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import time
import traceback
import warnings
from pathlib import Path

import torch

from rakuten.artifacts import atomic_write_json
from rakuten.training.engine import resolve_device

from throughput.common import (ALIASES, ALL_BENCHMARKS, IMAGE_MODEL, IMAGE_SIDE, MAX_WORDS, MEDIAN_WORDS,
                               ROOT, SPECIAL_TOKENS, TEXT_MODELS, TOKENS_PER_WORD, device_name, free_memory,
                               log, lognormal_fit)
from throughput.flops import measure_matmul_tflops
from throughput.image import bench_image, bench_image_loader
from throughput.projection import project_full_run
from throughput.report import markdown_rows, result_path, versions
from throughput.text import TEXT_VARIANTS, bench_text

DESCRIPTION = "Training throughput: the naive loop of public Rakuten solutions vs this project's Engine."


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=DESCRIPTION,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="camembert-base | flaubert/flaubert_base_cased | seresnext50_32x4d (or another timm "
                         "model name) | image-loader; several, comma-separated, run in order into one JSON")
    ap.add_argument("--tag", default=None, help="appended to the result file's name: <device>-<date>-<tag>.json")
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
    args.models = []
    if args.model:  # one name, or several comma-separated (run in order, one JSON)
        args.models = [ALIASES.get(m.strip(), m.strip()) for m in str(args.model).split(",") if m.strip()]
        args.model = args.models[0]
        for m in args.models:
            if m not in TEXT_MODELS and m != "image-loader":
                args.image_model = args.image_model or m  # any other name: a timm image model
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
    out_file = result_path(out_dir, dev_name, args.tiny, args.tag)
    names = [args.image_model if n == IMAGE_MODEL else n for n in ALL_BENCHMARKS] if args.all else args.models
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
