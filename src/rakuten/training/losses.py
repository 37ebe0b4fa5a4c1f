"""Losses that target weak (rare, confusable) classes -- the thesis's future work.

``loss:`` section of an experiment config::

    name: ce | focal
    class_weight_power: 0.0   # strength of the class weights; 0 = unweighted
    class_weights: frequency  # frequency: (count / mean count) ** -power (1 = inverse frequency);
                              # difficulty: ((1 - F1_c) / mean) ** power, F1_c of the pretrained model's
                              # features under an inner CV of the training rows (weak classes, not rare ones)
    label_smoothing: 0.0
    focal_gamma: 2.0          # focal only
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rakuten.errors import RakutenError
from rakuten.defaults import CLASS_WEIGHT_SOURCES, EXPERIMENT_DEFAULTS
from rakuten.labels import class_weights
from rakuten.metrics import f1_per_class


def difficulty_weights(features: np.ndarray, labels, power: float, num_classes: int, seed: int = 0,
                       folds: int = 3) -> np.ndarray:
    """Per-class weights ``((1 - F1_c) / mean_c(1 - F1_c)) ** power`` (``loss.class_weights: difficulty``).

    ``F1_c`` is class c's F1 of a logistic regression on ``features`` (the pretrained backbone's
    embeddings of the training rows, before any fine-tuning) under a stratified ``folds``-fold CV of
    those same rows: a class the starting features separate badly is a weak class, whatever its size.
    The thesis saw its fine-tuned models fail on weak classes; on a balanced set the frequency weights
    are all 1 and cannot target them. Only training rows are read, so fold k's labels stay unseen.
    Weights are normalised to mean 1 over ``labels`` like ``class_weights``; an absent class gets 1.
    """
    # heavy: scikit-learn, only for a difficulty-weighted loss
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels, dtype=np.int64)
    X = StandardScaler().fit_transform(np.asarray(features, dtype=np.float32))
    counts = np.bincount(y, minlength=num_classes)[:num_classes]
    k = int(min(folds, counts[counts > 0].min())) if (counts > 0).any() else 0
    if k < 2:   # a class with one row: no CV possible, no evidence of difficulty
        return np.ones(num_classes)
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    pred = cross_val_predict(LogisticRegression(C=0.1, max_iter=300), X, y, cv=cv)
    f1 = f1_per_class(y, pred, num_classes)
    present = counts > 0
    err = np.where(present, 1.0 - f1, 0.0) + 0.05   # 0.05: a perfectly separated class keeps some weight
    w = np.ones(num_classes)
    w[present] = (err[present] / err[present].mean()) ** float(power)
    return w / (w[y].mean())


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples, (1 - p_t)^gamma * CE."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean focal loss of ``logits`` [B, C] against ``target`` [B]."""
        logits = logits.float()
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        pt = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1 - pt) ** self.gamma * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


class WeightedCE(nn.Module):
    """Cross-entropy with optional class weights and label smoothing, computed in float32."""
    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits, target):
        """Mean cross-entropy of ``logits`` [B, C] against ``target`` [B]."""
        # float32 loss under bf16 autocast: log-softmax over 27 classes is cheap and bf16 loses digits
        return F.cross_entropy(logits.float(), target, weight=self.weight, label_smoothing=self.label_smoothing)


def class_weight_vector(loss_cfg: dict, labels, num_classes: int, features: np.ndarray | None = None
                        ) -> np.ndarray | None:
    """Per-class weights [num_classes] of a ``loss`` section, or None when unweighted (power 0): the one
    rule of the torch losses and the scikit-learn heads. ``features`` (the training rows' starting
    embeddings) are needed by ``class_weights: difficulty`` only."""
    loss_cfg = {**EXPERIMENT_DEFAULTS["loss"], **dict(loss_cfg)}
    source, power = loss_cfg["class_weights"], float(loss_cfg["class_weight_power"])
    if source not in CLASS_WEIGHT_SOURCES:
        raise RakutenError(f"unknown loss.class_weights {source!r}; choose {' or '.join(CLASS_WEIGHT_SOURCES)}")
    if not power:
        return None
    if source == "frequency":
        return class_weights(labels, power, num_classes)
    if features is None:
        raise RakutenError("loss.class_weights: difficulty needs embeddings of the training rows; "
                           "TF-IDF and kNN members take frequency weights only")
    return difficulty_weights(features, labels, power, num_classes)


def make_loss(loss_cfg: dict, train_labels, num_classes: int, features: np.ndarray | None = None) -> nn.Module:
    """The training loss of a ``loss`` section (``ce`` or ``focal``, class weights ``class_weight_power``
    from ``class_weights``, ``label_smoothing``); a key left out takes the experiment default.
    ``features``: the training rows' starting embeddings, needed by ``class_weights: difficulty``."""
    loss_cfg = {**EXPERIMENT_DEFAULTS["loss"], **dict(loss_cfg)}
    name = loss_cfg["name"]
    w = class_weight_vector(loss_cfg, train_labels, num_classes, features)
    weight = None if w is None else torch.tensor(w, dtype=torch.float32)
    ls = float(loss_cfg["label_smoothing"])
    if name == "ce":
        return WeightedCE(weight, ls)
    if name == "focal":
        return FocalLoss(float(loss_cfg["focal_gamma"]), weight, ls)
    raise RakutenError(f"unknown loss {name!r}; choose ce or focal")
