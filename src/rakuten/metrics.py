"""The challenge's metrics: macro-F1 (SIGIR eCom'20), weighted-F1 (ChallengeData), accuracy."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from rakuten.labels import NUM_CLASSES


def f1(y_true, y_pred, metric: str = "macro_f1") -> float:
    """The one F1 (``metric``: macro_f1 or weighted_f1) of labels ``y_pred`` against ``y_true``, over
    the classes present in either; a class never predicted scores 0 (no warning)."""
    if metric not in ("macro_f1", "weighted_f1"):
        raise ValueError(f"metric must be macro_f1 or weighted_f1 (got {metric!r})")
    return float(f1_score(y_true, y_pred, average=metric.split("_")[0], zero_division=0))


def f1_per_class(y_true, y_pred, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """F1 of each class 0..num_classes-1 [num_classes] (a class absent from both vectors: 0); its mean
    over the classes present in either is ``f1(y_true, y_pred)``."""
    return np.asarray(f1_score(y_true, y_pred, labels=np.arange(num_classes), average=None, zero_division=0))


def macro_f1_fast(y: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """``f1(y, pred, "macro_f1")`` via bincount (equal to 1e-12), for the inner loops that score
    thousands of candidate biases; ``y`` and ``pred`` are int class indices below ``num_classes``."""
    t = np.bincount(y, minlength=num_classes)
    p = np.bincount(pred, minlength=num_classes)
    tp = np.bincount(y[y == pred], minlength=num_classes)
    present = (t + p) > 0
    return float((2.0 * tp[present] / (t[present] + p[present])).mean())


def scores(y_true, y_pred, num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """Macro-F1 over all classes present in either vector, weighted-F1 and accuracy, as fractions."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(1)
    return {
        "macro_f1": f1(y_true, y_pred, "macro_f1"),
        "weighted_f1": f1(y_true, y_pred, "weighted_f1"),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


def chance_macro_f1(y_true) -> float:
    """Macro-F1 of always predicting the most frequent class: the floor every model must clear."""
    y_true = np.asarray(y_true)
    major = np.bincount(y_true).argmax()
    return scores(y_true, np.full_like(y_true, major))["macro_f1"]
