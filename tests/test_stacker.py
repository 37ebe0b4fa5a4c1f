"""Stacker: the real stacking loop against sklearn's cross_val_predict, leakage, scores, artifacts."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, cross_val_predict

from rakuten.artifacts import Experiment, Predictions, softmax
from rakuten.config import ConfigError, load_config
from rakuten.folds import folds_path, read_folds
from rakuten.labels import NUM_CLASSES
from rakuten.second_level.stacker import (STACK_DEFAULTS, LGBMStacker, fit_predict_oof, load_stack_data,
                                          run_stack, stack_config, stack_features, stacker_factory)
from synthetic import K, SEED, make_synthetic, single_scores

REPO = Path(__file__).resolve().parents[1]
INPUTS = ["text_tiny_title", "text_tiny_description", "text_tiny_text", "image_tiny", "tfidf_text"]
SMALL = ["lgbm.num_leaves=7", "lgbm.max_bin=31", "lgbm.num_threads=1", "lgbm.learning_rate=0.1",
         "lgbm.min_data_in_leaf=10"]
FIXED = ["lgbm.early_stopping_rounds=0", "lgbm.num_boost_round=15"]


def cfg_of(*overrides: str):
    return load_config("stack/stack_lgbm.yaml", [*SMALL, *overrides], defaults=copy.deepcopy(STACK_DEFAULTS))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("stack"))


def _independent_features(paths, names):
    """Stack features rebuilt straight from the npz files (not through the stacker's loader)."""
    folds = read_folds(folds_path(paths.folds_dir, K, SEED))
    X = np.hstack([softmax(Experiment(paths.oof_dir, n).load_oof(folds).logits) for n in names])
    return X, folds["label"].to_numpy(), folds["fold"].to_numpy(), folds


def test_fit_predict_oof_equals_cross_val_predict_logreg(synth):
    X, y, fold, _ = _independent_features(synth, ["text_tiny_title", "image_tiny"])
    model = LogisticRegression(max_iter=300, C=0.5, tol=1e-2)
    ours, _ = fit_predict_oof(lambda: LogisticRegression(max_iter=300, C=0.5, tol=1e-2), X, y, fold)
    ref = cross_val_predict(model, X, y, cv=PredefinedSplit(fold), method="predict_proba")
    assert np.allclose(ours, ref, atol=1e-8)


def test_stacker_factory_equals_cross_val_predict_lgbm(synth):
    """The factory run_stack uses (fixed rounds, no early stopping) against the same estimator in sklearn."""
    cfg = cfg_of(*FIXED)
    X, y, fold, _ = _independent_features(synth, INPUTS)
    ours, _ = fit_predict_oof(stacker_factory(cfg), X, y, fold, num_classes=NUM_CLASSES)
    ref = cross_val_predict(LGBMStacker(**stack_config(cfg).lgbm), X, y, cv=PredefinedSplit(fold),
                            method="predict_proba")
    assert np.allclose(ours, ref, atol=1e-10)


def test_run_stack_artifacts_equal_cross_val_predict(synth):
    """End to end: what run_stack writes to disk is sklearn's OOF prediction of the same model."""
    cfg = cfg_of(*FIXED, "name=stack_cvp", "stack.meta_features=false")
    run_stack(cfg, synth, progress=False)
    X, y, fold, folds = _independent_features(synth, INPUTS)
    written = Experiment(synth.oof_dir, "stack_cvp").load_oof(folds)
    assert written.embeddings is None
    ref = cross_val_predict(LGBMStacker(**stack_config(cfg).lgbm), X, y, cv=PredefinedSplit(fold),
                            method="predict_proba")
    assert np.allclose(np.exp(written.logits), ref, atol=1e-6)


def test_stack_beats_best_single_input(synth):
    cfg = cfg_of("name=stack_es", "lgbm.num_boost_round=200", "lgbm.early_stopping_rounds=10",
                 "stack.meta_features=true", "lgbm.class_weight_power=0.5")
    res = run_stack(cfg, synth, progress=False)
    best_single = max(single_scores(synth, INPUTS).values())
    assert res["oof"]["macro_f1"] > best_single + 0.3, (res["oof"], best_single)
    meta = Experiment(synth.oof_dir, "stack_es").read_meta()
    assert meta["kind"] == "stack" and meta["features"] == len(INPUTS) * NUM_CLASSES + 4
    assert all(0 < meta["folds"][str(k)]["best_iteration"] <= 200 for k in range(K))
    t = Predictions.load(Experiment(synth.oof_dir, "stack_es").test_path(0))
    assert np.allclose(np.exp(t.logits).sum(1), 1, atol=1e-4)


def test_fold_k_rows_do_not_reach_fold_k_booster(synth):
    """Random labels and features on fold k leave fold k's booster (its test output) unchanged, early
    stopping included: the inner split is drawn from the training folds only."""
    cfg = cfg_of("lgbm.num_boost_round=60", "lgbm.early_stopping_rounds=5", "stack.meta_features=false")
    data = load_stack_data(cfg, synth)
    X, Xt, _ = stack_features(cfg, data)
    y, fold = data.y, data.fold
    k = 1
    rows = np.flatnonzero(fold == k)
    rng = np.random.default_rng(0)
    X2, y2 = X.copy(), y.copy()
    X2[rows] = rng.random((len(rows), X.shape[1]))
    y2[rows] = rng.integers(0, NUM_CLASSES, len(rows))
    _, t_ref = fit_predict_oof(stacker_factory(cfg), X, y, fold, Xt, fold_ids=[k], num_classes=NUM_CLASSES)
    _, t_alt = fit_predict_oof(stacker_factory(cfg), X2, y2, fold, Xt, fold_ids=[k], num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(t_ref[k], t_alt[k])
    X3, y3 = X.copy(), y.copy()
    other = np.flatnonzero(fold == 3)
    y3[other] = rng.integers(0, NUM_CLASSES, len(other))
    _, t_other = fit_predict_oof(stacker_factory(cfg), X3, y3, fold, Xt, fold_ids=[k], num_classes=NUM_CLASSES)
    assert not np.array_equal(t_ref[k], t_other[k])


def test_stack_idempotent(synth):
    cfg = cfg_of(*FIXED, "name=stack_idem", "stack.meta_features=false")
    run_stack(cfg, synth, progress=False)
    again = run_stack(cfg, synth, progress=False)
    assert again["folds"] == {} and again["skipped"] == list(range(K))


def test_stack_config_errors():
    with pytest.raises(ConfigError, match="unknown lgbm"):
        stack_config({"name": "s", "stack": {"inputs": ["a"]}, "lgbm": {"num_leafs": 3}})
    with pytest.raises(ConfigError, match="inputs"):
        stack_config({"name": "s"})


def test_stack_script(synth):
    cmd = [sys.executable, str(REPO / "src" / "stack.py"), "--config", "stack_lgbm", "--workdir",
           str(synth.workdir), "--data-dir", str(synth.data_dir), "--no-progress", *SMALL, *FIXED,
           "name=stack_script"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "OOF: macro-F1" in r.stdout
    assert Experiment(synth.oof_dir, "stack_script").fold_done(4)
