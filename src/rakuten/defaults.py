"""Every config default, in one place: unimodal experiments, fusion, stack and tuning.

A config file states only what differs from these (they are deep-copied under it, never aliased);
``config.validate_config`` rejects a key that is not here. What each option means is documented
where it is used: ``experiment.py`` and ``training/``, ``second_level/fusion.py``,
``second_level/stacker.py``, ``second_level/tuning.py``.
"""
from __future__ import annotations

# Deep-copied into every experiment config (never aliased); a config states only what differs.
# loss.class_weights: frequency (rare classes) | difficulty (weak classes: training.losses.difficulty_weights)
CLASS_WEIGHT_SOURCES: tuple[str, ...] = ("frequency", "difficulty")

EXPERIMENT_DEFAULTS: dict = {
    "kind": "text",                 # text | image | tfidf | knn
    "folds": {"k": 5, "seed": 42},
    "data": {
        "field": "title",           # title | description | text (title + description)
        "max_len": 128,
        "pad_to_multiple_of": 8,    # text batches pad to a multiple of this (32/64: fewer shapes for CUDA graphs)
        "packing": False,           # text: false | true (texts packed into rows of max_len tokens) | N (rows of N)
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
        "freeze_layers": 0,         # fine-tuning a text encoder: its embeddings and lower N layers stay fixed
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
        "sampler": "length",        # length (grouped by length; text) | bucket (fixed-width length buckets) | random | balanced
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
    # class_weights: one of CLASS_WEIGHT_SOURCES (training.losses.class_weight_vector)
    "loss": {"name": "ce", "class_weight_power": 0.0, "class_weights": "frequency", "label_smoothing": 0.0,
             "focal_gamma": 2.0},
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


# Deep-copied under every fusion config; a config states only what differs.
FUSION_DEFAULTS: dict = {
    "kind": "fusion",
    "folds": {"k": 5, "seed": 42},
    "fusion": {
        "variant": "hierarchical",   # hierarchical | baseline | late
        "text_groups": [],           # hierarchical: one [title_exp, description_exp] list per text backbone
        "text": [],                  # baseline: text experiment(s) on the concatenated title + description
        "image": None,               # hierarchical / baseline: the image experiment
        "inputs": [],                # late: any experiments (embeddings not needed)
        "level1_op": "average",      # hierarchical, within a backbone
        "level2_op": "average",      # hierarchical, across backbones and the image
        "op": "concat",              # baseline: add | concat | average; late: average | weighted
        "space": "logprob",          # late weighted: prob (convex mix) | logprob (weighted geometric mean)
        "width": None,               # common width every embedding is projected to first (null: native)
        "align": "test_anchor",      # test_anchor | none: map other folds' embedding spaces (see docstring)
        "align_ridge": 1e-3,         # ridge of the alignment maps, relative to the mean feature variance
        "head": "linear",            # linear | dropout | mlp
        "dropout": 0.0,
        "hidden": 256,               # mlp head
        # hierarchical / baseline (see models/fusion_nets.py): per-row scaling of each standardised
        # embedding before fusing (none | l2 | layernorm); leave missing title/description/image out
        # (masks, from the dataset); drop present inputs in training; start from the late fusion of
        # the inputs' logits and learn a correction from the embeddings (residual)
        "normalize": "none",
        "masks": False,
        "modality_dropout": 0.0,
        "residual": False,
    },
    "train": {
        "epochs": 100,
        "batch_size": 256,
        "eval_batch_size": 8192,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "early_stop": "inner",       # inner (split of the training rows) | fixed (train.epochs)
        "inner_frac": 0.1,
        "patience": 10,
        "monitor": "macro_f1",       # macro_f1 | loss, on the inner split
        "class_weight_power": 0.0,   # loss weight (1 / class frequency) ** power
        "seed": 42,
        "num_threads": 1,            # tiny networks: more intra-op threads only add sync overhead
        # Optuna trials per fold over the regularisation (fusion.TUNED_SPACE), each fitted on the inner
        # split's fit rows and scored on its held-out rows (training rows only); 0: the config as is
        "inner_trials": 0,
        "late_lr": None,             # residual: learning rate of the late-fusion weights (null: train.lr)
    },
    # per_fold | averaged (see second_level/fusion.py); the stacker's is at the same path
    "test_input": "per_fold",
    "save_embeddings": False,        # write the fused vector as ``embeddings`` (large on real data)
}


# Deep-copied under every stack config; a config states only what differs.
STACK_DEFAULTS: dict = {
    "kind": "stack",
    "folds": {"k": 5, "seed": 42},
    "test_input": "per_fold",        # per_fold | averaged: the same option, at the same path, as fusion's
    "stack": {
        "inputs": [],
        "meta_features": False,      # the four META_FEATURES (needs the dataset)
        # lgbm (LightGBM) | logreg (multinomial LR on log-probs) | blend (per-model weights + class
        # biases on log-probs) | caruana (hill-climbing selection of a probability average)
        "model": "lgbm",
        "features": "proba",         # lgbm inputs: proba | logodds (log p - log(1 - p))
        "model_meta": False,         # lgbm: + per-model max probability, entropy, and agreement
    },
    "blend": {"l2_bias": 1.0e-3, "class_bias": True, "sample_weight_power": 0.0,
              "max_steps": 30, "metric": "logloss"},
    "logreg": {"C": 0.01},
    "lgbm": {
        "num_leaves": 31,
        "learning_rate": 0.05,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.8,
        "bagging_fraction": 1.0,
        "bagging_freq": 0,
        "lambda_l2": 1.0,
        "max_bin": 255,
        "num_boost_round": 2000,
        "early_stopping_rounds": 50,  # 0: no early stopping, exactly num_boost_round rounds
        "inner_frac": 0.1,
        "class_weight_power": 0.0,    # sample weight (1 / class frequency) ** power
        "num_threads": 2,
        "seed": 42,
    },
}


# The ``tune`` section of a fusion or stack config (second_level/tuning.py).
TUNE_DEFAULTS: dict = {"seed": 42, "n_startup_trials": 5, "n_warmup_steps": 1, "space": {}}

# Serving (rakuten.bundle): images per forward of a CNN in a bundle. The forward's transient memory
# grows with the batch: peak RSS of a 32-product request 1,921 MiB at 32 images a forward, 1,613 at 8,
# 1,509 at 4, 1,460 at 2 (EfficientNet-Lite0 at 224 px); and on 2 free cores small batches were also
# faster: 0.051 CPU s an image at 32, 0.037 at 8, 0.021 at 4, 0.027 at 2 (README "One inference path").
# Features at 2, 4, 8 and 32 were bit-identical to batches of 128 (what the run extracted with) on
# this machine; a batch of one differs by 1e-6, as a one-product request always has.
BUNDLE_IMAGE_BATCH: int = 2
