"""Ablations on real data, each variant a full 5-fold run of one experiment on the frozen folds:
weak-class losses (class-weighted CE, focal, balanced sampler), early stopping on fold k vs an inner
split, int8 vs fp32 frozen extraction. Scores: OOF and test macro-F1, and per-class F1 of the five
weakest codes (weakest for the first variant's OOF).

    python benchmarks/real_ablations.py --data ../shared/data/rakuten_text_fr --workdir /tmp/rakuten_real_rakuten_text_fr_cpu

Reuses the workdir of ``real_data.py`` (its fold file and feature caches); variants are written as
separate experiments (``<exp>__<variant>``), so nothing of the preset's run is touched.
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np


from real_data import RESULTS, f1s, test_labels
from rakuten.artifacts import Experiment
from rakuten.cli import quiet_progress, setup_logging
from rakuten.labels import CODES
from rakuten.paths import Paths

SUITES = {
    "weak_classes": ("text_e5_text", {
        "ce": [],
        "ce_w0.5": ["loss.class_weight_power=0.5"],
        "ce_w1.0": ["loss.class_weight_power=1.0"],
        "focal": ["loss.name=focal"],
        "balanced_sampler": ["train.sampler=balanced", "train.balanced_power=0.5"],
    }),
    "weak_classes_svm": ("tfidf_svm_text", {
        "unweighted": [],
        "w0.5": ["loss.class_weight_power=0.5"],
    }),
    "early_stop": ("text_e5_text", {
        "inner": ["train.early_stop=inner"],
        "fold": ["train.early_stop=fold"],
    }),
    "int8": ("text_e5_text_lr", {
        "int8": ["model.cpu_int8=true"],
        "fp32": ["model.cpu_int8=false"],
    }),
}


def run_variant(base: str, variant: str, overrides: list[str], paths: Paths, ds, y_test) -> dict:
    from sklearn.metrics import f1_score

    from rakuten.experiment import load_experiment
    from rakuten.lineage import fold_file
    from rakuten.reporting.leaderboard import score_experiment
    from rakuten.training.fold import run_fold

    cfg = load_experiment(base, overrides + [f"name={base}__{variant}"])
    t0 = time.time()
    for k in range(int(cfg.folds.k)):
        run_fold(cfg, paths, k, ds=ds, progress=False)
    e = Experiment(paths.oof_dir, cfg.name)
    _, y, pred = score_experiment(paths, e)
    _, folds_df, _ = fold_file(paths, cfg)
    test = e.load_test(sorted(int(k) for k in folds_df["fold"].unique()), ids=ds.test["id"].to_numpy(np.int64),
                       average="probs")
    tp = test.logits.argmax(1)
    return {"variant": variant, "overrides": overrides, "seconds": round(time.time() - t0, 1),
            "oof": f1s(y, pred), "test": f1s(y_test, tp),
            "oof_per_class": f1_score(y, pred, average=None, labels=np.arange(len(CODES))).round(4).tolist(),
            "test_per_class": f1_score(y_test, tp, average=None, labels=np.arange(len(CODES))).round(4).tolist()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    setup_logging(False)
    quiet_progress(True)
    from rakuten.data.prepared import load_dataset
    from rakuten.folds import folds_path, make_folds, write_folds

    paths = Paths.make(args.workdir, args.data)
    ds = load_dataset(paths)
    write_folds(make_folds(ds.train, 5, 42), folds_path(paths.folds_dir, 5, 42), 5, 42)
    y_test = test_labels(args.data.resolve(), ds)
    res = {"data": args.data.name, "date": str(date.today()), "suites": {}}
    for suite in args.suites.split(","):
        base, variants = SUITES[suite]
        rows = [run_variant(base, v, ov, paths, ds, y_test) for v, ov in variants.items()]
        weakest = np.argsort(rows[0]["oof_per_class"])[:5]
        for r in rows:
            r["weakest5"] = {str(CODES[c]): {"oof": r["oof_per_class"][c], "test": r["test_per_class"][c]} for c in weakest}
        res["suites"][suite] = {"experiment": base, "variants": rows}
        print(f"\n{suite} ({base}); weakest codes {[CODES[c] for c in weakest]}")
        print("| variant | OOF macro-F1 | test macro-F1 | test weighted-F1 | " + " | ".join(f"{CODES[c]} OOF F1" for c in weakest) + " |")
        for r in rows:
            print(f"| {r['variant']} | {r['oof']['macro_f1']:.4f} | {r['test']['macro_f1']:.4f} | {r['test']['weighted_f1']:.4f} | "
                  + " | ".join(f"{r['oof_per_class'][c]:.3f}" for c in weakest) + " |", flush=True)
    out = args.out or RESULTS / f"real_ablations_{args.data.name}_{res['date']}.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
