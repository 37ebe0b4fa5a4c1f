"""What a fold trains on beyond its own labelled rows: label-noise cleaning and pseudo-labels.

Both only ever change the *training* rows of a fold (``tr_rows``); fold k's validation rows keep
their given labels and are never dropped, relabelled, reweighted or duplicated, so OOF scores stay
comparable with and without either switch.

- ``data.label_issues: {file, action, frac, weight}``: ``file`` is a ``label_issues.csv`` written by
  ``src/find_label_issues.py`` (ranked, most suspect first); the top ``frac`` of its rows are acted
  on: ``drop`` removes them, ``relabel`` gives them the suggested code, ``downweight`` multiplies
  their sample weight by ``weight``.
- ``train.pseudo_labels: {from, threshold, weight, source}``: test rows whose predicted probability
  from the finished experiment ``from`` is at least ``threshold`` join the training rows with that
  label and sample weight ``weight``. ``source: fold`` (default) takes fold k's pseudo-labels from
  ``from``'s fold-k model only, which never trained on fold k: no label of fold k can reach fold k's
  model through a test row, even one that duplicates a fold-k product. ``source: bagged`` uses the
  mean over all fold models (the issue's wording; it carries a second-order leak).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten.artifacts import ArtifactError, Experiment, Predictions, atomic_path, softmax
from rakuten.data.prepared import load_dataset
from rakuten.lineage import issues_path

log = logging.getLogger(__name__)

ISSUE_COLUMNS = ["id", "given_code", "suggested_code", "score"]


# ------------------------------------------------------------------------------------------- finding
def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged row positions, most suspect first; label-quality score of every row, lower = more suspect).

    ``probs`` must be out-of-fold: cleanlab's confident learning assumes no row's probability came
    from a model that trained on that row.
    """
    from cleanlab.filter import find_label_issues   # optional: only find_label_issues.py needs cleanlab
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    ranked = find_label_issues(labels, probs, filter_by="prune_by_noise_rate",
                               return_indices_ranked_by="self_confidence")
    return np.asarray(ranked, dtype=np.int64), get_label_quality_scores(labels, probs)


def label_issue_table(ids, labels, oof_logits, label_map) -> pd.DataFrame:
    """label_issues.csv: one row per flagged training product, most suspect first."""
    probs = softmax(np.asarray(oof_logits, dtype=np.float64))
    ranked, quality = rank_label_issues(labels, probs)
    suggested = probs.argmax(1)
    return pd.DataFrame({
        "id": np.asarray(ids, dtype=np.int64)[ranked],
        "given_code": label_map.decode(np.asarray(labels)[ranked].tolist()),
        "suggested_code": label_map.decode(suggested[ranked].tolist()),
        "score": np.round(quality[ranked], 6),
    })


def per_class_table(issues: pd.DataFrame, labels, label_map) -> pd.DataFrame:
    """Per given code: training rows, flagged rows and their share, and the most common suggestion."""
    counts = pd.Series(label_map.decode(np.asarray(labels).tolist())).value_counts()
    rows = []
    for code, n in counts.sort_index().items():
        sub = issues[issues["given_code"] == code]
        top = sub["suggested_code"].value_counts()
        rows.append({"code": int(code), "n_train": int(n), "n_flagged": len(sub),
                     "flagged_frac": round(len(sub) / n, 4),
                     "top_suggested": int(top.index[0]) if len(top) else None})
    out = pd.DataFrame(rows).astype({"top_suggested": "Int64"})
    return out.sort_values("flagged_frac", ascending=False)


def confused_pairs(issues: pd.DataFrame, top: int = 15) -> pd.DataFrame:
    """The ``top`` most frequent (given_code, suggested_code) pairs of ``issues`` with their count ``n``,
    most frequent first."""
    pairs = issues.groupby(["given_code", "suggested_code"]).size().rename("n").reset_index()
    return pairs.sort_values("n", ascending=False).head(top).reset_index(drop=True)


