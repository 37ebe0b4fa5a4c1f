"""Build a text-only dataset of real-sized products for timing the cpu preset.

Resamples the real sample rows (``../shared/data/rakuten_sample``: real titles and HTML descriptions,
so real text lengths) with replacement into N train / M test rows with fresh unique ids and no
images, in the ChallengeData file format. For timing only: repeated rows make its scores meaningless.

    python benchmarks/make_realsize_text.py --out /tmp/realsize --n-train 15000 --n-test 2000
    python src/run_all.py --preset cpu_text --data-dir /tmp/realsize --workdir /tmp/realsize_run
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten_sample"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sample", default=str(SAMPLE), help="folder with the real sample CSVs")
    p.add_argument("--n-train", type=int, default=15000, help="train rows")
    p.add_argument("--n-test", type=int, default=2000, help="test rows")
    p.add_argument("--seed", type=int, default=0, help="resampling seed")
    p.add_argument("--label-noise", type=float, default=0.1,
                   help="share of train labels replaced by another code, so that no model is perfect on the "
                        "repeated rows and early stopping behaves as on real data (default 0.1)")
    a = p.parse_args()
    src = Path(a.sample)
    x = pd.read_csv(src / "X_train_update.csv", index_col=0)
    y = pd.read_csv(src / "Y_train_CVw08PX.csv", index_col=0)
    rng = np.random.default_rng(a.seed)
    n = a.n_train + a.n_test
    take = rng.integers(0, len(x), size=n)
    out = x.iloc[take].reset_index(drop=True)
    # unique 10-digit ids: a random offset plus distinct strides (no 4-billion-element arange)
    out["productid"] = 10**9 + np.sort(rng.choice(10 * n, size=n, replace=False)) * 7 + 3
    out["imageid"] = 2 * 10**9 + rng.permutation(n).astype(np.int64) * 11 + 5
    codes = y["prdtypecode"].to_numpy()[take].copy()
    noisy = rng.random(n) < a.label_noise
    codes[noisy] = rng.choice(np.unique(codes), size=int(noisy.sum()))
    d = Path(a.out)
    d.mkdir(parents=True, exist_ok=True)
    tr, te = out.iloc[:a.n_train], out.iloc[a.n_train:]
    te.index = pd.RangeIndex(a.n_train, n)
    tr.to_csv(d / "X_train_update.csv")
    te.to_csv(d / "X_test_update.csv")
    pd.DataFrame({"prdtypecode": codes[:a.n_train]}).to_csv(d / "Y_train_CVw08PX.csv")
    words = (out["designation"].fillna("") + " " + out["description"].fillna("")).str.split().str.len()
    print(f"wrote {d}: {a.n_train} train / {a.n_test} test rows, words per product median "
          f"{int(words.median())}, p99 {int(words.quantile(0.99))}, max {int(words.max())}")


if __name__ == "__main__":
    main()
