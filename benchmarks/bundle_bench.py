"""Size, memory, load time and speed of a model bundle (``export.py``'s output), in this process.

    OMP_NUM_THREADS=2 python benchmarks/bundle_bench.py --bundle B --products X_test.csv --images DIR \
        [--batch 32 --batches 10 --single 20 --n-train 3000 --out benchmarks/results/]

Measures, on the cores this process may use (``--threads``, default 2):

- size: bytes on disk, per member and in total;
- load: seconds of ``Bundle(path)`` (wall and CPU: on a shared machine the CPU seconds are the
  steadier figure), and the peak resident memory (RSS) after it;
- predict: products/s over ``--batches`` calls of ``--batch`` products and the latency of
  ``--single`` one-product calls, after one warm-up call; the peak RSS after them;
- time outside the backbones: each feature source's frozen backbone (``Bundle.sources``) is timed
  around its ``forward``; the rest of a request (tokenising, image decoding, heads, TF-IDF, kNN,
  stackers, bookkeeping) is reported as a share of the request;
- a projection to ``--project-to`` training products (default 85,000, the challenge's): what grows
  with the training set is the kNN members' neighbour banks (rows x width) and a kNN vote's transient
  (a request's similarities to every bank row, with their tie keys); the backbones, TF-IDF
  vocabularies (capped by ``tfidf.max_features``), heads and stackers do not. Their in-memory sizes
  are measured here (numpy arrays and sparse matrices reachable from each fold model) and the banks
  scaled by ``project_to / n_train``.

Writes ``<host>-<date>-bundle-bench.json`` under ``--out`` when given and prints one table row.
Only the public ``rakuten.bundle`` API is used, so the same script measures an older checkout
(``PYTHONPATH=<old>/src``) for a before/after comparison.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_sizes(path: Path) -> dict[str, int]:
    """Bytes on disk per top-level entry of the bundle (members/<name> and features/<name> apart)."""
    out: dict[str, int] = {}
    for f in path.rglob("*"):
        if f.is_file():
            parts = f.relative_to(path).parts
            key = "/".join(parts[:2]) if parts[0] in ("members", "features") and len(parts) > 2 else parts[0]
            out[key] = out.get(key, 0) + f.stat().st_size
    return out


def array_bytes(obj, seen: set | None = None, depth: int = 0) -> tuple[int, int]:
    """(bytes of the numpy arrays and scipy sparse matrices reachable from ``obj``, of which in
    neighbour banks): dicts, lists, tuples and object attributes are followed, each array once."""
    from scipy import sparse

    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return 0, 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes, 0
    if sparse.issparse(obj):
        return sum(getattr(obj, a).nbytes for a in ("data", "indices", "indptr") if hasattr(obj, a)), 0
    total = bank = 0
    items = []
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = list(vars(obj).items())
    for k, v in items:
        t, b = array_bytes(v, seen, depth + 1)
        total += t
        bank += t if str(k) in ("bank", "bank_", "bank_rows", "bank_labels", "labels_") else b
    return total, bank


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle folder (export.py --out)")
    p.add_argument("--products", required=True, help="products in the challenge's X CSV format")
    p.add_argument("--images", default=None, help="folder of the products' images")
    p.add_argument("--batch", type=int, default=32, help="products per batched predict call")
    p.add_argument("--batches", type=int, default=10, help="batched calls timed")
    p.add_argument("--single", type=int, default=20, help="one-product calls timed")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the cores measured on)")
    p.add_argument("--n-train", type=int, default=3000, help="training products the bundle's run had")
    p.add_argument("--project-to", type=int, default=85000, help="training products to project memory to")
    p.add_argument("--label", default="", help="a name for this measurement (before, after, ...)")
    p.add_argument("--out", default=None, help="folder for the JSON result")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from rakuten.bundle import Bundle, read_products

    rss0 = peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    b = Bundle(args.bundle)
    load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_load = peak_rss_mib()

    # time inside the frozen backbones' forwards (the feature sources)
    inside = [0.0]
    for src in b.sources.values():
        model = src["model"]
        fwd = model.forward

        def timed(*a, _fwd=fwd, **k):
            s = time.perf_counter()
            try:
                return _fwd(*a, **k)
            finally:
                inside[0] += time.perf_counter() - s
        model.forward = timed

    prods = read_products(args.products, args.images)
    n = len(prods)
    b.predict(prods.iloc[: min(args.batch, n)].reset_index(drop=True))    # warm-up
    rss_warm = peak_rss_mib()
    inside[0] = 0.0
    t_batches, c_batches, done = 0.0, 0.0, 0
    for i in range(args.batches):
        rows = (np.arange(args.batch) + i * args.batch) % n
        t, c = time.perf_counter(), time.process_time()
        b.predict(prods.iloc[rows].reset_index(drop=True))
        t_batches += time.perf_counter() - t
        c_batches += time.process_time() - c
        done += len(rows)
    inside_batches = inside[0]
    single = []
    for i in range(args.single):
        t = time.perf_counter()
        b.predict(prods.iloc[[i % n]].reset_index(drop=True))
        single.append(time.perf_counter() - t)
    rss_pred = peak_rss_mib()

    sizes = dir_sizes(Path(args.bundle))
    member_bytes, bank_bytes = {}, {}
    for name, m in b.members.items():
        total, bank = array_bytes(m["models"])
        member_bytes[name], bank_bytes[name] = total, bank
    banks = sum(bank_bytes.values())
    # a kNN vote on a shared bank works on the request's similarities to all its rows: float32
    # similarities, the fold's columns, and float64/int64 tie keys, ~32 bytes per (product, row), a
    # transient that grows with the training set too (the memo keeps the last 4 bytes per pair)
    transient = max([args.batch * keep["bank"].shape[0] * 32
                  for m in b.members.values() for keep in m["models"].values()
                  if isinstance(keep, dict) and keep.get("bank_rows") is not None] or [0])
    scale = args.project_to / args.n_train
    res = {
        "label": args.label, "host": platform.node(), "threads": args.threads, "n_products": n,
        "disk_mib": round(sum(sizes.values()) / 2**20, 1),
        "disk_by_entry_mib": {k: round(v / 2**20, 2) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])},
        "load_s": round(load_s, 2), "load_cpu_s": round(load_cpu, 2), "rss_before_load_mib": round(rss0), "peak_rss_after_load_mib": round(rss_load),
        "peak_rss_after_warmup_mib": round(rss_warm), "peak_rss_mib": round(rss_pred),
        "batch": args.batch, "products_per_s": round(done / t_batches, 1),
        "products_per_cpu_s": round(done / c_batches, 1),
        "single_ms_p50": round(float(np.median(single)) * 1000, 1),
        "outside_backbones_share": round(1 - inside_batches / t_batches, 3),
        "member_array_mib": {k: round(v / 2**20, 2) for k, v in member_bytes.items()},
        "knn_bank_mib": round(banks / 2**20, 2), "knn_vote_transient_mib": round(transient / 2**20, 2),
        "projection": {"n_train": args.n_train, "to": args.project_to,
                       "knn_bank_mib": round(banks * scale / 2**20, 1),
                       "knn_vote_transient_mib": round(transient * scale / 2**20, 1),
                       "peak_rss_mib": round(rss_pred + (banks + transient) * (scale - 1) / 2**20)},
    }
    print(json.dumps(res, indent=1))
    print(f"| {args.label} | {res['disk_mib']} MiB | {res['peak_rss_mib']} MiB | {res['load_s']} s "
          f"({res['load_cpu_s']} s CPU) | {res['products_per_s']} ({res['products_per_cpu_s']} per CPU s) | "
          f"{res['single_ms_p50']} ms | {res['outside_backbones_share']:.0%} | "
          f"{res['projection']['peak_rss_mib']} MiB |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        f = out / f"{platform.node()}-{time.strftime('%Y%m%d')}-bundle-bench{'-' + args.label if args.label else ''}.json"
        f.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
