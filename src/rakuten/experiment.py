"""Experiment configs: defaults, loading, and the fold file an experiment trains on."""
from __future__ import annotations

import copy
from pathlib import Path

from rakuten.config import Config, ConfigError, load_config, validate_config

# Deep-copied into every experiment config (never aliased); a config states only what differs.
EXPERIMENT_DEFAULTS: dict = {
    "kind": "text",                 # text | image | tfidf | knn
    "folds": {"k": 5, "seed": 42},
    "data": {
        "field": "title",           # title | description | text (title + description)
        "max_len": 128,
        "pad_to_multiple_of": 8,    # text batches pad to a multiple of this (32/64: fewer shapes for CUDA graphs)
        "prefix": "",               # E5 wants "passage: "
        "image_size": 224,          # network input
        "cache_size": 256,          # decoded uint8 cache; crops are taken from it
        # label-noise cleaning of each fold's training rows (never its validation rows); file: a
        # label_issues.csv from src/find_label_issues.py, relative to the workdir. null: off
        "label_issues": {"file": None, "action": "drop", "frac": 1.0, "weight": 0.25},
    },
    "model": {
        "name": "text_cls",
        "backbone": "tiny:bert",
        "pretrained": True,
        "dropout": 0.1,
        "freeze_backbone": False,   # feature-extraction mode: cached embeddings, head-only training
        "head_hidden": 0,
        "tokenizer_vocab": 8000,    # tiny:* only
        "grad_checkpointing": False,
        "cpu_int8": False,          # frozen extraction on CPU with int8 dynamic quantisation
        "head": "mlp",              # frozen backbone only: mlp (torch head, epochs) | logreg (scikit-learn)
        "head_C": 0.1,              # logreg head: inverse L2 strength on standardised embeddings
    },
    "train": {
        "epochs": 3,
        "batch_size": 32,
        "eval_batch_size": 128,
        "lr": 2e-5,
        "head_lr": None,            # defaults to lr
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "scheduler": "linear",
        "patience": 2,              # early stopping on the monitored macro-F1
        "early_stop": "inner",      # inner: monitor an inner split of the training folds | fold: fold k (optimistic OOF)
        "inner_frac": 0.1,
        "grad_accum": 1,
        "clip_grad": 1.0,
        "precision": "auto",        # bf16 autocast on CUDA, fp32 on CPU
        "compile": False,           # false | true | reduce-overhead (CUDA graphs) | max-autotune-no-cudagraphs
        "compile_dynamic": None,    # torch.compile(dynamic=...): null lets dynamo decide
        "channels_last": True,
        "num_workers": 0,
        "sampler": "length",        # length (grouped by length; text) | random | balanced
        "balanced_power": 0.5,
        "seed": 42,
        "device": "auto",
        "deterministic": True,
        "checkpoint": True,         # per-epoch resumable checkpoint
        # test rows predicted with probability >= threshold by the finished experiment `from` join
        # every fold's training rows (source fold: fold k uses from's fold-k model only). null: off
        "pseudo_labels": {"from": None, "threshold": 0.9, "weight": 1.0, "source": "fold"},
    },
    # image models: logits (and embeddings) averaged over these views for OOF and test predictions
    "predict": {"tta": ["identity"]},
    "loss": {"name": "ce", "class_weight_power": 0.0, "label_smoothing": 0.0, "focal_gamma": 2.0},
    "augment": {"crop_scale": [0.6, 1.0], "hflip": True, "max_rotate_deg": 15},
    "tfidf": {"word_ngrams": [1, 2], "char_ngrams": [2, 5], "max_features": 200000, "C": 4.0,
              "char_analyzer": "char_wb",   # char_wb (within words) | char (across word boundaries)
              "classifier": "logreg",
              "calibration": "sigmoid",     # svm: sigmoid (CalibratedClassifierCV) | temperature | none
              "dense": {"experiment": None, "weight": 2.0}},  # frozen embeddings appended to the n-grams
    # kind: knn. features: a frozen-backbone experiment's embeddings, or "tfidf" (the tfidf section's
    # vectorisers); neighbours come from the training folds only.
    "knn": {"features": "text_e5_text", "k": 10, "temperature": 0.05},
}


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Config:
    cfg = load_config(path, overrides, defaults=copy.deepcopy(EXPERIMENT_DEFAULTS))
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
    from rakuten.training.cleaning import validate
    validate(cfg)
    return cfg

