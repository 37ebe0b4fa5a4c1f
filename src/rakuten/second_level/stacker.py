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

import logging
import time
from typing import Callable, Mapping

import numpy as np
from tqdm.auto import tqdm

from rakuten.artifacts import Predictions
from rakuten.config import Config, ConfigError, load_config
from rakuten.defaults import STACK_DEFAULTS
from rakuten.data.prepared import load_dataset
from rakuten.labels import NUM_CLASSES
from rakuten.metrics import scores
from rakuten.paths import Paths
from rakuten.models.registry import create_model, list_models
# LGBMStacker re-exported: fold models pickled before it moved to models.stackers name it here
from rakuten.models.stackers import LGBMStacker  # noqa: F401
from rakuten.second_level.blend import log_proba, model_meta_features
from rakuten.lineage import config_hash, upstream_signature
from rakuten.second_level.upstream import (SecondLevelData, finish_experiment, fold_is_current, load_upstreams,
                                           open_experiment, save_fold)

log = logging.getLogger(__name__)

META_FEATURES = ("has_description", "has_image", "title_len", "description_len")


def stack_config(cfg) -> Config:
    """A recorded or loaded stack config (dict or Config) through the one loader, over STACK_DEFAULTS
    and checked (``check_stack``); a config that went through it already comes back equal."""
    return load_config(cfg, defaults=STACK_DEFAULTS, check=check_stack)


def check_stack(c: Config) -> None:
    """The rules of a stack config beyond types and ranges (one-line ConfigError)."""
    if not c.get("name"):
        raise ConfigError("stack config has no name")
    if c.kind != "stack":
        raise ConfigError(f"{c.name}: kind must be stack (got {c.kind!r})")
    if not c.stack.inputs:
        raise ConfigError(f"{c.name}: stack.inputs must name the experiments to stack")
    if c.test_input not in ("per_fold", "averaged"):
        raise ConfigError(f"{c.name}: test_input must be per_fold or averaged")
    if c.stack.model not in stack_models():
        raise ConfigError(f"{c.name}: stack.model must be one of {', '.join(stack_models())} (got {c.stack.model!r})")
    if c.stack.features not in ("proba", "logodds"):
        raise ConfigError(f"{c.name}: stack.features must be proba or logodds (got {c.stack.features!r})")
    if c.blend.metric not in ("logloss", "macro_f1", "weighted_f1"):
        raise ConfigError(f"{c.name}: blend.metric must be logloss, macro_f1 or weighted_f1")
    unknown = set(c.lgbm) - set(STACK_DEFAULTS["lgbm"])
    if unknown:
        raise ConfigError(f"{c.name}: unknown lgbm key(s) {', '.join(sorted(unknown))}")


