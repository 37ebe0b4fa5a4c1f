"""Label-noise cleaning and pseudo-labels, measured on real labelled products.

    python benchmarks/label_noise_real.py --data ../shared/data/rakuten_text_fr [--exp tfidf_svm_text]

One experiment (default ``tfidf_svm_text``: TF-IDF + LinearSVC, under a minute for 5 folds on 2
cores) on the frozen 5 folds, then:
1. cleanlab on its OOF probabilities (``src/find_label_issues.py``);
2. the same config retrained with ``data.label_issues`` (drop at two fractions of the flagged rows,
   relabel, downweight);
3. the same config with ``train.pseudo_labels`` from the baseline at two thresholds.
Every variant is scored by its OOF on the *given* (uncleaned) labels and by its bagged test
prediction on the test split's labels (``test_labels/Y_test.csv``, never read by the pipeline).
JSON goes to ``benchmarks/results/label_noise_<data>.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np


from rakuten.paths import Paths

RESULTS = Path(__file__).resolve().parent / "results"


def run_variant(paths, ds, base: str, name: str, overrides: list[str]) -> dict:
    from rakuten.experiment import load_experiment
    from rakuten.training.fold import run_fold
    cfg = load_experiment(base, [f"name={name}"] + overrides)
    t0 = time.time()
    facts = []
    for k in range(int(cfg.folds.k)):
        s = run_fold(cfg, paths, k, ds=ds, progress=False)
        facts.append({key: s[key] for key in ("label_issues", "pseudo_labels") if key in s})
    return {"seconds": round(time.time() - t0, 1), "per_fold": facts}


def score(paths, ds, name: str, y_test) -> dict:
    from real_data import f1s
    from rakuten.artifacts import Experiment
    from rakuten.lineage import fold_file
    e = Experiment(paths.oof_dir, name)
    _, folds_df, _ = fold_file(paths, e)
    oof = e.load_oof(folds_df)   # fold k's rows with their given labels: never cleaned
    test = e.load_test(sorted(int(k) for k in folds_df["fold"].unique()), ids=ds.test["id"].to_numpy(np.int64),
                       average="probs")
    return {"oof": f1s(folds_df["label"].to_numpy(), oof.logits.argmax(1)),
            "test": f1s(y_test, test.logits.argmax(1))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--exp", default="tfidf_svm_text")
    p.add_argument("--workdir", default=None, help="default: /tmp/label_noise_<data>")
    p.add_argument("--fracs", default="0.5,1.0", help="fractions of the flagged rows to drop")
    p.add_argument("--thresholds", default="0.9,0.7", help="pseudo-label thresholds")
    args = p.parse_args(argv)
    from real_data import test_labels
    from rakuten.cli import setup_logging
    from rakuten.data.prepared import load_dataset
    from rakuten.folds import folds_path, make_folds, write_folds
    from rakuten.training.cleaning import label_issue_table
    setup_logging()
    data = Path(args.data).resolve()
    paths = Paths.make(args.workdir or f"/tmp/label_noise_{data.name}", data)
    ds = load_dataset(paths)
    fp = folds_path(paths.folds_dir, 5, 42)
    write_folds(make_folds(ds.train, 5, 42), fp, 5, 42, extra={"data_dir": str(data)})
    y_test = test_labels(data, ds)
    base = args.exp
    rows = []
    t = run_variant(paths, ds, base, base, [])
    rows.append({"variant": "baseline", "experiment": base, **t, **score(paths, ds, base, y_test)})

    from rakuten.artifacts import Experiment, atomic_write_csv
    from rakuten.lineage import fold_file
    e = Experiment(paths.oof_dir, base)
    _, folds_df, _ = fold_file(paths, e)
    oof = e.load_oof(folds_df)
    t0 = time.time()
    issues = label_issue_table(oof.ids, folds_df["label"].to_numpy(), oof.logits, ds.label_map)
    atomic_write_csv(e.dir / "label_issues.csv", issues, index=False)
    n_flagged = len(issues)
    find_s = round(time.time() - t0, 1)
    rel = f"oof/{base}/label_issues.csv"
    variants = [(f"drop {f:g} of flagged", f"{base}_drop{int(f * 100)}",
                 [f"data.label_issues.file={rel}", "data.label_issues.action=drop", f"data.label_issues.frac={f}"])
                for f in map(float, args.fracs.split(","))]
    variants += [("relabel 0.5 of flagged", f"{base}_relabel50",
                  [f"data.label_issues.file={rel}", "data.label_issues.action=relabel", "data.label_issues.frac=0.5"]),
                 ("downweight all flagged x0.25", f"{base}_down25",
                  [f"data.label_issues.file={rel}", "data.label_issues.action=downweight", "data.label_issues.frac=1.0",
                   "data.label_issues.weight=0.25"])]
    variants += [(f"pseudo-labels >= {th:g} (fold source)", f"{base}_pl{int(th * 100)}",
                  [f"train.pseudo_labels.from={base}", f"train.pseudo_labels.threshold={th}"])
                 for th in map(float, args.thresholds.split(","))]
    for label, name, ov in variants:
        t = run_variant(paths, ds, base, name, ov)
        rows.append({"variant": label, "experiment": name, "overrides": ov, **t, **score(paths, ds, name, y_test)})
        print(f"{label}: {rows[-1]['oof']} {rows[-1]['test']}", flush=True)
    out = {"date": str(date.today()), "data": str(data), "n_train": len(ds.train), "n_test": len(ds.test),
           "experiment": base, "n_flagged": n_flagged, "flagged_frac": round(n_flagged / len(ds.train), 4),
           "find_seconds": find_s, "host": platform.node(), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"label_noise_{data.name}.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"| variant | OOF macro-F1 | OOF weighted-F1 | test macro-F1 | test weighted-F1 |")
    for r in rows:
        print(f"| {r['variant']} | {r['oof']['macro_f1']:.4f} | {r['oof']['weighted_f1']:.4f} | "
              f"{r['test']['macro_f1']:.4f} | {r['test']['weighted_f1']:.4f} |")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
