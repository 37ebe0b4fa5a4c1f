#!/usr/bin/env python
"""Projection of the full 5-fold thesis run from several result files of one device.

A GPU lease rarely fits every variant of every model in one suite, so the figures come from several
``train_throughput.py`` runs. This takes, per model, the naive loop of the first file that has it and
the fastest project variant of any file (text: at the benchmark's batch; image: any batch), then
prints the projection table that ``train_throughput.py`` prints for one run.

    python benchmarks/project_from_results.py benchmarks/results/NVIDIA-H200-2026-11-27-*.json
    python benchmarks/project_from_results.py RESULTS.json --description-lengths \
        benchmarks/results/padding_lengths.json:rakuten_sample_description --out-dir benchmarks/results

Text rates measured on title lengths (``--lengths-file`` of the title set, as the GPU suite runs
them) stand for title runs only: ``--description-lengths`` then prices each description run at the
measured rate times (mean description tokens / mean measured tokens), recorded as an estimate.
``--out-dir`` writes ``<device>-<date>-projection.json``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
from pathlib import Path

import numpy as np

from throughput.common import IMAGE_MODEL, TEXT_MODELS, load_lengths
from throughput.projection import project_full_run


def merge(files: list[Path]) -> tuple[dict, dict]:
    """(benchmarks dict for project_full_run, where each figure came from)."""
    merged, source, _ = merge_with_device(files)
    return merged, source


def merge_with_device(files: list[Path]) -> tuple[dict, dict, str | None]:
    """``merge`` plus the one device the files were measured on."""
    merged: dict = {}
    source: dict = {}
    devices = set()
    for f in files:
        res = json.loads(Path(f).read_text())
        devices.add(res["device"])
        for name, r in res["benchmarks"].items():
            if "naive" not in r:
                continue
            m = merged.setdefault(name, {"naive": r["naive"], "batch": r.get("batch"),
                                         "mean_tokens": (r.get("lengths") or {}).get("mean")})
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
    return merged, source, next(iter(devices), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--text-epochs", default="10,4,3")
    ap.add_argument("--image-epochs", type=int, default=20)
    ap.add_argument("--image-model", default=IMAGE_MODEL)
    ap.add_argument("--description-lengths", default=None,
                    help="token counts of description runs (FILE.npy or padding_lengths.json:SET): the text "
                         "rates were measured on title lengths")
    ap.add_argument("--out-dir", default=None, help="write <device>-<date>-projection.json here")
    args = ap.parse_args(argv)
    merged, source, device = merge_with_device(args.files)
    factor, factor_note = 1.0, "description runs at the measured rate (the lengths it was measured on)"
    if args.description_lengths:
        desc = float(np.mean(load_lengths(args.description_lengths)))
        measured = [m["mean_tokens"] for n, m in merged.items() if n in TEXT_MODELS and m.get("mean_tokens")]
        if measured:
            factor = desc / float(np.mean(measured))
            factor_note = (f"estimated: description runs at the measured rate / {factor:.2f} (mean description tokens "
                           f"{desc:.1f} / mean measured tokens {np.mean(measured):.1f}); time taken as proportional "
                           f"to real tokens")
    for name, s in source.items():
        if name in merged and "project" in merged[name]:
            p, n = merged[name]["project"], merged[name]["naive"]
            print(f"{name:30s} naive {n['train_samples_per_s']:8.1f}/s ({s['naive']})   project "
                  f"{p['train_samples_per_s']:8.1f}/s train, {p['eval_samples_per_s']:8.1f}/s eval ({s['project']})")
    epochs = tuple(int(e) for e in args.text_epochs.split(","))
    proj = project_full_run(merged, epochs, args.image_epochs, args.image_model, description_factor=factor)
    proj["assumptions"]["description_runs"] = factor_note
    print(f"\nProjected full 5-fold run (hours; {factor_note}):")
    for sc_name, sc in proj["scenarios"].items():
        n, p = sc["naive"], sc["project"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in p["hours"].items())
        extra = f"speedup {sc['speedup']:.1f}x" if "speedup" in sc else "partial"
        print(f"  {sc_name:24s} naive {n['total_hours']:6.2f} h  project {p['total_hours']:6.2f} h  {extra}  ({parts})")
    if args.out_dir:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", device or "device").strip("-")
        out = Path(args.out_dir) / f"{slug}-{_dt.date.today().isoformat()}-projection.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        sources = {n: s for n, s in source.items() if n in merged and "project" in merged[n]}
        rates = {n: {"naive_train": m["naive"]["train_samples_per_s"], "project_train": m["project"]["train_samples_per_s"],
                     "project_eval": m["project"]["eval_samples_per_s"], "project_variant": m["project"]["variant"]}
                 for n, m in merged.items() if "project" in m}
        out.write_text(json.dumps({"device": device, "date": _dt.datetime.now().isoformat(timespec="seconds"),
                                   "files": [str(f) for f in args.files], "sources": sources, "rates": rates,
                                   "projection": proj}, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