def plot_confused_pairs(pairs: pd.DataFrame, path: Path, title: str) -> None:
    """Horizontal bar chart of ``pairs`` (``confused_pairs``), the first pair on top, written to the PNG
    ``path`` atomically."""
    import matplotlib   # slow to import, and only this plot needs it
    matplotlib.use("Agg")
    # optional and heavy: matplotlib, after choosing its Agg backend
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(pairs), 3) + 1.2))
    names = [f"{g} -> {s}" for g, s in zip(pairs["given_code"], pairs["suggested_code"])]
    ax.barh(names[::-1], pairs["n"].to_numpy()[::-1], color="#c0504d")
    ax.set_xlabel("flagged training rows (given code -> suggested code)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# -------------------------------------------------------------------------------------- applying
def read_issues(path: Path) -> pd.DataFrame:
    """Read a label issues CSV (``find_label_issues.py``); raises ``ArtifactError`` when it is missing or
    lacks a column of ``ISSUE_COLUMNS``."""
    if not path.exists():
        raise ArtifactError(f"{path}: label issues file missing; run `python src/find_label_issues.py --exp NAME`")
    df = pd.read_csv(path)
    missing = [c for c in ISSUE_COLUMNS if c not in df.columns]
    if missing:
        raise ArtifactError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def pseudo_labels(cfg, paths, fold: int, test_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(test row positions, class labels) of the test rows pseudo-labelled for fold ``fold``."""
    pl = cfg.train.pseudo_labels
    exp = Experiment(paths.oof_dir, pl["from"])
    test_ids = np.asarray(test_ids, dtype=np.int64)
    if pl["source"] == "fold":
        if not exp.test_path(fold).exists():
            raise ArtifactError(f"{exp.test_path(fold)}: missing; train experiment {pl['from']} first")
        probs = softmax(Predictions.load(exp.test_path(fold)).reindex(test_ids).logits.astype(np.float64))
    else:
        folds = sorted(int(p.stem.removeprefix("test_fold")) for p in exp.dir.glob("test_fold*.npz"))
        if not folds:
            raise ArtifactError(f"{exp.dir}: no test predictions; train experiment {pl['from']} first")
        probs = softmax(exp.load_test(folds, ids=test_ids, average="probs").logits.astype(np.float64))
    keep = np.flatnonzero(probs.max(1) >= float(pl["threshold"]))
    return keep, probs[keep].argmax(1).astype(np.int64)


def training_rows(cfg, paths, fd, fold: int, tr_rows: np.ndarray, y_tr: np.ndarray, label_map=None):
    """(rows, labels, sample weights or None, facts for meta.json) that fold ``fold`` trains on.

    Rows index train+test as the fold's inputs do: 0..n_train-1 are the fold file's training rows,
    n_train + j is test row j (a pseudo-labelled row). Only ``tr_rows`` are ever changed.
    """
    tr_rows = np.asarray(tr_rows, dtype=np.int64).copy()
    y_tr = np.asarray(y_tr, dtype=np.int64).copy()
    w = np.ones(len(tr_rows), dtype=np.float64)
    facts: dict = {}
    path = issues_path(cfg, paths)
    if path is not None:
        li = cfg.data.label_issues
        issues = read_issues(path)
        n_act = int(np.ceil(float(li["frac"]) * len(issues)))
        issues = issues.iloc[:n_act]
        pos = {int(i): k for k, i in enumerate(fd.train["id"].to_numpy(np.int64)[tr_rows])}
        hit = np.array([pos.get(int(i), -1) for i in issues["id"]], dtype=np.int64)
        on_train = hit >= 0   # the flagged rows that are in this fold's training rows
        at = hit[on_train]
        if li.action == "drop":
            keep = np.ones(len(tr_rows), dtype=bool)
            keep[at] = False
            tr_rows, y_tr, w = tr_rows[keep], y_tr[keep], w[keep]
        elif li.action == "relabel":
            lm = label_map if label_map is not None else _label_map(paths)
            y_tr[at] = np.asarray(lm.encode(issues["suggested_code"].to_numpy()[on_train].tolist()), dtype=np.int64)
        else:
            w[at] *= float(li["weight"])
        facts["label_issues"] = {"action": li.action, "n_listed": n_act, "n_applied": int(on_train.sum())}
    pl = cfg.train.get("pseudo_labels") or {}
    if pl.get("from"):
        rows, labels = pseudo_labels(cfg, paths, fold, fd.test["id"].to_numpy(np.int64))
        tr_rows = np.concatenate([tr_rows, len(fd.train) + rows])
        y_tr = np.concatenate([y_tr, labels])
        w = np.concatenate([w, np.full(len(rows), float(pl["weight"]))])
        facts["pseudo_labels"] = {"n_added": int(len(rows)), "source": pl["source"]}
    return tr_rows, y_tr, (None if np.all(w == 1.0) else w), facts


def _label_map(paths):
    return load_dataset(paths).label_map


__all__ = ["label_issue_table", "per_class_table", "confused_pairs", "plot_confused_pairs", "rank_label_issues",
           "training_rows", "pseudo_labels", "issues_path"]
