"""The scikit-learn members of a unimodal K-fold run: TF-IDF linear models, k-nearest neighbours and
a logistic-regression head on frozen embeddings. Same contract as the torch members: fit on the
training folds, return fold k's and the test rows' logits (log-probabilities).

Why they are here: on the real French titles (``shared/data/rakuten_text_fr``) a linear model on
TF-IDF n-grams plus frozen e5 embeddings is the strongest single member, and nearest neighbours on
either representation are weak alone but make different errors, which the blend exploits.

Every model here is built through the model registry: ``create_model("tfidf_linear", ...)``,
``create_model("knn", ...)`` (a vote over a bank of training rows) and ``create_model("head_logreg",
...)``. ``predict_classic`` and ``predict_logreg_head`` are their one predict, for a fold's rows and
for a bundle's new products.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import sparse

from rakuten.artifacts import Experiment, Predictions
from rakuten.config import Config
from rakuten.errors import RakutenError
from rakuten.experiment import load_experiment
from rakuten.labels import NUM_CLASSES
# knn_log_proba re-exported: the vote is the registry's "knn" model, called here by predict_classic
from rakuten.models.knn import knn_log_proba  # noqa: F401
from rakuten.models.registry import create_model
from rakuten.models.tfidf import _quiet_sklearn
from rakuten.training.features import finetuned_features, frozen_features
from rakuten.training.fold_data import experiment_data_key, field_texts
from rakuten.training.losses import class_weight_vector

log = logging.getLogger(__name__)


def l2_normalise(f: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity becomes a dot product), float32."""
    f = np.asarray(f, dtype=np.float32)
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)


def source_features(name: str, paths, fd, progress: bool = True, fold: int | None = None) -> np.ndarray:
    """Embeddings [n_train + n_test, D] of experiment ``name``, L2-normalised (cosine similarity is a
    dot product): a frozen-backbone experiment's cached extraction (shared with it), or, for a
    fine-tuned text or image experiment already trained in this workdir, its fold-``fold`` model's
    embeddings (``features.finetuned_features``, with the config it was trained with)."""
    tuned = finetuned_source(paths, name)
    if tuned is not None:
        if fold is None:
            raise RakutenError(f"feature source {name}: a fine-tuned experiment's embeddings are per fold")
        return l2_normalise(finetuned_features(name, tuned, paths, fd, fold, progress))
    src = load_experiment(name)
    if not src.model.get("freeze_backbone"):
        raise RakutenError(f"feature source {name}: not a frozen-backbone experiment (model.freeze_backbone) "
                           "and not a fine-tuned one trained in this workdir yet")
    # The cache is keyed on the source's data key (the inputs its backbone reads: same rows, same
    # text field or images), not this member's, which covers every field and the images: with the
    # member's key the source's extraction was never found and e5 / EfficientNet ran a second time.
    src_fd = dataclasses.replace(fd, content_key=experiment_data_key(src, fd.train, fd.test))
    return l2_normalise(frozen_features(src, paths, src_fd, progress))


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


def _l2_rows(X):
    norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel()) + 1e-12
    return sparse.diags(1.0 / norms) @ X


def predict_classic(keep: dict, cfg, texts=None, feats: np.ndarray | None = None) -> np.ndarray:
    """Log-probabilities [n, 27] float32 of a fitted scikit-learn member on new rows: the one predict
    of ``kind: tfidf`` and ``kind: knn``, for a fold's own rows and test rows (``fit_predict``) and for
    a bundle's new products alike.

    ``keep``: what ``fit_predict`` kept (``kind`` tfidf, knn_tfidf or knn_features and the fitted
    objects); ``texts``: the rows' input field; ``feats``: the rows' L2-normalised frozen features
    (``l2_normalise``) for a member that reads them (``tfidf.dense``, ``knn.features``)."""
    kind = keep["kind"]
    if kind == "tfidf":
        dense = None if feats is None else feats * float(cfg.tfidf.dense.weight)
        return keep["model"].predict_logits(list(texts), NUM_CLASSES, dense=dense)
    if kind == "knn_tfidf":
        feats = _l2_rows(keep["vectorizer"].vectorize(list(texts)))
    if kind in ("knn_tfidf", "knn_features"):
        vote = create_model("knn", cfg=cfg.knn, num_classes=NUM_CLASSES).fit(keep["bank"], keep["bank_labels"],
                                                                            keep.get("bank_rows"))
        return vote.predict_logits(feats)
    raise RakutenError(f"{cfg.name}: kept model kind {kind!r} is not a scikit-learn member")


