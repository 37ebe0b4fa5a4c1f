"""Heads trained on frozen, cached features (the thesis's feature-extraction mode, section 5.6.2)."""
from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from torch import nn

from rakuten.defaults import EXPERIMENT_DEFAULTS
from rakuten.models.registry import register_model

# a model section given without a key (a test's dict) gets the experiment default, as a config does
_M = EXPERIMENT_DEFAULTS["model"]


@register_model("head_mlp")
class FeatureHead(nn.Module):
    """features [B, F] -> (optional hidden layer) -> logits; the embedding is the hidden layer (or input)."""

    def __init__(self, cfg, num_classes: int, in_dim: int, **_):
        super().__init__()
        hidden = int(cfg.get("head_hidden", _M["head_hidden"]) or 0)
        self.dropout = nn.Dropout(float(cfg.get("dropout", _M["dropout"])))
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU()) if hidden else None
        self.embed_dim = hidden or in_dim
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def forward(self, batch: dict) -> dict:
        """batch ``features`` [B, F] -> ``logits`` [B, C], ``embeddings`` [B, hidden or F]."""
        x = batch["features"]                                   # [B, F]
        emb = self.hidden(self.dropout(x)) if self.hidden is not None else x
        return {"logits": self.classifier(self.dropout(emb)), "embeddings": emb}


@register_model("head_logreg")
def logreg_head(cfg, num_classes: int, seed: int = 42, **_) -> LogisticRegression:
    """``model.head: logreg``: a multinomial logistic regression (scikit-learn) on standardised frozen
    features, inverse L2 strength ``cfg.head_C`` (the ``model`` section). Fitted and predicted by
    ``training.classic.frozen_logreg`` / ``predict_logreg_head``."""
    return LogisticRegression(C=float(cfg["head_C"]), max_iter=300, random_state=int(seed))
