"""Experiment configs: defaults, loading, and the fold file an experiment trains on."""
from __future__ import annotations

from pathlib import Path

from rakuten.config import Config, ConfigError, load_config
from rakuten.defaults import CLASS_WEIGHT_SOURCES, EXPERIMENT_DEFAULTS

# label_issues.action values (training.cleaning applies them)
ACTIONS = ("drop", "relabel", "downweight")
# predict.tta views (data.image_cache.apply_view applies them)
TTA_VIEWS = ("identity", "hflip")


# A backbone swapped by ``--backbones reduced``: models/backbones.py builds ``reduced:<source>`` as the
# same architecture, reduced and randomly initialised. Its family table lives there (a layer above
# this one), so the family is checked by backbones.reduced_source and by stages.validate_preset.
REDUCED_PREFIX = "reduced:"


def reduced_backbone(source: str) -> str:
    """``reduced:<source>`` for a hub, local-folder or timm backbone; ``tiny:*``, ``pypi:*`` (small
    or offline already) and ``reduced:*`` sources as they are."""
    if source.startswith(("tiny:", "pypi:", REDUCED_PREFIX)):
        return source
    return REDUCED_PREFIX + source


def load_experiment(path: str | Path, overrides: list[str] | None = None, backbones: str | None = None) -> Config:
    """An experiment config by name or path, over ``EXPERIMENT_DEFAULTS`` with ``key=value``
    overrides, its types and allowed values checked (unknown keys and bad switches fail here): the one
    loader (``config.load_config``) with the experiment defaults and ``check_experiment``.
    ``backbones="reduced"`` swaps a text or image model's hub/timm backbone for ``reduced:<backbone>``
    after the overrides, so the recorded config, its hash and a bundle all name what was trained."""
    if backbones not in (None, "full", "reduced"):
        raise ConfigError(f"backbones must be full or reduced (got {backbones!r})")
    cfg = load_config(path, overrides, defaults=EXPERIMENT_DEFAULTS, check=check_experiment)
    if backbones == "reduced" and cfg.kind in ("text", "image"):
        cfg.model.backbone = reduced_backbone(str(cfg.model.backbone))
    return cfg


def _where(cfg) -> str:
    """What a config error names: the YAML it was read from, else (a recorded config) its name."""
    return cfg.get("_source_") or cfg.get("name") or "config"


def check_experiment(cfg: Config) -> None:
    """The rules of a unimodal experiment config beyond types and ranges (one-line ConfigError)."""
    where = _where(cfg)
    if cfg.kind not in ("text", "image", "tfidf", "knn"):
        raise ConfigError(f"{where}: kind must be text, image, tfidf or knn (got {cfg.kind!r})")
    if cfg.train.get("early_stop") not in ("inner", "fold"):
        raise ConfigError(f"{where}: train.early_stop must be inner or fold (got {cfg.train.get('early_stop')!r})")
    if cfg.model.get("head") not in ("mlp", "logreg"):
        raise ConfigError(f"{where}: model.head must be mlp or logreg (got {cfg.model.get('head')!r})")
    if cfg.kind == "knn" and (int(cfg.knn.k) < 1 or float(cfg.knn.temperature) <= 0):
        raise ConfigError(f"{where}: knn.k must be >= 1 and knn.temperature > 0")
    if cfg.kind != "image" and cfg.data.field not in ("title", "description", "text"):
        raise ConfigError(f"{where}: data.field must be title, description or text")
    tta = cfg.predict.tta or ["identity"]
    if tta != ["identity"]:
        if not isinstance(tta, list) or any(v not in TTA_VIEWS for v in tta):
            raise ConfigError(f"{where}: predict.tta must be a list of {', '.join(TTA_VIEWS)} (got {tta!r})")
    if cfg.kind != "image" and list(tta) != ["identity"]:
        raise ConfigError(f"{where}: predict.tta is for image models (kind {cfg.kind!r})")
    if cfg.loss.class_weights not in CLASS_WEIGHT_SOURCES:
        raise ConfigError(f"{where}: loss.class_weights must be {' or '.join(CLASS_WEIGHT_SOURCES)} "
                          f"(got {cfg.loss.class_weights!r})")
    if cfg.loss.class_weights == "difficulty" and cfg.kind in ("tfidf", "knn") and float(cfg.loss.class_weight_power):
        raise ConfigError(f"{where}: loss.class_weights: difficulty needs embeddings; kind {cfg.kind} "
                          "takes frequency weights")
    validate_cleaning(cfg)


def validate_cleaning(cfg) -> None:
    """Label-issue cleaning and pseudo-labels (``training.cleaning``): bad switches fail when the
    config loads, not mid-run."""
    li = cfg.data.get("label_issues") or {}
    if li.get("file"):
        if li.get("action") not in ACTIONS:
            raise ConfigError(f"{_where(cfg)}: data.label_issues.action must be one of {', '.join(ACTIONS)} "
                              f"(got {li.get('action')!r})")
        if not 0 < float(li["frac"]) <= 1:
            raise ConfigError(f"{_where(cfg)}: data.label_issues.frac must be in (0, 1]")
        if li.get("action") == "downweight" and not 0 <= float(li["weight"]) < 1:
            raise ConfigError(f"{_where(cfg)}: data.label_issues.weight must be in [0, 1) for downweight")
    pl = cfg.train.get("pseudo_labels") or {}
    if pl.get("from"):
        if not 0 <= float(pl["threshold"]) <= 1:
            raise ConfigError(f"{_where(cfg)}: train.pseudo_labels.threshold must be in [0, 1]")
        if float(pl["weight"]) <= 0:
            raise ConfigError(f"{_where(cfg)}: train.pseudo_labels.weight must be > 0")
        if pl["source"] not in ("fold", "bagged"):
            raise ConfigError(f"{_where(cfg)}: train.pseudo_labels.source must be fold or bagged")
        if pl.get("from") == cfg.get("name"):
            raise ConfigError(f"{_where(cfg)}: train.pseudo_labels.from cannot be the experiment itself")
    weighted = ((li.get("file") and li.get("action") == "downweight")
                or (pl.get("from") and float(pl["weight"]) != 1.0))
    torch_head = cfg.kind in ("text", "image") and cfg.model.head != "logreg"
    if weighted and (torch_head or cfg.kind == "knn"):
        # the torch losses and the kNN vote take no per-row weight yet
        raise ConfigError(f"{_where(cfg)}: per-row weights (label_issues downweight, pseudo_labels.weight != 1) "
                          "are supported by kind tfidf and the logreg head only; use drop/relabel or weight 1")

