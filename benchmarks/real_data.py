"""Real-data benchmark: a preset end to end on real labelled products, scored on their held-out test
split, beside strong classical peers fitted on the same training rows.

    python benchmarks/real_data.py --data ../shared/data/rakuten_text_fr [--preset cpu]
    python benchmarks/real_data.py --data ../shared/data/rakuten_images_real --preset cpu

The data folder is in the ChallengeData layout with the test codes in ``test_labels/Y_test.csv``
(never read by the pipeline). Reported for every experiment of the run: OOF macro/weighted-F1 (the
frozen folds) and test macro/weighted-F1 of its bagged test prediction; for the submission file;
for the peers; and the wall time of every stage. JSON goes to ``benchmarks/results/``.

Peers (fitted on all training rows, scored on the test split):
- ``peer_tfidf_linearsvc``: TF-IDF word 1-2 + char_wb 2-5 grams + LinearSVC, C chosen by an inner
  3-fold CV on the training rows (macro-F1);
- ``peer_tfidf_svc_cal+e5_lr``: the same SVC with sigmoid-calibrated probabilities, averaged with a
  logistic regression on the preset's frozen e5 embeddings (when the run extracted them).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd


from rakuten.artifacts import Experiment
from rakuten.cli import quiet_progress, setup_logging
from rakuten.paths import Paths

RESULTS = Path(__file__).resolve().parent / "results"


def test_labels(data_dir: Path, ds) -> np.ndarray:
    """Test labels aligned with the pipeline's test rows (the X_test index is the row key)."""
    y = pd.read_csv(data_dir / "test_labels" / "Y_test.csv", index_col=0)["prdtypecode"]
    x = pd.read_csv(data_dir / "X_test_update.csv", index_col=0, usecols=[0, 3])
    codes = y.loc[x.index].to_numpy()
    by_pid = dict(zip(x["productid"].to_numpy(np.int64), codes))
    return np.array(ds.label_map.encode([by_pid[int(i)] for i in ds.test["id"].to_numpy(np.int64)]))


def f1s(y, pred) -> dict:
    from sklearn.metrics import f1_score
    return {"macro_f1": round(float(f1_score(y, pred, average="macro")), 4),
            "weighted_f1": round(float(f1_score(y, pred, average="weighted")), 4)}


def score_experiments(paths: Paths, ds, y_test) -> list[dict]:
    from rakuten.reporting.leaderboard import score_experiment
    from rakuten.lineage import fold_file

    rows = []
    for d in sorted(p for p in paths.oof_dir.iterdir() if (p / "meta.json").exists()):
        e = Experiment(paths.oof_dir, d.name)
        try:
            row, y, pred = score_experiment(paths, e)
        except Exception as err:   # incomplete or stale: reported, not scored
            rows.append({"experiment": d.name, "error": str(err)})
            continue
        _, folds_df, _ = fold_file(paths, e)
        test = e.load_test(sorted(int(k) for k in folds_df["fold"].unique()),
                           ids=ds.test["id"].to_numpy(np.int64), average="probs")
        rows.append({"experiment": d.name, "kind": row["kind"],
                     "oof": f1s(y, pred), "test": f1s(y_test, test.logits.argmax(1))})
    return rows


def peers(ds, y_test, paths: Paths, e5_source: str | None) -> list[dict]:
    from scipy import sparse
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    out = []
    t0 = time.time()
    tr_text, te_text = ds.train["text"].fillna("").tolist(), ds.test["text"].fillna("").tolist()
    y = ds.train["label"].to_numpy(np.int64)
    if not any(t.strip() for t in tr_text):
        return [{"peer": "peer_tfidf_linearsvc", "skipped": "no training text"}]
    w = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=2, token_pattern=r"(?u)\b\w+\b")
    c = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    X = sparse.hstack([w.fit_transform(tr_text), c.fit_transform(tr_text)]).tocsr()
    Xt = sparse.hstack([w.transform(te_text), c.transform(te_text)]).tocsr()
    grid, inner = [0.1, 0.3, 1.0, 3.0], StratifiedKFold(3, shuffle=True, random_state=0)
    search = {C: np.mean([f1_score(y[v], LinearSVC(C=C).fit(X[t], y[t]).predict(X[v]), average="macro")
                          for t, v in inner.split(X, y)]) for C in grid}
    C = max(search, key=search.get)
    svc = LinearSVC(C=C).fit(X, y)
    out.append({"peer": "peer_tfidf_linearsvc", "C": C, "inner_cv": {str(k): round(v, 4) for k, v in search.items()},
                "test": f1s(y_test, svc.classes_[svc.decision_function(Xt).argmax(1)]),
                "seconds": round(time.time() - t0, 1)})
    if e5_source:
        t0 = time.time()
        from rakuten.training.classic import source_features
        from rakuten.training.fold_data import FoldData
        from rakuten.data.prepared import data_fingerprint, resolve_data_dir
        fd = FoldData(ds.train, ds.test, None, None, "", data_fingerprint(resolve_data_dir(paths)))
        f = source_features(e5_source, paths, fd, progress=False)
        mu, sd = f[: len(y)].mean(0), f[: len(y)].std(0) + 1e-6
        z = (f - mu) / sd
        lr = LogisticRegression(C=0.1, max_iter=300).fit(z[: len(y)], y)
        cal = CalibratedClassifierCV(LinearSVC(C=C), cv=3, method="sigmoid").fit(X, y)
        p = np.zeros((len(te_text), int(y.max()) + 1))
        p[:, cal.classes_] += cal.predict_proba(Xt) / 2
        p[:, lr.classes_] += lr.predict_proba(z[len(y):]) / 2
        out.append({"peer": "peer_tfidf_svc_cal+e5_lr", "test": f1s(y_test, p.argmax(1)),
                    "seconds": round(time.time() - t0, 1)})
    return out


