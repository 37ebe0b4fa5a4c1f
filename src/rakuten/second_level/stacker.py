"""LightGBM stacking over the class probabilities of any set of experiments (unimodal and fusion).

Features: softmax(logits) of every input experiment (27 columns each) and, optionally, four
meta-features of the product (description present, image present, title length, description length).
K-fold on the inputs' own fold file: fold k's booster is fitted on the other folds' OOF rows only.
Early stopping watches an inner stratified split of those training rows, never fold k. Test
predictions (``test_input: per_fold``) apply fold k's booster to the upstream fold-k models'
test probabilities, which are distributed like the OOF rows it is scored on; the fold boosters' test
probabilities are then averaged. Output logits are log-probabilities; no embeddings.

Stacking a fusion experiment on the same folds is the usual multi-level practice: the stacker never
sees fold k's labels, though fold j's fusion outputs (j != k) come from a fusion model that did; that
second-order effect is small and the same at every level of a Kaggle stack.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Callable, Mapping

import lightgbm as lgb
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from tqdm.auto import tqdm

from rakuten.artifacts import Predictions
from rakuten.config import Config, ConfigError, deep_merge, validate_config
from rakuten.defaults import STACK_DEFAULTS
from rakuten.data.prepared import load_dataset
from rakuten.labels import NUM_CLASSES, class_weights
from rakuten.metrics import scores
from rakuten.paths import Paths
from rakuten.second_level.blend import CaruanaBlend, LogitBlend, LogRegStacker, log_proba, model_meta_features
from rakuten.lineage import config_hash, upstream_signature
from rakuten.second_level.upstream import (SecondLevelData, finish_experiment,
                                           fold_is_current, inner_split, load_upstreams, open_experiment,
                                           save_fold)

log = logging.getLogger(__name__)

META_FEATURES = ("has_description", "has_image", "title_len", "description_len")


def stack_config(cfg) -> Config:
    """The config over STACK_DEFAULTS, validated."""
    d = cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(dict(cfg))
    if "test_input" in (d.get("stack") or {}):
        # its old path (before fusion and stack shared one): a bundle exported before then says so too
        raise ConfigError(f"{d.get('name') or 'stack config'}: stack.test_input is now test_input "
                          "(top level, as in fusion configs); move it, or re-export an older bundle")
    c = Config(deep_merge(STACK_DEFAULTS, d))
    validate_config(c, STACK_DEFAULTS, c.get("_source_") or c.get("name") or "config")
    if not c.get("name"):
        raise ConfigError("stack config has no name")
    if c.kind != "stack":
        raise ConfigError(f"{c.name}: kind must be stack (got {c.kind!r})")
    if not c.stack.inputs:
        raise ConfigError(f"{c.name}: stack.inputs must name the experiments to stack")
    if c.test_input not in ("per_fold", "averaged"):
        raise ConfigError(f"{c.name}: test_input must be per_fold or averaged")
    if c.stack.model not in STACK_MODELS:
        raise ConfigError(f"{c.name}: stack.model must be one of {', '.join(STACK_MODELS)} (got {c.stack.model!r})")
    if c.stack.features not in ("proba", "logodds"):
        raise ConfigError(f"{c.name}: stack.features must be proba or logodds (got {c.stack.features!r})")
    if c.blend.metric not in ("logloss", "macro_f1", "weighted_f1"):
        raise ConfigError(f"{c.name}: blend.metric must be logloss, macro_f1 or weighted_f1")
    unknown = set(c.lgbm) - set(STACK_DEFAULTS["lgbm"])
    if unknown:
        raise ConfigError(f"{c.name}: unknown lgbm key(s) {', '.join(sorted(unknown))}")
    return c


class LGBMStacker(BaseEstimator, ClassifierMixin):
    """Multiclass LightGBM with inner-split early stopping; an sklearn estimator (clonable).

    ``fit`` splits its own training rows into fit / inner-validation parts when
    ``early_stopping_rounds > 0``; with 0 it trains exactly ``num_boost_round`` rounds on all of them.
    """

    def __init__(self, num_leaves=31, learning_rate=0.05, min_data_in_leaf=20, feature_fraction=0.8,
                 bagging_fraction=1.0, bagging_freq=0, lambda_l2=1.0, max_bin=255, num_boost_round=2000,
                 early_stopping_rounds=50, inner_frac=0.1, class_weight_power=0.0, num_threads=2, seed=42,
                 num_class=NUM_CLASSES):
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.lambda_l2 = lambda_l2
        self.max_bin = max_bin
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.inner_frac = inner_frac
        self.class_weight_power = class_weight_power
        self.num_threads = num_threads
        self.seed = seed
        self.num_class = num_class

    def _params(self) -> dict:
        return {
            "objective": "multiclass", "num_class": int(self.num_class), "metric": "multi_logloss",
            "num_leaves": int(self.num_leaves), "learning_rate": float(self.learning_rate),
            "min_data_in_leaf": int(self.min_data_in_leaf), "feature_fraction": float(self.feature_fraction),
            "bagging_fraction": float(self.bagging_fraction), "bagging_freq": int(self.bagging_freq),
            "lambda_l2": float(self.lambda_l2), "max_bin": int(self.max_bin),
            "num_threads": int(self.num_threads), "seed": int(self.seed), "deterministic": True,
            "force_row_wise": True, "verbose": -1,
        }

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        w = class_weights(y, float(self.class_weight_power), int(self.num_class))[y]
        params = self._params()
        rounds = int(self.num_boost_round)
        if int(self.early_stopping_rounds) > 0 and float(self.inner_frac) > 0:
            fit_idx, val_idx = inner_split(np.arange(len(y)), y, float(self.inner_frac), int(self.seed))
            dtr = lgb.Dataset(X[fit_idx], y[fit_idx], weight=w[fit_idx], free_raw_data=True)
            dva = lgb.Dataset(X[val_idx], y[val_idx], weight=w[val_idx], reference=dtr)
            self.booster_ = lgb.train(params, dtr, num_boost_round=rounds, valid_sets=[dva], valid_names=["inner"],
                                      callbacks=[lgb.early_stopping(int(self.early_stopping_rounds), verbose=False),
                                                 lgb.log_evaluation(0)])
            self.best_iteration_ = int(self.booster_.best_iteration or rounds)
        else:
            self.booster_ = lgb.train(params, lgb.Dataset(X, y, weight=w), num_boost_round=rounds)
            self.best_iteration_ = rounds
        self.classes_ = np.arange(int(self.num_class))
        return self

    @classmethod
    def from_booster(cls, booster: lgb.Booster) -> "LGBMStacker":
        """A fitted stacker around a booster read back from LightGBM's text format (``safe_io``
        saves the best iteration's trees only, so every tree the booster holds is used)."""
        model = cls(num_class=booster.num_model_per_iteration())
        model.booster_, model.best_iteration_ = booster, booster.current_iteration()
        model.classes_ = np.arange(int(model.num_class))
        return model

    def predict_proba(self, X):
        return self.booster_.predict(np.asarray(X, dtype=np.float32), num_iteration=self.best_iteration_)

    def predict(self, X):
        return self.predict_proba(X).argmax(1)