def predict_proba_full(model, X, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """predict_proba with columns placed by ``model.classes_`` (a class absent in training -> 0)."""
    p = model.predict_proba(X)
    classes = np.asarray(getattr(model, "classes_", np.arange(p.shape[1])), dtype=np.int64)
    out = np.zeros((p.shape[0], num_classes), dtype=np.float64)
    out[:, classes] = p
    return out


def stack_predict(model, X) -> np.ndarray:
    """Log-probabilities [n, 27] float32 of a fitted second-level fold model on ``stack_inputs`` rows:
    the one predict of every stacker, for the run's fold and test rows and for a bundle's products."""
    return proba_to_logp(predict_proba_full(model, X, NUM_CLASSES))


def proba_to_logp(p: np.ndarray) -> np.ndarray:
    """log of probabilities, floored at 1e-12, float32 (what a stacker's artifacts hold)."""
    return np.log(np.clip(p, 1e-12, None)).astype(np.float32)


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
        oof[te] = predict_proba_full(model, X[te], c)
        xt = X_test.get(k) if isinstance(X_test, Mapping) else X_test
        tests[k] = None if xt is None else predict_proba_full(model, xt, c)
        if on_fold is not None:
            on_fold(k, te, oof[te], tests[k], model)
    return oof, tests


def stack_models() -> tuple[str, ...]:
    """The ``stack.model`` values: every ``stacker_<name>`` in the model registry."""
    return tuple(n[len("stacker_"):] for n in list_models() if n.startswith("stacker_"))


def stacker_factory(cfg) -> Callable[[], object]:
    """A factory of fresh second-level estimators: ``stack.model`` names the registered
    ``stacker_<model>`` (lgbm, logreg, blend, caruana; ``rakuten.models.stackers``)."""
    cfg = stack_config(cfg)
    return lambda: create_model(f"stacker_{cfg.stack.model}", cfg=cfg, num_classes=NUM_CLASSES)


def product_meta_features(products) -> np.ndarray:
    """The four ``META_FEATURES`` [n, 4] float32 of products (a dataset's cleaned rows, or a bundle's
    ``products_frame``): description present, image present, title length, description length."""
    return np.column_stack([products["has_description"].to_numpy(np.float32),
                            products["has_image"].to_numpy(np.float32),
                            products["title"].str.len().to_numpy(np.float32),
                            products["description"].str.len().to_numpy(np.float32)])


def _meta_features(paths: Paths, ids: np.ndarray, test_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset(paths)

    def feats(df, want):
        df = df.set_index("id")
        missing = np.setdiff1d(want, df.index.to_numpy(np.int64))
        if len(missing):
            raise ConfigError(f"stack.meta_features: product id {missing[0]} is not in the dataset "
                              f"{ds.data_dir} (artifacts made on another dataset?)")
        return product_meta_features(df.loc[want])

    return feats(ds.train, ids), feats(ds.test, test_ids)


def stack_inputs(cfg, logps: list[np.ndarray], product_meta: np.ndarray | None = None) -> np.ndarray:
    """The one feature builder of the second level: a stacker's input rows from its inputs'
    log-probabilities (one [n, 27] array per ``stack.inputs`` model, in that order) and, when
    ``stack.meta_features``, the products' ``product_meta_features``. Training (``stack_features``)
    and a bundle both build their rows here.

    The linear second levels (logreg, blend, caruana) read the log-probabilities side by side,
    model-major (what ``blend._split`` expects); LightGBM reads probabilities or log-odds
    (``stack.features``), then optionally per-model confidence and agreement (``stack.model_meta``)
    and the product meta features."""
    if cfg.stack.model != "lgbm":
        return np.hstack(logps)
    tf = logodds if cfg.stack.features == "logodds" else np.exp
    X = np.hstack([tf(lp) for lp in logps]).astype(np.float32)
    if cfg.stack.model_meta:
        X = np.hstack([X, model_meta_features(logps)])
    if cfg.stack.meta_features:
        if product_meta is None:
            raise ConfigError(f"{cfg.name}: stack.meta_features needs the products' meta features")
        X = np.hstack([X, product_meta])
    return X


def stack_feature_names(cfg) -> list[str]:
    """Column names of ``stack_inputs``'s rows."""
    names = list(cfg.stack.inputs)
    if cfg.stack.model != "lgbm":
        return [f"{n}:logp{c}" for n in names for c in range(NUM_CLASSES)]
    out = [f"{n}:{'lo' if cfg.stack.features == 'logodds' else 'p'}{c}" for n in names for c in range(NUM_CLASSES)]
    if cfg.stack.model_meta:
        out += [f"{n}:{f}" for n in names for f in ("pmax", "entropy")] + ["agreement"]
    if cfg.stack.meta_features:
        out += list(META_FEATURES)
    return out


def stack_features(cfg, data: SecondLevelData, paths: Paths | None = None
                   ) -> tuple[np.ndarray, dict[int, np.ndarray], list[str]]:
    """(train features [n, F] in fold-file order, test features per fold model, feature names), built
    by ``stack_inputs`` from the upstream OOF and each fold's test input (``test_input``)."""
    cfg = stack_config(cfg)
    names = list(cfg.stack.inputs)
    oof_lp = [log_proba(data.inputs[n].oof.logits) for n in names]
    test_lp = {k: [log_proba(data.inputs[n].test_input(k, cfg.test_input).logits) for n in names]
               for k in data.fold_ids}
    m = mt = None
    if cfg.stack.model == "lgbm" and cfg.stack.meta_features:
        if paths is None:
            raise ConfigError(f"{cfg.name}: stack.meta_features needs the dataset (paths)")
        m, mt = _meta_features(paths, data.ids, data.test_ids)
    X = stack_inputs(cfg, oof_lp, m)
    Xt = {k: stack_inputs(cfg, v, mt) for k, v in test_lp.items()}
    return X, Xt, stack_feature_names(cfg)


def logodds(lp: np.ndarray) -> np.ndarray:
    """log p - log(1 - p) from log-probabilities: spreads the near-0 and near-1 probabilities that
    trees would otherwise bin together."""
    p = np.clip(np.exp(lp), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def load_stack_data(cfg, paths: Paths) -> SecondLevelData:
    """The stack's inputs' OOF and per-fold test predictions on its fold file (``upstream.load_upstreams``)."""
    cfg = stack_config(cfg)
    return load_upstreams(paths, cfg, list(cfg.stack.inputs))


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

    def write(k, rows, proba, _, model):
        s = scores(y[rows], proba)
        oof = Predictions(data.ids[rows], proba_to_logp(proba), None, y[rows])
        test = Predictions(data.test_ids, stack_predict(model, Xt[k]), None)   # as a bundle predicts
        exp.save_model(k, model)   # the fitted fold-k second level: export.py bundles it
        save_fold(exp, k, oof, test, {**s, "best_iteration": int(getattr(model, "best_iteration_", 0)),
                                      "seconds": round(time.time() - t0[0], 2)})
        done[k] = s
        t0[0] = time.time()
        log.info("%s fold %d: macro-F1 %.4f (%d rounds)", cfg.name, k, s["macro_f1"],
                 getattr(model, "best_iteration_", 0))

    if todo:
        fit_predict_oof(stacker_factory(cfg), X, y, data.fold, None, fold_ids=todo, num_classes=NUM_CLASSES,
                        on_fold=write, progress=progress)
    return {"name": cfg.name, "kind": "stack", "folds": done, "skipped": skipped,
            "oof": finish_experiment(exp, data), "dir": str(exp.dir)}
