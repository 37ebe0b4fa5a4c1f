"""Stacker: the real stacking loop against sklearn's cross_val_predict and lightgbm called directly,
leakage, held-out test scores, artifacts."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax as scipy_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, cross_val_predict

from rakuten.artifacts import Experiment, Predictions
from rakuten.config import ConfigError, load_config
from rakuten.folds import folds_path, inner_split
from rakuten.labels import NUM_CLASSES
from rakuten.second_level.stacker import (STACK_DEFAULTS, fit_predict_oof, load_stack_data, run_stack,
                                          stack_config, stack_features, stacker_factory)
from synthetic import K, SEED, assert_test_close_to_oof, make_synthetic, single_scores

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


def _npz_frame(path: Path) -> pd.DataFrame:
    """An npz artifact's softmax probabilities, indexed by product id (numpy + scipy only)."""
    with np.load(path) as z:
        return pd.DataFrame(scipy_softmax(z["logits"].astype(np.float64), axis=1), index=z["ids"].astype(np.int64))


def _independent_features(paths, names):
    """Stack features rebuilt straight from the npz files (not through the stacker's loader): per fold
    k, the OOF rows of each input's fold<k>.npz, joined to the fold file by id; and each input's
    test_fold<k>.npz (whose rows are in a fold-specific order) joined to one test id order."""
    folds = pd.read_csv(folds_path(paths.folds_dir, K, SEED))
    oof = [pd.concat([_npz_frame(Path(paths.oof_dir) / n / f"fold{k}.npz") for k in range(K)]) for n in names]
    X = np.hstack([o.loc[folds["id"]].to_numpy() for o in oof])
    test_ids = np.sort(_npz_frame(Path(paths.oof_dir) / names[0] / "test_fold0.npz").index.to_numpy())
    Xt = {k: np.hstack([_npz_frame(Path(paths.oof_dir) / n / f"test_fold{k}.npz").loc[test_ids].to_numpy()
                        for n in names]) for k in range(K)}
    return X, folds["label"].to_numpy(), folds["fold"].to_numpy(), folds, Xt, test_ids


def test_fit_predict_oof_equals_cross_val_predict_logreg(synth):
    X, y, fold, *_ = _independent_features(synth, ["text_tiny_title", "image_tiny"])
    model = LogisticRegression(max_iter=300, C=0.5, tol=1e-2)
    ours, _ = fit_predict_oof(lambda: LogisticRegression(max_iter=300, C=0.5, tol=1e-2), X, y, fold)
    ref = cross_val_predict(model, X, y, cv=PredefinedSplit(fold), method="predict_proba")
    assert np.allclose(ours, ref, atol=1e-8)


def _lightgbm_reference(lg: dict, X, y, fold, Xt) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, int]]:
    """Fold k: ``lightgbm.train`` called directly on the other folds' rows (early stopping on a
    stratified inner split of those rows only), applied to fold k's rows and to the upstream fold-k
    models' test features. Returns (OOF probabilities, {k: test probabilities}, {k: rounds})."""
    params = {"objective": "multiclass", "num_class": NUM_CLASSES, "metric": "multi_logloss",
              "num_leaves": lg["num_leaves"], "learning_rate": lg["learning_rate"],
              "min_data_in_leaf": lg["min_data_in_leaf"], "feature_fraction": lg["feature_fraction"],
              "bagging_fraction": lg["bagging_fraction"], "bagging_freq": lg["bagging_freq"],
              "lambda_l2": lg["lambda_l2"], "max_bin": lg["max_bin"], "num_threads": 1, "seed": lg["seed"],
              "deterministic": True, "force_row_wise": True, "verbose": -1}
    X, oof, tests, rounds = X.astype(np.float32), np.zeros((len(y), NUM_CLASSES)), {}, {}
    for k in range(K):
        tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if lg["early_stopping_rounds"] > 0:
            # which training rows watch the rounds: the folds module's stratified split (its own
            # tests cover it); everything after it is lightgbm's own API
            fit, val = inner_split(np.arange(len(tr)), y[tr], lg["inner_frac"], lg["seed"])
            dfit = lgb.Dataset(X[tr][fit], y[tr][fit])
            booster = lgb.train(params, dfit, lg["num_boost_round"],
                                valid_sets=[lgb.Dataset(X[tr][val], y[tr][val], reference=dfit)],
                                callbacks=[lgb.early_stopping(lg["early_stopping_rounds"], verbose=False)])
            rounds[k] = booster.best_iteration
        else:
            booster = lgb.train(params, lgb.Dataset(X[tr], y[tr]), lg["num_boost_round"])
            rounds[k] = lg["num_boost_round"]
        oof[te] = booster.predict(X[te], num_iteration=rounds[k])
        tests[k] = booster.predict(Xt[k].astype(np.float32), num_iteration=rounds[k])
    return oof, tests, rounds