def _proba_full(model, X, num_classes: int) -> np.ndarray:
    """predict_proba with columns placed by ``model.classes_`` (a class absent in training -> 0)."""
    p = model.predict_proba(X)
    classes = np.asarray(getattr(model, "classes_", np.arange(p.shape[1])), dtype=np.int64)
    out = np.zeros((p.shape[0], num_classes), dtype=np.float64)
    out[:, classes] = p
    return out


def fit_predict_oof(model_factory: Callable[[], object], X: np.ndarray, y: np.ndarray, folds: np.ndarray,
                    X_test: np.ndarray | Mapping[int, np.ndarray] | None = None,
                    fold_ids: list[int] | None = None, num_classes: int | None = None,
                    on_fold: Callable[[int, np.ndarray, np.ndarray, np.ndarray | None, object], None] | None = None,
                    progress: bool = False) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Out-of-fold class probabilities of a fresh ``model_factory()`` per fold (the stacking loop).

    Fold k's model is fitted on rows with ``folds != k`` and predicts rows with ``folds == k`` (and the
    test rows: one array for every fold, or ``{k: array}``). Equal to
    ``cross_val_predict(model, X, y, cv=PredefinedSplit(folds), method="predict_proba")``.
    ``on_fold(k, rows, proba, test_proba, model)`` runs after each fold (artifact writes, pruning).
    Rows of folds not in ``fold_ids`` stay NaN.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    folds = np.asarray(folds)
    c = int(num_classes or (y.max() + 1))
    oof = np.full((len(y), c), np.nan)
    tests: dict[int, np.ndarray] = {}
    todo = sorted(int(k) for k in np.unique(folds)) if fold_ids is None else list(fold_ids)
    for k in tqdm(todo, desc="folds", leave=False, disable=not progress):
        tr = np.flatnonzero(folds != k)
        te = np.flatnonzero(folds == k)
        model = model_factory()
        model.fit(X[tr], y[tr])
        oof[te] = _proba_full(model, X[te], c)
        xt = X_test.get(k) if isinstance(X_test, Mapping) else X_test
        tests[k] = None if xt is None else _proba_full(model, xt, c)
        if on_fold is not None:
            on_fold(k, te, oof[te], tests[k], model)
    return oof, tests


