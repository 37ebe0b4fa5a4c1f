"""Frozen stratified K-fold split: one CSV (id, label, fold) + a JSON sidecar; every stage reads it.

Nothing else in the project splits data. A fold file's hash is recorded in each experiment's
meta.json, and second-level stages refuse to combine artifacts made on different fold files.
"""
from __future__ import annotations

from rakuten.errors import RakutenError

from pathlib import Path

import numpy as np
import pandas as pd

from rakuten.artifacts import ArtifactError, atomic_write_csv, atomic_write_json, file_hash, read_json


class FoldsError(RakutenError, RuntimeError):
    """A fold file that is missing, unreadable or inconsistent (with the data or its sidecar's hash), or a
    split that cannot be made; the message is one line."""
    pass


def folds_path(folds_dir: Path, k: int, seed: int) -> Path:
    """The fold file of a (k, seed) split: ``<folds_dir>/folds_k<k>_seed<seed>.csv``."""
    return Path(folds_dir) / f"folds_k{k}_seed{seed}.csv"


def make_folds(train: pd.DataFrame, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """Stratified K folds on the class label; rows in the input's order."""
    if k < 2:
        raise FoldsError(f"k must be >= 2 (got {k})")
    counts = train["label"].value_counts()
    if counts.min() < k:
        # StratifiedKFold would only warn; a class absent from a fold breaks per-fold macro-F1.
        raise FoldsError(f"class {counts.idxmin()} has {counts.min()} rows, fewer than k={k} folds")
    from sklearn.model_selection import StratifiedKFold   # here: every stage reads folds, few make them
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(train), -1, dtype=np.int64)
    for f, (_, va) in enumerate(skf.split(np.zeros(len(train)), train["label"].to_numpy())):
        fold[va] = f
    return pd.DataFrame({"id": train["id"].to_numpy(np.int64), "label": train["label"].to_numpy(np.int64),
                         "fold": fold})


def write_folds(df: pd.DataFrame, path: Path, k: int, seed: int, force: bool = False, extra: dict | None = None) -> bool:
    """Write the fold file; returns False when an identical split is already there.

    Refuses to replace a *different* split unless ``force``: every OOF artifact made on the old one
    would silently become a leak.
    """
    path = Path(path)
    if path.exists():
        try:
            old = read_folds(path)
        except FoldsError:
            old = None
        if old is not None and old.equals(df.reset_index(drop=True)):
            return False
        if not force:
            raise FoldsError(f"{path}: a different split already exists; pass --force to replace it "
                             "(every experiment trained on it must then be rerun)")
    atomic_write_csv(path, df, index=False)
    atomic_write_json(path.with_suffix(".json"), {"splitter": "sklearn.StratifiedKFold(shuffle=True)",
                                                  "k": k, "seed": seed, "n": len(df),
                                                  "hash": file_hash(path), **(extra or {})})
    return True


def read_folds(path: Path) -> pd.DataFrame:
    """Read a fold file as int64 columns id, label, fold; raises ``FoldsError`` when it is missing or
    unreadable, has other columns or a duplicate id, or does not match the hash in its JSON sidecar
    (when there is one)."""
    path = Path(path)
    if not path.exists():
        raise FoldsError(f"{path}: fold file not found; run `python src/make_folds.py` first")
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise FoldsError(f"{path}: unreadable fold file ({e})") from None
    if list(df.columns) != ["id", "label", "fold"]:
        raise FoldsError(f"{path}: columns must be id,label,fold (found {','.join(df.columns)})")
    if df["id"].duplicated().any():
        raise FoldsError(f"{path}: duplicate id {df['id'][df['id'].duplicated()].iloc[0]}")
    side = path.with_suffix(".json")
    if side.exists():
        try:
            meta = read_json(side)
        except ArtifactError as e:
            raise FoldsError(str(e)) from None
        if meta.get("hash") and meta["hash"] != file_hash(path):
            raise FoldsError(f"{path}: content does not match the hash in {side.name} (edited or truncated)")
    return df.astype({"id": np.int64, "label": np.int64, "fold": np.int64})


def check_folds_match(folds: pd.DataFrame, train: pd.DataFrame, path: Path) -> None:
    """The fold file must cover exactly the training ids with the same labels."""
    if len(folds) != len(train) or set(folds["id"]) != set(train["id"]):
        raise FoldsError(f"{path}: ids differ from the training data ({len(folds)} vs {len(train)} rows); "
                         "was it made on another dataset? remake it with --force")
    lab = train.set_index("id")["label"].reindex(folds["id"]).to_numpy()
    if not np.array_equal(lab, folds["label"].to_numpy()):
        raise FoldsError(f"{path}: labels differ from the training data")


def inner_split(idx: np.ndarray, y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of training rows into (fit, inner validation) for early stopping.

    Early stopping on the held-out fold itself would leak: the epoch/round count would be chosen by
    the very rows the OOF score is computed on. Classes too small to stratify stay in the fit part.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        rows = idx[y == c]
        n_val = int(round(len(rows) * frac))
        if len(rows) >= 2 and n_val >= 1:
            val.append(rng.choice(rows, size=min(n_val, len(rows) - 1), replace=False))
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    fit = np.setdiff1d(idx, val, assume_unique=False)
    return fit, val
