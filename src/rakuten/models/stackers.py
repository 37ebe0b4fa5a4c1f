"""The second-level estimators (stackers) over the per-model outputs of the first level, and their
registry entries: ``stack.model`` names one (``create_model(f"stacker_{stack.model}", cfg=<stack
config>)``).

All are scikit-learn style estimators (``fit``/``predict_proba``/``classes_``, clonable), so
``second_level.stacker.fit_predict_oof`` runs each fold by fold the same way:

- ``LGBMStacker`` (``lgbm``): multiclass LightGBM with inner-split early stopping, over class
  probabilities or log-odds (+ optional meta features).
- ``LogitBlend`` (``blend``): softmax(sum_m w_m * logp_m + b), M weights and C biases fitted by L-BFGS
  on the cross-entropy (L2 on the biases). M + C parameters: on ~10k rows it cannot overfit the way a
  27*M-wide stacker can. On the real French titles (rakuten_text_fr) it was the only second level
  whose nested OOF beat its best input (0.772 vs 0.763 macro-F1).
- ``CaruanaBlend`` (``caruana``): greedy forward selection with replacement (Caruana et al. 2004) of
  the models whose probability average minimises the training rows' log-loss (or maximises
  macro/weighted-F1).
- ``LogRegStacker`` (``logreg``): multinomial logistic regression on the standardised log-probabilities.

The linear ones take ``X`` = the input models' log-probabilities side by side, [n, M * C] (model-major).
(Pickled fold models of earlier runs name these classes under ``rakuten.second_level``; those
modules re-export them, so such bundles still load.)
"""
from __future__ import annotations

import lightgbm as lgb
import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from rakuten.folds import inner_split
from rakuten.labels import NUM_CLASSES, class_weights
from rakuten.metrics import f1
from rakuten.models.registry import register_model


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
        """Fit on rows ``X`` [n, F] and labels ``y``, early-stopping on an inner split of them when asked."""
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
        """Class probabilities [n, num_class] at the chosen iteration."""
        return self.booster_.predict(np.asarray(X, dtype=np.float32), num_iteration=self.best_iteration_)

    def predict(self, X):
        """The most probable class of each row."""
        return self.predict_proba(X).argmax(1)


