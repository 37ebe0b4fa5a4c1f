"""The leaderboard: every finished experiment in ``oof/``, scored from its artifacts, beside the anchors.

Scores are recomputed from the OOF files (never copied from meta.json); an experiment is listed only
when meta.json exists, its fold file is present with the hash it recorded, and every fold is done.
Writes ``submissions/leaderboard.{md,json,png}``, and for the best experiment (by OOF macro-F1) a
per-class table (``per_class_<exp>.csv``, as the thesis's Tables 6.8-6.9, by prdtypecode) and a
row-normalised confusion matrix (``confusion_<exp>.png``) naming the weakest classes by recall; the
per-epoch learning curves of the torch experiments (``learning_curves.png``, from their
``summary_fold<k>.csv``) and the per-class F1 of the submitted model beside its best input
(``per_class_f1_<exp>.png``). Classes are shown as ``code - name`` (``rakuten.labels``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from rakuten.artifacts import ArtifactError, Experiment, atomic_write_csv, atomic_write_json, atomic_write_text, read_json
from rakuten.errors import RakutenError
from rakuten.folds import FoldsError
from rakuten.labels import CODES, code_label
from rakuten.metrics import chance_macro_f1, scores
from rakuten.paths import Paths
from rakuten.reporting.anchors import PUBLIC_LEADERBOARDS, anchors, would_rank
from rakuten.reporting.plots import plot_confusion, plot_leaderboard, plot_learning_curves, plot_per_class_f1
from rakuten.lineage import finished_oof, lineage_problem

log = logging.getLogger(__name__)

KIND_ORDER = ("unimodal", "fusion", "stack")
N_WEAKEST = 4
# The baseline second-level models must clear by a clear margin (configs/experiments/tfidf_svm_tuned.yaml)
BASELINE = "tfidf_svm_tuned"


def second_level_checks(rows: list[dict], upstreams: dict[str, list[str]]) -> list[dict]:
    """For each fusion/stack on the board: its best input (by OOF macro-F1) and the margin over it,
    and the margin over the ``tfidf_svm_tuned`` baseline when that was run on the same folds.
    ``upstreams``: experiment -> the experiments it learned from (its meta.json's ``upstream``)."""
    by_name = {r["experiment"]: r for r in rows}
    out = []
    for r in rows:
        if r["kind"] not in ("fusion", "stack"):
            continue
        inputs = [n for n in upstreams.get(r["experiment"], []) if n in by_name]
        if not inputs:
            continue
        best = max(inputs, key=lambda n: by_name[n]["macro_f1"])
        chk = {"experiment": r["experiment"], "macro_f1": r["macro_f1"], "best_input": best,
               "best_input_macro_f1": by_name[best]["macro_f1"],
               "margin": r["macro_f1"] - by_name[best]["macro_f1"]}
        chk["beats_best_input"] = chk["margin"] > 0
        base = by_name.get(BASELINE)
        if base is not None and base["fold_hash"] == r["fold_hash"]:
            chk["baseline_margin"] = r["macro_f1"] - base["macro_f1"]
        out.append(chk)
    return out


def score_experiment(paths: Paths, exp: Experiment, meta: dict | None = None
                     ) -> tuple[dict, np.ndarray, np.ndarray]:
    """(leaderboard row, labels, OOF predictions) of a complete experiment, scored from its OOF
    files (meta.json's own scores are not trusted); raises when a fold is missing or stale."""
    meta = exp.read_meta() if meta is None else meta
    stale = lineage_problem(paths, exp.name)
    if stale:
        raise ArtifactError(f"{exp.name}: stale, {stale}")
    fpath, folds_df, fhash, oof = finished_oof(paths, exp)
    fold_ids = sorted(int(k) for k in folds_df["fold"].unique())
    y = folds_df["label"].to_numpy(np.int64)
    pred = oof.logits.argmax(1)
    row = {"experiment": exp.name, "kind": meta.get("kind", "?"), **scores(y, pred),
           "modality": meta.get("modality"), "field": meta.get("field"),
           "n_rows": int(len(y)), "n_folds": len(fold_ids), "fold_file": Path(fpath).name, "fold_hash": fhash}
    return row, y, pred


def per_class_table(y: np.ndarray, pred: np.ndarray, codes=CODES) -> pd.DataFrame:
    """Precision, recall, F1 and support per prdtypecode (classes absent from both: zeros)."""
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(len(codes))), zero_division=0)
    return pd.DataFrame({"prdtypecode": list(codes), "category": [code_label(c) for c in codes],
                         "precision": p, "recall": r, "f1": f, "support": s})


