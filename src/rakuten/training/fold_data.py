"""Rows of one experiment's folds: the fold file, the training rows in its order and the test rows
(``FoldData``), the data key its artifacts are keyed on, and the text it reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rakuten.data.prepared import content_fingerprint, data_fingerprint, load_dataset, resolve_data_dir
from rakuten.experiment import load_experiment
from rakuten.folds import check_folds_match
from rakuten.lineage import fold_file
from rakuten.paths import Paths


@dataclass
class FoldData:
    """Rows of the training data in fold-file order, plus the test rows."""

    train: pd.DataFrame   # aligned with the fold file
    test: pd.DataFrame
    folds: pd.DataFrame
    fold_file: Path
    fold_hash: str
    data_key: str             # raw files' fingerprint (the token cache's key)
    content_key: str = ""     # what this experiment learns from (``experiment_data_key``)


def prepare_fold_data(cfg, paths: Paths, ds=None) -> FoldData:
    """The data a fold of ``cfg`` reads: the dataset, the fold file (made when missing) joined to it, and their
    keys."""
    ds = ds or load_dataset(paths)
    fpath, folds, fhash = fold_file(paths, cfg)
    check_folds_match(folds, ds.train, fpath)
    train = ds.train.set_index("id").loc[folds["id"].to_numpy()].reset_index()
    test = ds.test.reset_index(drop=True)
    return FoldData(train, test, folds, fpath, fhash, data_fingerprint(resolve_data_dir(paths)),
                    experiment_data_key(cfg, train, test))


def experiment_data_key(cfg, train: pd.DataFrame, test: pd.DataFrame) -> str:
    """The data fingerprint an experiment's artifacts are keyed on: ids, labels, and only the inputs
    it reads (its text field, or the image files), so a new image does not retrain a text model."""
    if cfg.kind == "image":
        return content_fingerprint(train, test, images=True)
    uses_other = (cfg.kind == "knn" and cfg.knn.features != "tfidf") or \
        (cfg.kind == "tfidf" and (cfg.tfidf.get("dense") or {}).get("experiment"))
    if uses_other:   # reads another experiment's embeddings: every input it could come from
        return content_fingerprint(train, test, fields=("title", "description", "text"), images=True)
    return content_fingerprint(train, test, fields=(cfg.data.field,))


def field_texts(df: pd.DataFrame, cfg) -> list[str]:
    """The input field of every row (``data.field``), with the config's prefix (E5 wants "passage: ")."""
    prefix = cfg.data.get("prefix", "") or ""
    return [prefix + t for t in df[cfg.data.field].tolist()]


def empty_field(cfg, train: pd.DataFrame) -> str | None:
    """Why the experiment has nothing to learn from on this data (its text field is empty on every
    training row, or it is an image model and no training image exists), else None."""
    if cfg.kind == "knn" and cfg.knn.features != "tfidf":
        return empty_field(load_experiment(cfg.knn.features), train)   # the feature source's input
    if cfg.kind == "image":
        if "has_image" in train and not bool(train["has_image"].any()):
            return "no training row has an image"
        return None
    col = train[cfg.data.field] if cfg.data.field in train else None
    if col is None or not bool(col.fillna("").astype(str).str.strip().str.len().gt(0).any()):
        return f"data.field {cfg.data.field!r} is empty on every training row"
    return None