STACK_MODELS = ("lgbm", "logreg", "blend", "caruana")


def stacker_factory(cfg) -> Callable[[], object]:
    """A factory of fresh second-level estimators: ``stack.model`` picks LightGBM (the ``lgbm``
    section), logistic regression (``logreg``) or a blend (``blend``)."""
    cfg = stack_config(cfg)
    m, n_models = cfg.stack.model, len(cfg.stack.inputs)
    if m == "lgbm":
        params = dict(cfg.lgbm)
        return lambda: LGBMStacker(**params)
    if m == "logreg":
        return lambda: LogRegStacker(C=float(cfg.logreg.C), seed=int(cfg.lgbm.seed))
    b = cfg.blend
    if m == "blend":
        return lambda: LogitBlend(n_models, l2_bias=float(b.l2_bias), class_bias=bool(b.class_bias),
                                  sample_weight_power=float(b.sample_weight_power))
    return lambda: CaruanaBlend(n_models, max_steps=int(b.max_steps), metric=b.metric)


def _meta_features(paths: Paths, ids: np.ndarray, test_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset(paths)

    def feats(df, want):
        df = df.set_index("id")
        missing = np.setdiff1d(want, df.index.to_numpy(np.int64))
        if len(missing):
            raise ConfigError(f"stack.meta_features: product id {missing[0]} is not in the dataset "
                              f"{ds.data_dir} (artifacts made on another dataset?)")
        df = df.loc[want]
        return np.column_stack([df["has_description"].to_numpy(np.float32),
                                df["has_image"].to_numpy(np.float32),
                                df["title"].str.len().to_numpy(np.float32),
                                df["description"].str.len().to_numpy(np.float32)])

    return feats(ds.train, ids), feats(ds.test, test_ids)


def stack_features(cfg, data: SecondLevelData, paths: Paths | None = None
                   ) -> tuple[np.ndarray, dict[int, np.ndarray], list[str]]:
    """(train features [n, F] in fold-file order, test features per fold model, feature names)."""
    cfg = stack_config(cfg)
    names = list(cfg.stack.inputs)
    oof_lp = [log_proba(data.inputs[n].oof.logits) for n in names]
    test_lp = {k: [log_proba(data.inputs[n].test_input(k, cfg.test_input).logits) for n in names]
               for k in data.fold_ids}
    if cfg.stack.model != "lgbm":
        # the linear second levels read log-probabilities, model-major (what blend._split expects)
        X = np.hstack(oof_lp)
        Xt = {k: np.hstack(v) for k, v in test_lp.items()}
        return X, Xt, [f"{n}:logp{c}" for n in names for c in range(NUM_CLASSES)]
    tf = _logodds if cfg.stack.features == "logodds" else np.exp
    X = np.hstack([tf(lp) for lp in oof_lp]).astype(np.float32)
    Xt = {k: np.hstack([tf(lp) for lp in v]).astype(np.float32) for k, v in test_lp.items()}
    feat_names = [f"{n}:{'lo' if cfg.stack.features == 'logodds' else 'p'}{c}" for n in names for c in range(NUM_CLASSES)]
    if cfg.stack.model_meta:
        X = np.hstack([X, model_meta_features(oof_lp)])
        Xt = {k: np.hstack([Xt[k], model_meta_features(v)]) for k, v in test_lp.items()}
        feat_names += [f"{n}:{f}" for n in names for f in ("pmax", "entropy")] + ["agreement"]
    if cfg.stack.meta_features:
        if paths is None:
            raise ConfigError(f"{cfg.name}: stack.meta_features needs the dataset (paths)")
        m, mt = _meta_features(paths, data.ids, data.test_ids)
        X = np.hstack([X, m])
        Xt = {k: np.hstack([v, mt]) for k, v in Xt.items()}
        feat_names += list(META_FEATURES)
    return X, Xt, feat_names


def _logodds(lp: np.ndarray) -> np.ndarray:
    """log p - log(1 - p) from log-probabilities: spreads the near-0 and near-1 probabilities that
    trees would otherwise bin together."""
    p = np.clip(np.exp(lp), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def load_stack_data(cfg, paths: Paths) -> SecondLevelData:
    cfg = stack_config(cfg)
    return load_upstreams(paths, cfg, list(cfg.stack.inputs))


def _log_proba(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, None)).astype(np.float32)


def run_stack(cfg, paths: Paths, folds: list[int] | None = None, force: bool = False,
              progress: bool = True, data: SecondLevelData | None = None) -> dict:
    """Fit the LightGBM stacker fold by fold and write ``oof/<name>/``; done folds are skipped."""
    cfg = stack_config(cfg)
    data = data or load_stack_data(cfg, paths)
    names = list(cfg.stack.inputs)
    chash = config_hash(cfg, extra={"upstream": upstream_signature(paths, names), "fold_hash": data.fold_hash})
    X, Xt, feat_names = stack_features(cfg, data, paths)
    todo = data.fold_ids if folds is None else [int(k) for k in folds]
    bad = [k for k in todo if k not in data.fold_ids]
    if bad:
        raise ConfigError(f"fold {bad[0]} is not in {data.fold_file.name} (folds {data.fold_ids})")
    exp = open_experiment(paths, cfg, "stack", data, chash, {"inputs": names, "features": len(feat_names)})
    skipped = [k for k in todo if not force and fold_is_current(exp, k, data.fold_hash, chash)]
    todo = [k for k in todo if k not in skipped]
    done: dict[int, dict] = {}
    y = data.y
    t0 = [time.time()]

    def write(k, rows, proba, test_proba, model):
        s = scores(y[rows], proba)
        oof = Predictions(data.ids[rows], _log_proba(proba), None, y[rows])
        test = Predictions(data.test_ids, _log_proba(test_proba), None)
        exp.save_model(k, model)   # the fitted fold-k second level: export.py bundles it
        save_fold(exp, k, oof, test, {**s, "best_iteration": int(getattr(model, "best_iteration_", 0)),
                                      "seconds": round(time.time() - t0[0], 2)})
        done[k] = s
        t0[0] = time.time()
        log.info("%s fold %d: macro-F1 %.4f (%d rounds)", cfg.name, k, s["macro_f1"],
                 getattr(model, "best_iteration_", 0))

    if todo:
        fit_predict_oof(stacker_factory(cfg), X, y, data.fold, Xt, fold_ids=todo, num_classes=NUM_CLASSES,
                        on_fold=write, progress=progress)
    return {"name": cfg.name, "kind": "stack", "folds": done, "skipped": skipped,
            "oof": finish_experiment(exp, data), "dir": str(exp.dir)}
