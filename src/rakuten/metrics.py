"""The challenge's metrics: macro-F1 (SIGIR eCom'20), weighted-F1 (ChallengeData), accuracy."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from rakuten.labels import NUM_CLASSES


def scores(y_true, y_pred, num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """Macro-F1 over all classes present in either vector, weighted-F1 and accuracy, as fractions."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(1)
    return {
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


def chance_macro_f1(y_true) -> float:
    """Macro-F1 of always predicting the most frequent class: the floor every model must clear."""
    y_true = np.asarray(y_true)
    major = np.bincount(y_true).argmax()
    return scores(y_true, np.full_like(y_true, major))["macro_f1"]
