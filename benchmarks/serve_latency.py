"""Latency and throughput of ``src/serve.py`` over a bundle, end to end through the real uvicorn server.

    python benchmarks/serve_latency.py --bundle bundle/ --products data/demo/X_test_update.csv \
        --images data/demo/image_test [--single 200 --batches 30 --out benchmarks/results/]

Starts the server on a loopback port, warms it up, then times ``--single`` requests of one product
and ``--batches`` requests of 32 products, sent one after another from one client (so the numbers are
the service time, not a queue). Products are drawn in turn from ``--products`` (challenge X format),
images inlined as base64. Writes ``<host>-<date>-serve-latency.json`` with p50/p95/p99 (ms) and
throughput (products/s) for each, and prints a table.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def products(path: Path, images: Path | None) -> list[dict]:
    x = pd.read_csv(path, index_col=0)
    out = []
    for _, r in x.iterrows():
        p = {"title": str(r["designation"]), "productid": int(r["productid"]), "imageid": int(r["imageid"])}
        if isinstance(r["description"], str):
            p["description"] = r["description"]
        f = None if images is None else images / f"image_{r['imageid']}_product_{r['productid']}.jpg"
        if f is not None and f.exists():
            p["image_base64"] = base64.b64encode(f.read_bytes()).decode()
        out.append(p)
    return out


def stats(seconds: list[float], per_request: int) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"requests": len(ms), "products_per_request": per_request,
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "throughput_products_per_s": round(per_request * len(ms) / (ms.sum() / 1000), 1)}


def main(argv=None) -> int:
    import httpx

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--products", required=True)
    p.add_argument("--images", default=None)
    p.add_argument("--single", type=int, default=200)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    prods = products(Path(args.products), Path(args.images) if args.images else None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(REPO / "src" / "serve.py"), "--bundle", args.bundle,
                             "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=120) as c:
            while True:
                try:
                    if c.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    if proc.poll() is not None:
                        raise SystemExit("server exited before answering /health")
                    time.sleep(0.25)
            startup = time.time() - t0
            version = c.get(f"{base}/model").json()["model_version"]
            for i in range(5):   # warm-up: first calls build lazy state
                c.post(f"{base}/predict", json=prods[i % len(prods)]).raise_for_status()
            single, batch = [], []
            for i in range(args.single):
                t = time.perf_counter()
                c.post(f"{base}/predict", json=prods[i % len(prods)]).raise_for_status()
                single.append(time.perf_counter() - t)
            for i in range(args.batches):
                chunk = [prods[(i * 32 + j) % len(prods)] for j in range(32)]
                t = time.perf_counter()
                c.post(f"{base}/predict", json={"products": chunk}).raise_for_status()
                batch.append(time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res = {"model_version": version, "bundle": str(args.bundle), "host": platform.node(),
           "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],   # shared machines: context
           "startup_s": round(startup, 1), "single": stats(single, 1), "batch32": stats(batch, 32),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{platform.node() or 'host'}-{time.strftime('%Y-%m-%d')}-serve-latency.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{version}: server up in {res['startup_s']} s")
    for k in ("single", "batch32"):
        r = res[k]
        print(f"  {k:8s} p50 {r['p50_ms']} ms  p95 {r['p95_ms']} ms  p99 {r['p99_ms']} ms  "
              f"{r['throughput_products_per_s']} products/s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