def score_submission(path: Path, ds, y_test) -> dict:
    sub = pd.read_csv(path, index_col=0)
    x = pd.read_csv(ds.data_dir / "X_test_update.csv", index_col=0, usecols=[0, 3])
    pid_of_row = dict(zip(x.index, x["productid"].to_numpy(np.int64)))
    pred_code = {pid_of_row[i]: c for i, c in zip(sub.index, sub["prdtypecode"])}
    pred = np.array(ds.label_map.encode([pred_code[int(i)] for i in ds.test["id"].to_numpy(np.int64)]))
    return {"file": path.name, "test": f1s(y_test, pred)}


def markdown(res: dict) -> str:
    lines = [f"| model | OOF macro-F1 | OOF weighted-F1 | test macro-F1 | test weighted-F1 |", "|---|---|---|---|---|"]
    for r in sorted((r for r in res["experiments"] if "oof" in r), key=lambda r: -r["test"]["macro_f1"]):
        lines.append(f"| {r['experiment']} ({r['kind']}) | {r['oof']['macro_f1']:.4f} | {r['oof']['weighted_f1']:.4f} "
                     f"| {r['test']['macro_f1']:.4f} | {r['test']['weighted_f1']:.4f} |")
    for p in res["peers"]:
        if "test" in p:
            lines.append(f"| {p['peer']} (peer) | | | {p['test']['macro_f1']:.4f} | {p['test']['weighted_f1']:.4f} |")
    s = res["submission"]
    lines.append(f"| **submission** `{s['file']}` | | | **{s['test']['macro_f1']:.4f}** | **{s['test']['weighted_f1']:.4f}** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten_text_fr")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--workdir", type=Path, default=None, help="default: /tmp/rakuten_real_<data>_<preset>")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(False)
    quiet_progress(True)
    from rakuten.data.prepared import load_dataset
    from rakuten.stages import run_all
    from rakuten.presets import load_preset

    data = args.data.resolve()
    if not (data / "test_labels" / "Y_test.csv").exists():
        raise SystemExit(f"{data}: no test_labels/Y_test.csv (the benchmark scores the test split)")
    wd = args.workdir or Path(f"/tmp/rakuten_real_{data.name}_{args.preset}")
    paths = Paths.make(wd, data)
    t0 = time.time()
    run = run_all(load_preset(args.preset), paths, progress=False, tune_trials=args.trials)
    wall = time.time() - t0
    ds = load_dataset(paths)
    y_test = test_labels(data, ds)
    res = {"data": data.name, "preset": args.preset, "date": str(date.today()), "machine": platform.processor() or platform.machine(),
           "cpu_count": __import__("os").cpu_count(), "wall_seconds": round(wall, 1), "stage_seconds": run["timings"],
           "experiments": score_experiments(paths, ds, y_test),
           "submission": score_submission(Path(run["submission"]), ds, y_test)}
    sel = paths.submissions_dir / "selection.json"
    if sel.exists():
        res["selection"] = json.loads(sel.read_text())
    e5 = "text_e5_text" if any(r.get("experiment", "").startswith(("text_e5", "knn_e5", "tfidf_e5")) for r in res["experiments"]) else None
    res["peers"] = [] if args.no_peers else peers(ds, y_test, paths, e5)
    out = args.out or RESULTS / f"real_{data.name}_{args.preset}_{res['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(markdown(res))
    print(f"\nwall {wall:.0f}s; stages {run['timings']}\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
