"""Losses that target weak (rare, confusable) classes -- the thesis's future work.

``loss:`` section of an experiment config::

    name: ce | focal
    class_weight_power: 0.0   # weights = (count / mean count) ** -power; 0 = unweighted, 1 = inverse frequency
    label_smoothing: 0.0
    focal_gamma: 2.0          # focal only
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rakuten.errors import RakutenError
from rakuten.defaults import EXPERIMENT_DEFAULTS
from rakuten.labels import class_weights


def loss_weights(labels, num_classes: int, power: float) -> torch.Tensor | None:
    """``rakuten.labels.class_weights`` as a loss's ``weight`` tensor; None when unweighted."""
    if not power:
        return None
    return torch.tensor(class_weights(labels, power, num_classes), dtype=torch.float32)


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


def make_loss(loss_cfg: dict, train_labels, num_classes: int) -> nn.Module:
    """The training loss of a ``loss`` section (``ce`` or ``focal``, class weights ``class_weight_power``,
    ``label_smoothing``); a key left out takes the experiment default."""
    loss_cfg = {**EXPERIMENT_DEFAULTS["loss"], **dict(loss_cfg)}
    name = loss_cfg["name"]
    weight = loss_weights(train_labels, num_classes, loss_cfg["class_weight_power"])
    ls = float(loss_cfg["label_smoothing"])
    if name == "ce":
        return WeightedCE(weight, ls)
    if name == "focal":
        return FocalLoss(float(loss_cfg["focal_gamma"]), weight, ls)
    raise RakutenError(f"unknown loss {name!r}; choose ce or focal")