@pytest.mark.parametrize("path", ["fixed", "early_stopping"])
def test_run_stack_equals_lightgbm_called_directly(synth, path):
    """What run_stack writes, OOF and every fold's test file, equals lightgbm.train called directly on
    features built from the npz files with scipy's softmax: a permuted feature column, another
    fold's upstream test features or a booster cut at the wrong round changes the test files."""
    over = FIXED if path == "fixed" else ["lgbm.num_boost_round=40", "lgbm.early_stopping_rounds=3", "lgbm.learning_rate=0.3"]
    cfg = cfg_of(*over, f"name=stack_ref_{path}", "stack.meta_features=false")
    run_stack(cfg, synth, progress=False)
    X, y, fold, folds, Xt, test_ids = _independent_features(synth, INPUTS)
    lg = {**STACK_DEFAULTS["lgbm"], **cfg.to_dict()["lgbm"]}
    oof, tests, rounds = _lightgbm_reference(lg, X, y, fold, Xt)
    exp = Experiment(synth.oof_dir, f"stack_ref_{path}")
    written = pd.concat([_npz_frame(exp.oof_path(k)) for k in range(K)]).loc[folds["id"]].to_numpy()
    np.testing.assert_allclose(written, oof, atol=1e-5)
    for k in range(K):
        got = _npz_frame(exp.test_path(k)).loc[test_ids].to_numpy()
        np.testing.assert_allclose(got, tests[k], atol=1e-5, err_msg=f"test_fold{k}")
    meta = exp.read_meta()
    assert {k: meta["folds"][str(k)]["best_iteration"] for k in range(K)} == rounds
    if path == "early_stopping":
        assert any(r < 40 for r in rounds.values()), rounds   # the path did stop early


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
    # the test rows, scored on the held-out labels: an untrained or mis-fed booster at test time
    # scores far below its OOF (TEST_GAP in synthetic.py gives the measured spread)
    assert_test_close_to_oof(synth, "stack_es")


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
    # one path for fusion and stack: the old one is refused with the new one named
    with pytest.raises(ConfigError, match="stack.test_input is now test_input"):
        stack_config({"name": "s", "stack": {"inputs": ["a"], "test_input": "averaged"}})
    with pytest.raises(ConfigError, match="test_input must be per_fold or averaged"):
        stack_config({"name": "s", "stack": {"inputs": ["a"]}, "test_input": "mean"})


def test_stack_averaged_test_input(synth):
    """``test_input=averaged`` (the path fusion uses too) feeds every fold booster the mean of the
    upstream fold models' test logits: other test predictions than per_fold's, still scored close to
    the OOF on the held-out labels."""
    run_stack(cfg_of(*FIXED, "name=stack_pf", "stack.meta_features=false"), synth, progress=False)
    run_stack(cfg_of(*FIXED, "name=stack_avg", "stack.meta_features=false", "test_input=averaged"), synth,
              progress=False)
    pf, avg = (Predictions.load(Experiment(synth.oof_dir, n).test_path(0)) for n in ("stack_pf", "stack_avg"))
    assert not np.allclose(pf.logits, avg.logits, atol=1e-4)
    assert_test_close_to_oof(synth, "stack_avg")


def test_stack_script(synth):
    cmd = [sys.executable, str(REPO / "src" / "stack.py"), "--config", "stack_lgbm", "--workdir",
           str(synth.workdir), "--data-dir", str(synth.data_dir), "--no-progress", *SMALL, *FIXED,
           "name=stack_script"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "OOF: macro-F1" in r.stdout
    assert Experiment(synth.oof_dir, "stack_script").fold_done(4)
