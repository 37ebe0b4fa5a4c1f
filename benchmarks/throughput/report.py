"""What the result JSON records beside the figures (library versions), its markdown table and its
file name.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch

from throughput.common import ROOT


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


def result_path(out_dir: Path, dev_name: str, tiny: bool, tag: str | None = None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dev_name).strip("-") or "device"
    stamp = _dt.datetime.now().strftime("%Y-%m-%d")
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", tag).strip("-") if tag else ""
    base = f"{slug}-{stamp}{'-tiny' if tiny else ''}{'-' + tag if tag else ''}"
    p = out_dir / f"{base}.json"
    if p.exists():
        p = out_dir / f"{base}-{_dt.datetime.now().strftime('%H%M%S')}.json"
    return p
