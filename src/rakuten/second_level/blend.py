"""What the linear second levels read: log-probabilities of any logits and, for a tree stacker,
per-model confidence and agreement features.

The estimators themselves (``LogitBlend``, ``CaruanaBlend``, ``LogRegStacker``) live in
``rakuten.models.stackers`` with the registry's other models; they are re-exported here because
fold models pickled by earlier runs name them at this path.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

# re-exported: fold models pickled before the move name these classes here
from rakuten.models.stackers import CaruanaBlend, LogitBlend, LogRegStacker  # noqa: F401


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


__all__ = ["CaruanaBlend", "LogitBlend", "LogRegStacker", "log_proba", "model_meta_features"]
