#!/usr/bin/env python
"""Projection of the full 5-fold thesis run from several result files of one device.

A GPU lease rarely fits every variant of every model in one suite, so the figures come from several
``train_throughput.py`` runs. This takes, per model, the naive loop of the first file that has it and
the fastest project variant of any file (text: at the benchmark's batch; image: any batch), then
prints the projection table that ``train_throughput.py`` prints for one run.

    python benchmarks/project_from_results.py benchmarks/results/NVIDIA-H200-2026-11-27-*.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from throughput.common import IMAGE_MODEL, TEXT_MODELS
from throughput.projection import project_full_run


def merge(files: list[Path]) -> tuple[dict, dict]:
    """(benchmarks dict for project_full_run, where each figure came from)."""
    merged: dict = {}
    source: dict = {}
    devices = set()
    for f in files:
        res = json.loads(Path(f).read_text())
        devices.add(res["device"])
        for name, r in res["benchmarks"].items():
            if "naive" not in r:
                continue
            m = merged.setdefault(name, {"naive": r["naive"], "batch": r.get("batch")})
            source.setdefault(name, {"naive": f"{Path(f).name}"})
            variants = r.get("variants") or ({"project": r["project"]} if "project" in r else {})
            for vname, v in variants.items():
                if "train_samples_per_s" not in v:
                    continue
                if name in TEXT_MODELS and v.get("batch", r.get("batch")) != r.get("batch"):
                    continue  # off the thesis batch: reported, never projected
                if "project" not in m or v["train_samples_per_s"] > m["project"]["train_samples_per_s"]:
                    m["project"] = dict(v, variant=vname)
                    source[name]["project"] = f"{Path(f).name}:{vname}"
            if r.get("cache_build_images_per_s"):
                m["cache_build_images_per_s"] = r["cache_build_images_per_s"]
    if len(devices) > 1:
        raise SystemExit(f"results come from different devices {sorted(devices)}: project one device at a time")
    return merged, source


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--text-epochs", default="10,4,3")
    ap.add_argument("--image-epochs", type=int, default=20)
    ap.add_argument("--image-model", default=IMAGE_MODEL)
    args = ap.parse_args(argv)
    merged, source = merge(args.files)
    for name, s in source.items():
        if name in merged and "project" in merged[name]:
            p, n = merged[name]["project"], merged[name]["naive"]
            print(f"{name:30s} naive {n['train_samples_per_s']:8.1f}/s ({s['naive']})   project "
                  f"{p['train_samples_per_s']:8.1f}/s train, {p['eval_samples_per_s']:8.1f}/s eval ({s['project']})")
    epochs = tuple(int(e) for e in args.text_epochs.split(","))
    proj = project_full_run(merged, epochs, args.image_epochs, args.image_model)
    print("\nProjected full 5-fold run (hours):")
    for sc_name, sc in proj["scenarios"].items():
        n, p = sc["naive"], sc["project"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in p["hours"].items())
        extra = f"speedup {sc['speedup']:.1f}x" if "speedup" in sc else "partial"
        print(f"  {sc_name:24s} naive {n['total_hours']:6.2f} h  project {p['total_hours']:6.2f} h  {extra}  ({parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
