"""The linear second levels (blend, Caruana, logistic regression), kNN members and the nested choice
of the submitted model: independent references and cases that fail when the logic is wrong."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, cross_val_predict

from rakuten.config import load_config
from rakuten.labels import NUM_CLASSES
from rakuten.metrics import scores
from rakuten.second_level.blend import CaruanaBlend, LogitBlend, LogRegStacker, model_meta_features
from rakuten.second_level.selection import select_submission
from rakuten.second_level.stacker import STACK_DEFAULTS, run_stack, stack_features, load_stack_data
from rakuten.training.classic import knn_log_proba
from synthetic import K, assert_test_close_to_oof, make_synthetic, single_scores

INPUTS = ["text_tiny_title", "text_tiny_description", "text_tiny_text", "image_tiny", "tfidf_text"]


def cfg_of(*overrides: str):
    return load_config("stack/stack_lgbm.yaml", ["lgbm.num_threads=1", *overrides],
                       defaults=copy.deepcopy(STACK_DEFAULTS))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("linear"))


def _toy(n=600, seed=0):
    """Two models: one informative (logits = 3 * one-hot of the label + noise), one pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    good = 3.0 * np.eye(NUM_CLASSES)[y] + rng.normal(0, 1.0, (n, NUM_CLASSES))
    noise = rng.normal(0, 1.0, (n, NUM_CLASSES))
    X = np.hstack([log_softmax(good, 1), log_softmax(noise, 1)])
    return X, y


def test_logit_blend_weights_the_informative_model():
    X, y = _toy()
    m = LogitBlend(2).fit(X, y)
    assert m.weights_[0] > 0.5 and abs(m.weights_[1]) < 0.2 * m.weights_[0], m.weights_
    p = m.predict_proba(X)
    own = (X[:, :NUM_CLASSES].argmax(1) == y).mean()
    assert np.allclose(p.sum(1), 1) and (p.argmax(1) == y).mean() >= own - 0.01


def test_logit_blend_matches_independent_softmax():
    """predict_proba == softmax(w . logp + b) computed by hand from the fitted parameters."""
    X, y = _toy(seed=1)
    m = LogitBlend(2).fit(X, y)
    Z = m.weights_[0] * X[:, :NUM_CLASSES] + m.weights_[1] * X[:, NUM_CLASSES:] + m.bias_
    ref = np.exp(Z - Z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert np.allclose(m.predict_proba(X), ref, atol=1e-10)


def test_caruana_selects_the_informative_model():
    X, y = _toy(seed=2)
    m = CaruanaBlend(2).fit(X, y)
    assert m.weights_[0] == 1.0, m.weights_
    m = CaruanaBlend(2, metric="macro_f1").fit(X, y)
    assert m.weights_[0] >= 0.5


def test_logreg_stacker_equals_sklearn_on_standardised_inputs():
    X, y = _toy(seed=3)
    m = LogRegStacker(C=0.05).fit(X, y)
    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    ref = LogisticRegression(C=0.05, max_iter=500, random_state=42).fit(Z, y).predict_proba(Z)
    assert np.allclose(m.predict_proba(X), ref, atol=1e-6)


def test_model_meta_features_by_hand():
    lp = [np.log(np.array([[0.7, 0.3], [0.4, 0.6]])), np.log(np.array([[0.9, 0.1], [0.8, 0.2]]))]
    f = model_meta_features(lp)
    assert f.shape == (2, 5)
    assert np.allclose(f[:, 0], [0.7, 0.6]) and np.allclose(f[:, 2], [0.9, 0.8])
    # mean probabilities: row 0 -> class 0 (both agree), row 1 -> [0.6, 0.4] -> class 0 (one agrees)
    assert np.allclose(f[:, 4], [1.0, 0.5])


def test_knn_votes_are_neighbours_of_the_bank_only():
    bank = np.eye(4, 8)                         # 4 bank rows, orthonormal
    labels = np.array([3, 5, 5, 7])
    q = np.array([[1.0, 0.1, 0, 0, 0, 0, 0, 0], [0, 0.2, 1.0, 0, 0, 0, 0, 0]])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    lp = knn_log_proba(q, bank, labels, k=1, temperature=0.05)
    assert lp.argmax(1).tolist() == [3, 5]
    # chunking does not change the answer
    assert np.allclose(knn_log_proba(q, bank, labels, 2, 0.05, chunk=1), knn_log_proba(q, bank, labels, 2, 0.05))


def test_blend_stack_runs_oof_equal_to_cross_val_predict(synth):
    """run_stack with stack.model=blend: OOF rows equal an independent per-fold refit."""
    cfg = cfg_of("name=stack_blend_ref", "stack.model=blend")
    res = run_stack(cfg, synth, progress=False)
    data = load_stack_data(cfg, synth)
    X, _, _ = stack_features(cfg, data, synth)
    ref = cross_val_predict(LogitBlend(len(INPUTS)), X, data.y, cv=PredefinedSplit(data.fold), method="predict_proba")
    from rakuten.artifacts import Experiment
    oof = Experiment(synth.oof_dir, "stack_blend_ref").load_oof(data.folds_df)
    assert np.allclose(np.exp(oof.logits), ref, atol=1e-5)
    assert res["oof"]["macro_f1"] > max(single_scores(synth, INPUTS).values())
    assert_test_close_to_oof(synth, "stack_blend_ref")   # its test files, scored on the held-out labels


def test_selection_is_nested_and_refuses_a_second_level_below_its_input(synth):
    run_stack(cfg_of("name=stack_good", "stack.model=blend"), synth, progress=False)
    # a "stack" over one input only, which cannot beat that input by much; and one that is broken
    run_stack(cfg_of("name=stack_bad", "stack.model=caruana", "stack.inputs=[image_tiny]"), synth, progress=False)
    sel = select_submission(synth, ["stack_good", "stack_bad"], "macro_f1", write=False)
    assert sel["chosen"] == "stack_good"
    for name in ("stack_good", "stack_bad"):
        assert_test_close_to_oof(synth, name)
    assert set(sel["per_fold"]) == set(range(K))
    assert 0 < sel["nested"] <= 1 and sel["optimistic"] >= sel["nested"] - 0.05
    # only the weak single-input stack: it equals its input, never beats it -> the best input stands in
    sel = select_submission(synth, ["stack_bad"], "macro_f1", write=False)
    assert sel["fallback_to_input"] and sel["chosen"] == "image_tiny"


@pytest.mark.parametrize("model", ["logreg", "caruana"])
def test_linear_stacks_score_on_heldout_labels_like_their_oof(synth, model):
    """The other linear second levels over all five inputs: beat the best input OOF, and their test
    files, scored on the held-out labels, stay within the measured gap of that OOF."""
    res = run_stack(cfg_of(f"name=stack_{model}_heldout", f"stack.model={model}"), synth, progress=False)
    assert res["oof"]["macro_f1"] > max(single_scores(synth, INPUTS).values())
    assert_test_close_to_oof(synth, f"stack_{model}_heldout")