def fit_fold(cfg, paths, fd, fold: int, tr_rows, va_rows, y_tr, y_va, sample_weight, extra: dict,
             progress: bool = True):
    """The TF-IDF / k-NN branch of a unimodal fold: fit on the training rows, predict fold ``fold`` and
    the test rows. Returns (fold predictions, test predictions, ("skops", the fitted model, which
    ``safe_io`` saves), no epoch history); what the fit chose (C, its inner search) is added to ``extra``."""
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
    return va, te, ("skops", keep), []


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
        dense_cfg = cfg.tfidf.dense or {}
        feats = None
        if dense_cfg.get("experiment"):
            feats = source_features(dense_cfg["experiment"], paths, fd, progress, fold)
        cw = class_weight_vector(cfg.loss, y_tr, NUM_CLASSES)
        w = None if cw is None else cw[y_tr]
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64) * (1.0 if w is None else w)
        model = create_model("tfidf_linear", cfg=cfg.tfidf, num_classes=NUM_CLASSES, seed=int(cfg.train.seed))
        model.fit(list(texts_train[tr_rows]), y_tr, w,
                  dense=None if feats is None else feats[tr_rows] * float(dense_cfg.weight))
        keep.update(kind="tfidf", model=model)
        va = predict_classic(keep, cfg, texts_train[va_rows], None if feats is None else feats[va_rows])
        te = predict_classic(keep, cfg, texts_test, None if feats is None else feats[n_tr:])
        if model.search:  # a tuned C (tfidf.C as a list): the choice and the inner search go into meta.json
            extra = {"C": model.best_C, "inner_search": model.search}
        if model.calibration == "temperature" and model.kind == "svm":
            extra["temperature"] = model.temperature
    elif cfg.kind == "knn":
        if sample_weight is not None:
            raise RakutenError(f"{cfg.name}: kind knn takes no per-row weights")
        y_bank = np.asarray(y_tr, dtype=np.int64)
        feats = None
        if cfg.knn.features == "tfidf":
            # the TF-IDF vectorisers of the experiment's tfidf section, fitted on the training folds only
            vec = create_model("tfidf_linear", cfg=cfg.tfidf, num_classes=NUM_CLASSES, seed=int(cfg.train.seed))
            bank = _l2_rows(vec.vectorize(list(texts_train[tr_rows]), fit=True))
            keep.update(kind="knn_tfidf", vectorizer=vec, bank=bank, bank_labels=y_bank)
        else:
            feats = source_features(cfg.knn.features, paths, fd, progress, fold)
            keep.update(kind="knn_features", bank=feats[tr_rows], bank_labels=y_bank)
        va = predict_classic(keep, cfg, texts_train[va_rows], None if feats is None else feats[va_rows])
        te = predict_classic(keep, cfg, texts_test, None if feats is None else feats[n_tr:])
    else:
        raise RakutenError(f"{cfg.name}: kind {cfg.kind!r} is not a scikit-learn member")
    return va, te, extra


def frozen_logreg(cfg, feats: np.ndarray, tr_rows, va_rows, y_tr, n_train: int, keep: dict | None = None,
                  sample_weight=None, predict_feats=None):
    """Multinomial logistic regression on standardised frozen embeddings (``model.head: logreg``):
    on real e5 title embeddings it matched or beat the torch linear head, with no epochs to choose.
    ``predict_feats``: the features of each test-time view; predictions average their log-probabilities.
    Returns (fold rows' log-probabilities, test rows' log-probabilities), both from ``predict_logreg_head``."""
    mu = feats[tr_rows].mean(0, keepdims=True)
    sd = feats[tr_rows].std(0, keepdims=True) + 1e-6
    cw = class_weight_vector(cfg.loss, y_tr, NUM_CLASSES, feats[tr_rows])
    w = None if cw is None else cw[y_tr]
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64) * (1.0 if w is None else w)
    clf = create_model("head_logreg", cfg=cfg.model, num_classes=NUM_CLASSES, seed=int(cfg.train.seed))
    with _quiet_sklearn():
        clf.fit(((feats - mu) / sd)[tr_rows], y_tr, sample_weight=w)
    head = {"kind": "frozen_logreg", "clf": clf, "mu": mu, "sd": sd}
    if keep is not None:
        keep.update(head)
    views = [feats] if not predict_feats else list(predict_feats)
    return (predict_logreg_head(head, [v[va_rows] for v in views]),
            predict_logreg_head(head, [v[n_train:] for v in views]))


def predict_logreg_head(keep: dict, view_feats: list[np.ndarray]) -> np.ndarray:
    """Log-probabilities [n, 27] float32 of a fitted logistic-regression head (``frozen_logreg``'s
    ``keep``) on rows' frozen features, one array per test-time view, averaged over the views; a class
    the head never saw gets log-probability -30. The one predict of ``model.head: logreg``: the fold's
    run and a bundle both call it."""
    clf, mu, sd = keep["clf"], keep["mu"], keep["sd"]

    def logp(x):
        full = np.full((len(x), NUM_CLASSES), -30.0, dtype=np.float64)
        full[:, clf.classes_] = clf.predict_log_proba((x - mu) / sd)
        return full.astype(np.float32)
    return np.mean([logp(v) for v in view_feats], axis=0).astype(np.float32)


__all__ = ["fit_predict", "frozen_logreg", "knn_log_proba", "l2_normalise", "predict_classic", "predict_logreg_head",
           "source_features", "Predictions"]
