"""The scikit-learn members of a unimodal K-fold run: TF-IDF linear models, k-nearest neighbours and
a logistic-regression head on frozen embeddings. Same contract as the torch members: fit on the
training folds, return fold k's and the test rows' logits (log-probabilities).

Why they are here: on the real French titles (``shared/data/rakuten_text_fr``) a linear model on
TF-IDF n-grams plus frozen e5 embeddings is the strongest single member, and nearest neighbours on
either representation are weak alone but make different errors, which the blend exploits.

The TF-IDF model is built through the model registry (``create_model("tfidf_linear", ...)``); k-NN is
not a model class (``knn_log_proba`` votes over a bank of training rows) and is called directly.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from rakuten.artifacts import Experiment, Predictions
from rakuten.config import Config
from rakuten.errors import RakutenError
from rakuten.experiment import load_experiment
from rakuten.labels import NUM_CLASSES, class_weights
from rakuten.models.registry import create_model
from rakuten.models.tfidf import _quiet_sklearn
from rakuten.training.features import finetuned_features, frozen_features
from rakuten.training.fold_data import field_texts

log = logging.getLogger(__name__)


def source_features(name: str, paths, fd, progress: bool = True, fold: int | None = None) -> np.ndarray:
    """Embeddings [n_train + n_test, D] of experiment ``name``, L2-normalised (cosine similarity is a
    dot product): a frozen-backbone experiment's cached extraction (shared with it), or, for a
    fine-tuned text or image experiment already trained in this workdir, its fold-``fold`` model's
    embeddings (``features.finetuned_features``, with the config it was trained with)."""
    tuned = finetuned_source(paths, name)
    if tuned is not None:
        if fold is None:
            raise RakutenError(f"feature source {name}: a fine-tuned experiment's embeddings are per fold")
        f = np.asarray(finetuned_features(name, tuned, paths, fd, fold, progress), dtype=np.float32)
        return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    src = load_experiment(name)
    if not src.model.get("freeze_backbone"):
        raise RakutenError(f"feature source {name}: not a frozen-backbone experiment (model.freeze_backbone) "
                           "and not a fine-tuned one trained in this workdir yet")
    f = np.asarray(frozen_features(src, paths, fd, progress), dtype=np.float32)
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)


def finetuned_source(paths, name: str) -> Config | None:
    """The recorded config of ``name`` when it is a fine-tuned (not frozen) text or image experiment
    with artifacts in this workdir, else None (a frozen source, or none trained)."""
    e = Experiment(paths.oof_dir, name)
    if not e.meta_path.exists():
        return None
    cfg = e.read_meta().get("config") or {}
    if cfg.get("kind") in ("text", "image") and not (cfg.get("model") or {}).get("freeze_backbone"):
        return Config(cfg)
    return None


def knn_log_proba(queries, bank, bank_labels: np.ndarray, k: int, temperature: float,
                  chunk: int = 1024) -> np.ndarray:
    """Similarity-weighted vote of the ``k`` most similar bank rows (weights exp(sim / T)), as
    log-probabilities smoothed by 1e-4 so no class is impossible. ``queries``/``bank`` are
    L2-normalised rows (dense or sparse); queries are processed in chunks to bound memory."""
    n = queries.shape[0]
    k = min(int(k), bank.shape[0])
    out = np.zeros((n, NUM_CLASSES), dtype=np.float64)
    bank_t = bank.T
    for s in range(0, n, chunk):
        q = queries[s:s + chunk]
        sim = q @ bank_t
        sim = sim.toarray() if sparse.issparse(sim) else np.asarray(sim)
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = np.exp((np.take_along_axis(sim, nn, 1) - 1.0) / float(temperature))
        rows = np.repeat(np.arange(len(nn)), k)
        np.add.at(out[s:s + chunk], (rows, bank_labels[nn].ravel()), w.ravel())
    out /= out.sum(1, keepdims=True) + 1e-12
    return np.log(out + 1e-4).astype(np.float32)


def _l2_rows(X):
    norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel()) + 1e-12
    return sparse.diags(1.0 / norms) @ X


def fit_fold(cfg, paths, fd, fold: int, tr_rows, va_rows, y_tr, y_va, sample_weight, extra: dict,
             progress: bool = True):
    """The TF-IDF / k-NN branch of a unimodal fold: fit on the training rows, predict fold ``fold`` and
    the test rows. Returns (fold predictions, test predictions, ("joblib", the fitted model), no
    epoch history); what the fit chose (C, its inner search) is added to ``extra``."""
    test_texts = np.asarray(field_texts(fd.test, cfg), dtype=object)
    # rows index train+test (pseudo-labelled test rows are n_train + j), like the dense features
    texts = np.concatenate([np.asarray(field_texts(fd.train, cfg), dtype=object), test_texts])
    keep: dict = {}
    va_l, te_l, fextra = fit_predict(cfg, paths, fd, tr_rows, va_rows, y_tr, texts, test_texts,
                                     progress, keep=keep, sample_weight=sample_weight, fold=fold)
    extra.update(fextra)
    va = Predictions(np.zeros(len(va_rows)), va_l, None, y_va)
    te = Predictions(np.zeros(len(fd.test)), te_l, None)
    if "C" in extra:
        log.info("%s fold %d: C=%g chosen by the inner search %s", cfg.name, fold, extra["C"],
                 {r["C"]: round(r["inner_macro_f1"], 4) for r in extra["inner_search"]})
    return va, te, ("joblib", keep), []


def fit_predict(cfg, paths, fd, tr_rows, va_rows, y_tr, texts_train, texts_test, progress: bool = True,
                keep: dict | None = None, sample_weight=None, fold: int | None = None):
    """(fold-k Predictions, test Predictions, extra facts for meta.json) of a scikit-learn member.

    ``texts_train`` is indexed by ``tr_rows``/``va_rows`` (rows past the training set are
    pseudo-labelled test rows); ``sample_weight`` (per training row) multiplies the class weights.
    ``keep`` (a dict) receives the fitted objects that predict new rows (``export.py`` bundles them).
    ``fold``: the fold being fitted (a fine-tuned feature source gives each fold its own embeddings)."""
    keep = {} if keep is None else keep
    n_tr = len(fd.train)
    extra: dict = {}
    if cfg.kind == "tfidf":
        dense_cfg = cfg.tfidf.get("dense") or {}
        dense = None
        if dense_cfg.get("experiment"):
            dense = source_features(dense_cfg["experiment"], paths, fd, progress, fold) * float(dense_cfg.get("weight", 1.0))
        power = float(cfg.loss.class_weight_power)
        w = class_weights(y_tr, power)[y_tr] if power else None
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64) * (1.0 if w is None else w)
        model = create_model("tfidf_linear", cfg=cfg.tfidf, num_classes=NUM_CLASSES, seed=int(cfg.train.seed))
        model.fit(list(texts_train[tr_rows]), y_tr, w, dense=None if dense is None else dense[tr_rows])
        va = model.predict_logits(list(texts_train[va_rows]), NUM_CLASSES,
                                  dense=None if dense is None else dense[va_rows])
        te = model.predict_logits(list(texts_test), NUM_CLASSES, dense=None if dense is None else dense[n_tr:])
        keep.update(kind="tfidf", model=model)
        if model.search:  # a tuned C (tfidf.C as a list): the choice and the inner search go into meta.json
            extra = {"C": model.best_C, "inner_search": model.search}
        if model.calibration == "temperature" and model.kind == "svm":
            extra["temperature"] = model.temperature
    elif cfg.kind == "knn":
        if sample_weight is not None:
            raise RakutenError(f"{cfg.name}: kind knn takes no per-row weights")
        kc = cfg.knn
        y_bank = np.asarray(y_tr, dtype=np.int64)
        if kc.features == "tfidf":
            # the TF-IDF vectorisers of the experiment's tfidf section, fitted on the training folds only
            vec = create_model("tfidf_linear", cfg=cfg.tfidf, num_classes=NUM_CLASSES, seed=int(cfg.train.seed))
            bank = _l2_rows(vec._features(list(texts_train[tr_rows]), fit=True))
            va = knn_log_proba(_l2_rows(vec._features(list(texts_train[va_rows]), fit=False)), bank, y_bank,
                               kc.k, kc.temperature)
            te = knn_log_proba(_l2_rows(vec._features(list(texts_test), fit=False)), bank, y_bank,
                               kc.k, kc.temperature)
            keep.update(kind="knn_tfidf", vectorizer=vec, bank=bank, bank_labels=y_bank)
        else:
            f = source_features(kc.features, paths, fd, progress, fold)
            bank = f[tr_rows]
            va = knn_log_proba(f[va_rows], bank, y_bank, kc.k, kc.temperature)
            te = knn_log_proba(f[n_tr:], bank, y_bank, kc.k, kc.temperature)
            keep.update(kind="knn_features", bank=bank, bank_labels=y_bank)
    else:
        raise RakutenError(f"{cfg.name}: kind {cfg.kind!r} is not a scikit-learn member")
    return va, te, extra


def frozen_logreg(cfg, feats: np.ndarray, tr_rows, va_rows, y_tr, n_train: int, keep: dict | None = None,
                  sample_weight=None, predict_feats=None):
    """Multinomial logistic regression on standardised frozen embeddings (``model.head: logreg``):
    on real e5 title embeddings it matched or beat the torch linear head, with no epochs to choose.
    ``predict_feats``: the features of each test-time view; predictions average their log-probabilities."""
    mu = feats[tr_rows].mean(0, keepdims=True)
    sd = feats[tr_rows].std(0, keepdims=True) + 1e-6
    z = (feats - mu) / sd
    power = float(cfg.loss.class_weight_power)
    w = class_weights(y_tr, power)[y_tr] if power else None
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64) * (1.0 if w is None else w)
    clf = LogisticRegression(C=float(cfg.model.get("head_C", 0.1)), max_iter=300, random_state=int(cfg.train.seed))
    with _quiet_sklearn():
        clf.fit(z[tr_rows], y_tr, sample_weight=w)
    if keep is not None:
        keep.update(kind="frozen_logreg", clf=clf, mu=mu, sd=sd)

    def logp(x):
        full = np.full((len(x), NUM_CLASSES), -30.0, dtype=np.float64)
        full[:, clf.classes_] = clf.predict_log_proba(x)
        return full.astype(np.float32)
    zs = [z] if not predict_feats else [(f - mu) / sd for f in predict_feats]
    return (np.mean([logp(v[va_rows]) for v in zs], axis=0).astype(np.float32),
            np.mean([logp(v[n_train:]) for v in zs], axis=0).astype(np.float32))


__all__ = ["fit_predict", "frozen_logreg", "knn_log_proba", "source_features", "Predictions"]