def _md_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, r in df.iterrows():
        cells = [floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v) for v in r.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def anchor_table() -> pd.DataFrame:
    """One row per published result, its metrics side by side ('' where not published)."""
    rows: dict[tuple, dict] = {}
    for a in anchors():
        key = (a.source, a.table, a.name, a.split)
        rows.setdefault(key, {"source": a.source, "table": a.table, "result": a.name, "macro-F1": "",
                              "weighted-F1": "", "accuracy": "", "split": a.split})
        col = {"macro_f1": "macro-F1", "weighted_f1": "weighted-F1", "accuracy": "accuracy"}[a.metric]
        rows[key][col] = f"{a.value:.4f}"
    return pd.DataFrame(list(rows.values()))


def _public_leaderboards_md(paths: Paths, rows: list[dict]) -> list[str]:
    """The two public leaderboards, and where the submitted model's CV score would sit on each."""
    sel_path = paths.submissions_dir / "selection.json"
    chosen = None
    if sel_path.exists():
        try:
            chosen = read_json(sel_path).get("chosen")
        except (ArtifactError, OSError, ValueError):
            chosen = None
    row = next((r for r in rows if r["experiment"] == chosen), rows[0] if rows else None)
    md = ["## Public leaderboards", ""]
    for board, b in PUBLIC_LEADERBOARDS.items():
        name = {"weighted_f1": "weighted-F1", "macro_f1": "macro-F1"}[b["metric"]]
        md += [f"{b['source']} ({name}, hidden test set):", "", f"| rank | team | {name} |", "|---|---|---|"]
        md += [f"| {r} | {t} | {v:.4f} |" for r, t, v in b["entries"]]
        if row is not None:
            md += ["", f"Our submitted model `{row['experiment']}`: **CV** {name} {row[b['metric']]:.4f} on our "
                   f"folds, which would sit {would_rank(row[b['metric']], board)}: a cross-validation score "
                   "against a hidden-test leaderboard, not a like-for-like rank."]
        md.append("")
    return md


def build_leaderboard(paths: Paths, write: bool = True) -> list[dict]:
    """Score every complete experiment; sorted by OOF macro-F1 (best first). Writes the reports."""
    rows, skipped, details, upstreams = [], [], {}, {}
    root = paths.oof_dir
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        exp = Experiment(root, d.name)
        if not exp.meta_path.exists():
            continue      # e.g. a study.db of an experiment that has not been run
        try:
            meta = exp.read_meta()
            row, y, pred = score_experiment(paths, exp, meta)
        except (RakutenError, ArtifactError, FoldsError) as e:
            skipped.append({"experiment": d.name, "reason": str(e)})
            continue
        rows.append(row)
        details[d.name] = (y, pred)
        upstreams[d.name] = list(meta.get("upstream") or {})  # what a fusion/stack learned from
    rows.sort(key=lambda r: (-r["macro_f1"], r["experiment"]))
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    checks = {c["experiment"]: c for c in second_level_checks(rows, upstreams)}
    for r in rows:
        if r["experiment"] in checks:
            c = checks[r["experiment"]]
            r.update(best_input=c["best_input"], margin_over_best_input=c["margin"],
                     margin_over_baseline=c.get("baseline_margin"))
    if write:
        _keep_good_board(paths, rows, skipped)
        _write_reports(paths, rows, skipped, details, list(checks.values()))
    return rows


