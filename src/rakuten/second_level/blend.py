"""Second-level estimators over per-model log-probabilities, beside the LightGBM stacker.

All take ``X`` = the input models' log-probabilities side by side, [n, M * C] (model-major), and are
scikit-learn style estimators (``fit``/``predict_proba``/``classes_``), so ``fit_predict_oof`` runs
them fold by fold exactly like ``LGBMStacker``.

- ``LogitBlend``: softmax(sum_m w_m * logp_m + b), M weights and C biases fitted by L-BFGS on the
  cross-entropy (L2 on the biases). M + C parameters: on ~10k rows it cannot overfit the way a
  27*M-wide stacker can. On the real French titles (rakuten_text_fr) it was the only second level
  whose nested OOF beat its best input (0.772 vs 0.763 macro-F1).
- ``CaruanaBlend``: greedy forward selection with replacement (Caruana et al. 2004) of the models
  whose probability average minimises the training rows' log-loss (or maximises macro/weighted-F1).
- ``LogRegStacker``: multinomial logistic regression on the standardised log-probabilities.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from rakuten.labels import NUM_CLASSES


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
        Z = np.tensordot(self.weights_, _split(X, self.n_models), 1) + self.bias_
        return softmax(Z, axis=1)

    def predict(self, X):
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
        return float(f1_score(y, P.argmax(1), average=self.metric.split("_")[0]))

    def fit(self, X, y):
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
        return np.tensordot(self.weights_, np.exp(_split(X, self.n_models)), 1)

    def predict(self, X):
        return self.predict_proba(X).argmax(1)


class LogRegStacker(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on the standardised log-probabilities of every model."""

    def __init__(self, C: float = 0.01, max_iter: int = 500, seed: int = 42):
        self.C, self.max_iter, self.seed = float(C), int(max_iter), int(seed)

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        self.mu_, self.sd_ = X.mean(0), X.std(0) + 1e-6
        self.clf_ = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        self.clf_.fit((X - self.mu_) / self.sd_, y)
        self.classes_ = self.clf_.classes_
        return self

    def predict_proba(self, X):
        return self.clf_.predict_proba((np.asarray(X, dtype=np.float64) - self.mu_) / self.sd_)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(1)]


def model_meta_features(logps: list[np.ndarray]) -> np.ndarray:
    """Per-model confidence and agreement features for a tree stacker: for each model its max
    probability and entropy, plus the share of models that agree with the mean-probability argmax."""
    probs = [np.exp(lp) for lp in logps]
    mean_arg = np.mean(probs, axis=0).argmax(1)
    cols = []
    for p in probs:
        cols.append(p.max(1))
        cols.append(-(p * np.log(np.clip(p, 1e-12, None))).sum(1))
    cols.append(np.mean([p.argmax(1) == mean_arg for p in probs], axis=0))
    return np.column_stack(cols).astype(np.float32)


def log_proba(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities of any logits (a no-op on log-probabilities up to float error)."""
    return log_softmax(np.asarray(logits, dtype=np.float64), axis=1)