def _split(X, n_models: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    n, width = X.shape
    if width % n_models:
        raise ValueError(f"{width} feature columns are not {n_models} models x classes")
    return X.reshape(n, n_models, width // n_models).transpose(1, 0, 2)   # [M, n, C]


class LogitBlend(ClassifierMixin, BaseEstimator):
    """softmax(sum_m w_m * X_m + b): one weight per model, one bias per class."""

    def __init__(self, n_models: int, num_class: int = NUM_CLASSES, l2_bias: float = 1e-3,
                 class_bias: bool = True, sample_weight_power: float = 0.0):
        self.n_models, self.num_class = int(n_models), int(num_class)
        self.l2_bias, self.class_bias = float(l2_bias), bool(class_bias)
        self.sample_weight_power = float(sample_weight_power)

    def fit(self, X, y):
        """Fit the M weights and C biases by L-BFGS on the (class-weighted) cross-entropy."""
        L = _split(X, self.n_models)
        y = np.asarray(y, dtype=np.int64)
        M, n, C = L.shape
        counts = np.maximum(np.bincount(y, minlength=C), 1).astype(np.float64)
        sw = (counts ** -self.sample_weight_power)[y]
        sw = sw / sw.mean()
        rows = np.arange(n)

        def loss(p):
            w, b = p[:M], (p[M:] if self.class_bias else np.zeros(C))
            Z = np.tensordot(w, L, 1) + b
            lse = logsumexp(Z, axis=1)
            val = (sw * (lse - Z[rows, y])).mean() + self.l2_bias * (b ** 2).sum()
            G = np.exp(Z - lse[:, None])
            G[rows, y] -= 1.0
            G *= (sw / n)[:, None]
            gw = np.einsum("mnc,nc->m", L, G)
            gb = G.sum(0) + 2 * self.l2_bias * b
            return val, np.concatenate([gw, gb if self.class_bias else np.zeros(C)])

        p0 = np.concatenate([np.full(M, 1.0 / M), np.zeros(C)])
        res = minimize(loss, p0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
        self.weights_, self.bias_ = res.x[:M], res.x[M:] if self.class_bias else np.zeros(C)
        self.classes_ = np.arange(C)
        return self

    def predict_proba(self, X):
        """softmax(sum_m w_m * X_m + b), [n, C]."""
        Z = np.tensordot(self.weights_, _split(X, self.n_models), 1) + self.bias_
        return softmax(Z, axis=1)

    def predict(self, X):
        """The most probable class of each row."""
        return self.predict_proba(X).argmax(1)


class CaruanaBlend(ClassifierMixin, BaseEstimator):
    """Ensemble selection: add, with replacement, the model whose inclusion most improves the metric
    of the probability average on the training rows; stop after ``max_steps`` or no improvement."""

    def __init__(self, n_models: int, num_class: int = NUM_CLASSES, max_steps: int = 30,
                 metric: str = "logloss"):
        if metric not in ("logloss", "macro_f1", "weighted_f1"):
            raise ValueError(f"blend metric must be logloss, macro_f1 or weighted_f1 (got {metric!r})")
        self.n_models, self.num_class, self.max_steps, self.metric = int(n_models), int(num_class), int(max_steps), metric

    def _score(self, P, y) -> float:
        if self.metric == "logloss":
            return float(np.log(np.clip(P[np.arange(len(y)), y], 1e-12, None)).mean())
        return f1(y, P.argmax(1), self.metric)

    def fit(self, X, y):
        """Greedy forward selection, with replacement, of the models whose average scores best."""
        probs = np.exp(_split(X, self.n_models))
        y = np.asarray(y, dtype=np.int64)
        counts = np.zeros(self.n_models)
        total = np.zeros_like(probs[0])
        best = -np.inf
        for _ in range(self.max_steps):
            cands = [self._score((total + probs[m]) / (counts.sum() + 1), y) for m in range(self.n_models)]
            m = int(np.argmax(cands))
            if cands[m] <= best + 1e-9 and counts.sum() > 0:
                break
            best, counts[m], total = cands[m], counts[m] + 1, total + probs[m]
        self.weights_ = counts / counts.sum()
        self.classes_ = np.arange(probs.shape[2])
        return self

    def predict_proba(self, X):
        """The selected weights' average of the input models' probabilities, [n, C]."""
        return np.tensordot(self.weights_, np.exp(_split(X, self.n_models)), 1)

    def predict(self, X):
        """The most probable class of each row."""
        return self.predict_proba(X).argmax(1)


class LogRegStacker(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on the standardised log-probabilities of every model."""

    def __init__(self, C: float = 0.01, max_iter: int = 500, seed: int = 42):
        self.C, self.max_iter, self.seed = float(C), int(max_iter), int(seed)

    def fit(self, X, y):
        """Standardise the log-probabilities, then fit the multinomial logistic regression."""
        X = np.asarray(X, dtype=np.float64)
        self.mu_, self.sd_ = X.mean(0), X.std(0) + 1e-6
        self.clf_ = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        self.clf_.fit((X - self.mu_) / self.sd_, y)
        self.classes_ = self.clf_.classes_
        return self

    def predict_proba(self, X):
        """Class probabilities [n, C] of standardised rows."""
        return self.clf_.predict_proba((np.asarray(X, dtype=np.float64) - self.mu_) / self.sd_)

    def predict(self, X):
        """The most probable class of each row."""
        return self.classes_[self.predict_proba(X).argmax(1)]



# ------------------------------------------------------------------------------------ registry
@register_model("stacker_lgbm")
def lgbm_stacker(cfg, num_classes: int = NUM_CLASSES, **_) -> LGBMStacker:
    """LightGBM over the inputs' probabilities (the ``lgbm`` section of a stack config)."""
    return LGBMStacker(**{**dict(cfg["lgbm"]), "num_class": int(num_classes)})


@register_model("stacker_logreg")
def logreg_stacker(cfg, num_classes: int = NUM_CLASSES, **_) -> LogRegStacker:
    """Multinomial logistic regression on log-probabilities (``logreg.C``; seed ``lgbm.seed``)."""
    return LogRegStacker(C=float(cfg["logreg"]["C"]), seed=int(cfg["lgbm"]["seed"]))


@register_model("stacker_blend")
def blend_stacker(cfg, num_classes: int = NUM_CLASSES, **_) -> LogitBlend:
    """One weight per input model + per-class biases (the ``blend`` section)."""
    b = cfg["blend"]
    return LogitBlend(len(cfg["stack"]["inputs"]), num_class=int(num_classes), l2_bias=float(b["l2_bias"]),
                      class_bias=bool(b["class_bias"]), sample_weight_power=float(b["sample_weight_power"]))


@register_model("stacker_caruana")
def caruana_stacker(cfg, num_classes: int = NUM_CLASSES, **_) -> CaruanaBlend:
    """Hill-climbing selection of a probability average (``blend.max_steps``, ``blend.metric``)."""
    b = cfg["blend"]
    return CaruanaBlend(len(cfg["stack"]["inputs"]), num_class=int(num_classes), max_steps=int(b["max_steps"]),
                        metric=b["metric"])