def _keep_good_board(paths: Paths, rows: list[dict], skipped: list[dict]) -> None:
    """Refuse to replace a leaderboard that lists experiments with an empty one: an empty board after
    a finished run means the artifacts no longer check out (a changed fold file, say), which the user
    should fix, not find out by losing the last good board."""
    old = paths.submissions_dir / "leaderboard.json"
    if rows or not old.exists():
        return
    try:
        n_old = len(read_json(old))
    except (ArtifactError, TypeError):
        return
    if n_old:
        why = f"; e.g. {skipped[0]['experiment']}: {skipped[0]['reason']}" if skipped else ""
        raise RakutenError(f"no complete experiment in {paths.oof_dir} ({len(skipped)} not listed{why}); "
                           f"the existing leaderboard ({n_old} rows) is kept")


def learning_curves(paths: Paths, names: list[str]) -> dict:
    """experiment -> {fold: its per-epoch ``summary_fold<k>.csv``} for the experiments that have them
    (the torch models; TF-IDF, kNN and the second level train no epochs)."""
    out = {}
    for name in names:
        exp = Experiment(paths.oof_dir, name)
        folds = {}
        for f in sorted(exp.dir.glob("summary_fold*.csv")):
            try:
                df = pd.read_csv(f)
            except (OSError, ValueError, pd.errors.EmptyDataError):
                continue      # a fold being written by a concurrent run: its curve is left out
            if {"epoch", "train_loss", "val_macro_f1"} <= set(df.columns) and len(df):
                folds[int(f.stem[len("summary_fold"):])] = df
        if folds:
            out[name] = folds
    return out


def submitted_and_reference(paths: Paths, rows: list[dict], checks: list[dict]) -> tuple[str, str, str] | None:
    """(submitted experiment, the one to show beside it, why that one): the submitted model is the one
    in ``submissions/submitted.json`` when it is on the board (else the board's best); beside it, its
    best input when it is a fusion/stack, else the best other experiment on the board."""
    names = [r["experiment"] for r in rows]
    sub = None
    try:
        sub = read_json(paths.submissions_dir / "submitted.json").get("experiment")
    except (ArtifactError, OSError, ValueError, AttributeError):
        pass
    label = "submitted"
    if sub not in names:
        sub, label = (names[0] if names else None), "best on the board (no submission found)"
    if sub is None:
        return None
    check = next((c for c in checks if c["experiment"] == sub), None)
    if check is not None:
        return sub, check["best_input"], f"{label}; beside it its best input"
    others = [n for n in names if n != sub]
    return (sub, others[0], f"{label}, a single model; beside it the best other experiment") if others else None


def _plots_md(paths: Paths, rows: list[dict], details: dict, checks: list[dict]) -> list[str]:
    """Writes the learning curves and the per-class F1 comparison; their section of leaderboard.md."""
    out = paths.submissions_dir
    md = []
    pair = submitted_and_reference(paths, rows, checks)
    if pair is not None:
        sub, ref, why = pair
        f_sub = per_class_table(*details[sub])["f1"].to_numpy()
        f_ref = per_class_table(*details[ref])["f1"].to_numpy()
        png = f"per_class_f1_{sub}.png"
        plot_per_class_f1(list(CODES), f_sub, sub, f_ref, ref, out / png,
                          f"OOF F1 per class: {sub} ({why.split(';')[0]}) vs {ref}")
        better = int((f_sub > f_ref + 1e-12).sum())
        worse = int((f_sub < f_ref - 1e-12).sum())
        md += [f"## Per-class F1: {sub} vs {ref}", "",
               f"`{sub}` ({why}, `{ref}`): higher F1 on {better} classes, lower on {worse}, out of fold.", "",
               f"![per-class F1 of {sub} beside {ref}]({png})", ""]
    curves = learning_curves(paths, [r["experiment"] for r in rows])
    if curves:
        plot_learning_curves(curves, out / "learning_curves.png")
        md += ["## Learning curves", "",
               "Training loss and monitored macro-F1 per epoch of each torch model, one line per fold "
               "(from `oof/<experiment>/summary_fold<k>.csv`). The macro-F1 is measured on the rows early "
               "stopping watches, an inner split of the training folds (fold k's own rows only under fixed "
               "epochs), so it is noisier than the OOF score; the circle marks the epoch each fold kept.", "",
               "![learning curves](learning_curves.png)", ""]
    return md


