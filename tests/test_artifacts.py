"""Artifacts: atomic writes, truncation detection, OOF assembly keyed by product id."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rakuten.artifacts import ArtifactError, Experiment, Predictions, atomic_write_json, read_json
from rakuten.folds import FoldsError, make_folds, read_folds, write_folds


def _folds(n=60, k=3):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": rng.choice(10**9, n, replace=False), "label": np.arange(n) % 4,
                         "fold": np.arange(n) % k})


def _write_exp(root, folds, name="e", drop=None):
    exp = Experiment(root, name)
    for k in sorted(folds.fold.unique()):
        f = folds[folds.fold == k]
        ids = f.id.to_numpy()
        if drop is not None and k == 0:
            ids = ids[:-1]
        lab = folds.set_index("id").loc[ids, "label"].to_numpy()
        Predictions(ids[::-1], np.eye(4, dtype=np.float32)[lab[::-1]], np.ones((len(ids), 3)), lab[::-1]).save(exp.oof_path(k))
    return exp


def test_oof_assembly_follows_fold_file_order(tmp_path):
    folds = _folds()
    oof = _write_exp(tmp_path, folds).load_oof(folds)
    assert np.array_equal(oof.ids, folds.id.to_numpy())
    assert np.array_equal(oof.logits.argmax(1), folds.label.to_numpy())


def test_oof_assembly_rejects_missing_id(tmp_path):
    folds = _folds()
    with pytest.raises(ArtifactError, match="ids differ from fold 0"):
        _write_exp(tmp_path, folds, drop=True).load_oof(folds)


def test_truncated_npz_is_detected(tmp_path):
    p = tmp_path / "x.npz"
    Predictions(np.arange(5), np.zeros((5, 27)), None).save(p)
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        Predictions.load(p)


def test_truncated_json_is_detected(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})
    p.write_text('{"a": ')
    with pytest.raises(ArtifactError, match="truncated or corrupt JSON"):
        read_json(p)


def test_no_temp_files_left(tmp_path):
    Predictions(np.arange(3), np.zeros((3, 2)), None).save(tmp_path / "a.npz")
    atomic_write_json(tmp_path / "b.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.json"]


def test_folds_frozen_and_refuse_different_split(tmp_path):
    train = pd.DataFrame({"id": np.arange(100) + 10**6, "label": np.arange(100) % 5})
    a = make_folds(train, 5, 1)
    p = tmp_path / "folds_k5_seed1.csv"
    assert write_folds(a, p, 5, 1) is True
    assert write_folds(make_folds(train, 5, 1), p, 5, 1) is False  # identical: unchanged
    with pytest.raises(FoldsError, match="different split"):
        write_folds(make_folds(train, 5, 2), p, 5, 1)
    back = read_folds(p)
    assert back.equals(a)
    assert back.groupby("fold").size().tolist() == [20] * 5
    # stratified: every class in every fold
    assert (back.groupby(["fold", "label"]).size().unstack() == 4).all().all()
    p.write_text(p.read_text().replace(",0\n", ",1\n", 1))  # hand-edited file no longer matches its hash
    with pytest.raises(FoldsError, match="does not match the hash"):
        read_folds(p)


def test_folds_refuse_tiny_class():
    train = pd.DataFrame({"id": np.arange(10), "label": [0] * 8 + [1] * 2})
    with pytest.raises(FoldsError, match="fewer than k=5"):
        make_folds(train, 5, 0)
