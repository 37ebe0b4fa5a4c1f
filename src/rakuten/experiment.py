"""Experiment configs: defaults, loading, and the fold file an experiment trains on."""
from __future__ import annotations

import copy
from pathlib import Path

from rakuten.config import Config, ConfigError, load_config, validate_config
from rakuten.defaults import EXPERIMENT_DEFAULTS
from rakuten.models.backbones import reduced_source
from rakuten.training.cleaning import validate


def load_experiment(path: str | Path, overrides: list[str] | None = None, backbones: str | None = None) -> Config:
    """An experiment config over the defaults, with ``overrides``, validated. ``backbones="reduced"``
    swaps a text or image model's hub/timm backbone for ``reduced:<backbone>`` (the same architecture,
    reduced and randomly initialised: ``models/backbones.py``) after the overrides, so the recorded
    config, its hash and a bundle all name what was trained."""
    cfg = load_config(path, overrides, defaults=copy.deepcopy(EXPERIMENT_DEFAULTS))
    if backbones == "reduced" and cfg.kind in ("text", "image"):
        cfg.model.backbone = reduced_source(str(cfg.model.backbone))
    elif backbones not in (None, "full", "reduced"):
        raise ConfigError(f"backbones must be full or reduced (got {backbones!r})")
    validate_config(cfg, EXPERIMENT_DEFAULTS, cfg._source_)
    if cfg.kind not in ("text", "image", "tfidf", "knn"):
        raise ConfigError(f"{cfg._source_}: kind must be text, image, tfidf or knn (got {cfg.kind!r})")
    if cfg.train.get("early_stop") not in ("inner", "fold"):
        raise ConfigError(f"{cfg._source_}: train.early_stop must be inner or fold (got {cfg.train.get('early_stop')!r})")
    if cfg.model.get("head") not in ("mlp", "logreg"):
        raise ConfigError(f"{cfg._source_}: model.head must be mlp or logreg (got {cfg.model.get('head')!r})")
    if cfg.kind == "knn" and (int(cfg.knn.k) < 1 or float(cfg.knn.temperature) <= 0):
        raise ConfigError(f"{cfg._source_}: knn.k must be >= 1 and knn.temperature > 0")
    if cfg.kind != "image" and cfg.data.field not in ("title", "description", "text"):
        raise ConfigError(f"{cfg._source_}: data.field must be title, description or text")
    tta = cfg.get("predict", {}).get("tta") or ["identity"]
    if tta != ["identity"]:
        from rakuten.data.image_cache import TTA_VIEWS   # imports torch: only when TTA is on
        if not isinstance(tta, list) or any(v not in TTA_VIEWS for v in tta):
            raise ConfigError(f"{cfg._source_}: predict.tta must be a list of {', '.join(TTA_VIEWS)} (got {tta!r})")
    if cfg.kind != "image" and list(tta) != ["identity"]:
        raise ConfigError(f"{cfg._source_}: predict.tta is for image models (kind {cfg.kind!r})")
    validate(cfg)
    return cfg

