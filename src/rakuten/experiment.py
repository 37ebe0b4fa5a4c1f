"""Experiment configs: defaults, loading, and the fold file an experiment trains on."""
from __future__ import annotations

import copy
from pathlib import Path

from rakuten.config import Config, ConfigError, load_config
from rakuten.folds import folds_path, read_folds
from rakuten.paths import Paths

# Deep-copied into every experiment config (never aliased); a config states only what differs.
EXPERIMENT_DEFAULTS: dict = {
    "kind": "text",                 # text | image | tfidf
    "folds": {"k": 5, "seed": 42},
    "data": {
        "field": "title",           # title | description | text (title + description)
        "max_len": 128,
        "pad_to_multiple_of": 8,    # text batches pad to a multiple of this (32/64: fewer shapes for CUDA graphs)
        "prefix": "",               # E5 wants "passage: "
        "image_size": 224,          # network input
        "cache_size": 256,          # decoded uint8 cache; crops are taken from it
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
        "patience": 2,              # early stopping on the held-out fold's macro-F1
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
    },
    "loss": {"name": "ce", "class_weight_power": 0.0, "label_smoothing": 0.0, "focal_gamma": 2.0},
    "augment": {"crop_scale": [0.6, 1.0], "hflip": True, "max_rotate_deg": 15},
    "tfidf": {"word_ngrams": [1, 2], "char_ngrams": [2, 5], "max_features": 200000, "C": 4.0,
              "classifier": "logreg"},
}


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Config:
    cfg = load_config(path, overrides, defaults=copy.deepcopy(EXPERIMENT_DEFAULTS))
    if cfg.kind not in ("text", "image", "tfidf"):
        raise ConfigError(f"{cfg._source_}: kind must be text, image or tfidf (got {cfg.kind!r})")
    if cfg.kind != "image" and cfg.data.field not in ("title", "description", "text"):
        raise ConfigError(f"{cfg._source_}: data.field must be title, description or text")
    return cfg


def experiment_folds(cfg, paths: Paths):
    """(fold file path, fold DataFrame) of the experiment's ``folds: {k, seed}``."""
    p = folds_path(paths.folds_dir, int(cfg.folds.k), int(cfg.folds.seed))
    return p, read_folds(p)