def _write_reports(paths: Paths, rows: list[dict], skipped: list[dict], details: dict,
                   checks: list[dict] | None = None) -> None:
    out = paths.submissions_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "leaderboard.json", rows)
    plot_leaderboard(rows, anchors("macro_f1", plotted_only=True), out / "leaderboard.png")
    md = ["# Leaderboard", "",
          "Out-of-fold scores over all folds, recomputed from `oof/<experiment>/fold<k>.npz` by "
          "`src/leaderboard.py` (meta.json is not trusted for scores). Sorted by macro-F1 "
          "(the SIGIR eCom'20 metric); weighted-F1 is the ChallengeData metric.", ""]
    if rows:
        df = pd.DataFrame([{"rank": r["rank"], "experiment": r["experiment"], "kind": r["kind"],
                            "macro-F1": r["macro_f1"], "weighted-F1": r["weighted_f1"],
                            "accuracy": r["accuracy"], "rows": r["n_rows"], "folds": r["n_folds"],
                            "fold file": r["fold_file"]} for r in rows])
        md += [_md_table(df), ""]
        if any(r["experiment"].endswith("_tuned") for r in rows):
            md += ["`*_tuned` experiments run the best of several Optuna trials compared on these same OOF "
                   "rows: their scores are optimistic by the selection.", ""]
    else:
        md += ["No complete experiment found in `oof/`.", ""]
    if checks:
        has_base = any("baseline_margin" in c for c in checks)
        df = pd.DataFrame([{"experiment": c["experiment"], "macro-F1": c["macro_f1"], "best input": c["best_input"],
                            "its macro-F1": c["best_input_macro_f1"], "margin": c["margin"],
                            "beats it": "yes" if c["beats_best_input"] else "**no**",
                            **({f"margin over {BASELINE}": c.get("baseline_margin", float("nan"))} if has_base else {})}
                           for c in checks])
        md += ["## Second level vs its inputs", "",
               "Each fusion and stack against the best single experiment it learns from (same folds, OOF "
               "macro-F1)" + (f", and against the `{BASELINE}` baseline (TF-IDF + linear SVM, C tuned on "
                              "inner folds)." if has_base else "."), "", _md_table(df), ""]
    md += ["## Published figures", "",
           "**Measured on other data and splits** (the thesis: 55,116 rows with a description and its own "
           "splits; SIGIR: the hidden test set): they place our numbers, they are not like-for-like.", ""]
    md += [_md_table(anchor_table()), ""]
    md += _public_leaderboards_md(paths, rows)
    if rows:
        best = rows[0]["experiment"]
        y, pred = details[best]
        table = per_class_table(y, pred)
        atomic_write_csv(out / f"per_class_{best}.csv", table, index=False)
        present = table[table["support"] > 0]
        weakest = present.nsmallest(N_WEAKEST, "recall")
        weak_txt = ", ".join(f"{r.category} ({r.recall:.2f})" for r in weakest.itertuples())
        plot_confusion(y, pred, list(CODES), out / f"confusion_{best}.png",
                       f"{best}: row-normalised OOF confusion; weakest recall: {weak_txt}")
        md += [f"## Per class: {best}", "",
               f"Out-of-fold, by prdtypecode (cf. thesis Tables 6.8-6.9). Weakest recall: {weak_txt}. "
               f"Chance (majority class) macro-F1: {chance_macro_f1(y):.4f}.", "",
               _md_table(table.assign(support=table["support"].astype(int))), "",
               f"Confusion matrix: `confusion_{best}.png`; table: `per_class_{best}.csv`.", ""]
        md += _plots_md(paths, rows, details, checks or [])
    if skipped:
        md += ["## Not listed", ""] + [f"- `{s['experiment']}`: {s['reason']}" for s in skipped] + [""]
    atomic_write_text(out / "leaderboard.md", "\n".join(md))
