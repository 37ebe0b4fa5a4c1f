"""Train one fold of one unimodal experiment and write its artifacts.

Fold k's model trains on the other folds, early-stops on fold k's macro-F1, and writes
``oof/<exp>/fold<k>.npz`` (fold k's rows) and ``test_fold<k>.npz``; ``meta.json`` records the config,
fold file + hash and scores. A per-epoch checkpoint (model, optimizer, scheduler, RNG states, best
score) lets a killed run resume where it stopped and end with the same OOF as an uninterrupted one.

The stage reads top to bottom here; each part has its module: ``fold_data`` (the fold's rows),
``fold_state`` (signature, checks, lock, checkpoint state), ``inputs`` (datasets and model),
``loaders`` (sampler choice), ``features`` (the frozen-feature cache), ``epochs`` (the epoch loop)
and ``classic`` (the TF-IDF / k-NN / logistic-regression branch).
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext

import numpy as np

from rakuten.artifacts import Experiment, Predictions
from rakuten.errors import RakutenError
from rakuten.labels import NUM_CLASSES
from rakuten.lineage import config_hash, note, recorded_config, workdir_relative
from rakuten.metrics import scores
from rakuten.models.registry import create_model
from rakuten.paths import Paths
from rakuten.training import classic
from rakuten.training.cleaning import training_rows
from rakuten.training.distributed import barrier, init_distributed
from rakuten.training.engine import seed_everything
from rakuten.training.epochs import train_and_predict
from rakuten.training.predict import tta_views
from rakuten.training.features import frozen_features
from rakuten.training.fold_data import FoldData, empty_field, prepare_fold_data
from rakuten.training.fold_state import (check_experiment_folds, discard_replaced, fold_lock,
                                         restore_replaced, run_signature)
from rakuten.training.inputs import build_inputs_and_model, feature_inputs, save_tokenizer

log = logging.getLogger(__name__)


def run_fold(cfg, paths: Paths, fold: int, ds=None, progress: bool = True, force: bool = False,
             replace_stale: bool = False) -> dict:
    """Train fold ``fold`` of experiment ``cfg`` (skipped when its artifacts are complete).

    ``force``: retrain even a current fold, discarding a stale experiment (``run_fold.py --force``);
    ``replace_stale``: discard a stale experiment (config, data or fold file changed) but keep the
    folds already done on the current inputs (``run_all.py --force``, resumable)."""

    dist_info = init_distributed()
    if dist_info.enabled and cfg.kind in ("tfidf", "knn"):
        if not dist_info.is_main:
            return {"rank": dist_info.rank}  # nothing to parallelise: rank 0 fits it alone
    fd = prepare_fold_data(cfg, paths, ds)
    if fold not in set(fd.folds["fold"].tolist()):
        raise RakutenError(f"fold {fold} is not in {fd.fold_file.name} (folds 0..{fd.folds['fold'].max()})")
    empty = empty_field(cfg, fd.train)
    if empty:
        raise RakutenError(f"{cfg.name}: {empty}; a model of it would score at chance (drop it from the preset)")
    exp = Experiment(paths.oof_dir, cfg.name)
    # rank 0 holds the fold's lock (the other ranks of one data-parallel job are its helpers)
    with fold_lock(paths, cfg.name, fold) if dist_info.is_main else nullcontext():
        aside = check_experiment_folds(exp, fd, cfg, force or replace_stale, paths) if dist_info.is_main else None
        try:
            s = _run_locked_fold(cfg, paths, fold, fd, exp, dist_info, progress, force,
                                 ds.label_map if ds is not None else None)
        except BaseException:
            restore_replaced(exp, aside)   # a failed --force run keeps the finished folds
            raise
        discard_replaced(aside)
        return s


def _run_locked_fold(cfg, paths: Paths, fold: int, fd: FoldData, exp: Experiment, dist_info, progress: bool,
                     force: bool, label_map=None) -> dict:

    barrier(dist_info)
    was_done = exp.fold_done(fold, fd.fold_hash)
    if not force and was_done:
        log.info("%s fold %d: artifacts complete, skipping", cfg.name, fold)
        note(cfg.name, "reused")
        return exp.read_meta()["folds"][str(fold)]
    note(cfg.name, "redone" if was_done else "new", "--force" if was_done else None)
    seed_everything(int(cfg.train.seed) + fold, deterministic=bool(cfg.train.deterministic))
    t0 = time.time()
    va_mask = (fd.folds["fold"] == fold).to_numpy()
    tr_rows, va_rows = np.flatnonzero(~va_mask), np.flatnonzero(va_mask)
    labels = fd.train["label"].to_numpy(np.int64)
    y_tr, y_va = labels[tr_rows], labels[va_rows]
    # label cleaning and pseudo-labels change the training rows only; va_rows and y_va stay as given
    tr_rows, y_tr, w_tr, extra = training_rows(cfg, paths, fd, fold, tr_rows, y_tr, label_map)
    if extra:
        log.info("%s fold %d: training rows changed %s", cfg.name, fold, extra)

    if cfg.kind in ("tfidf", "knn"):
        va, te, final, history = classic.fit_fold(cfg, paths, fd, fold, tr_rows, va_rows, y_tr, y_va, w_tr, extra,
                                                  progress)
    elif cfg.model.freeze_backbone:
        if not dist_info.is_main:
            barrier(dist_info)  # rank 0 extracts (and caches) the features once
        views = tta_views(cfg)
        view_feats = {v: frozen_features(cfg, paths, fd, progress and dist_info.is_main, view=v) for v in views}
        feats = view_feats.get("identity")
        if feats is None:
            feats = frozen_features(cfg, paths, fd, progress and dist_info.is_main)
        if dist_info.is_main:
            barrier(dist_info)
        if cfg.model.head == "logreg":
            keep = {}
            va_l, te_l = classic.frozen_logreg(cfg, feats, tr_rows, va_rows, y_tr, len(fd.train), keep=keep,
                                               sample_weight=w_tr, predict_feats=[view_feats[v] for v in views])
            final = ("skops", keep)
            mean_f = np.mean([view_feats[v] for v in views], axis=0).astype(np.float32)
            va = Predictions(np.zeros(len(va_rows)), va_l, mean_f[va_rows], y_va)
            te = Predictions(np.zeros(len(fd.test)), te_l, mean_f[len(fd.train):])
            history = []
        # Standardise with the training rows' statistics (never fold k's): raw pooled embeddings have
        # tiny, uneven scales, and a linear head on them stalls for many epochs.
        mu = feats[tr_rows].mean(0, keepdims=True)
        sd = feats[tr_rows].std(0, keepdims=True) + 1e-6
        if cfg.model.head != "logreg":
            inputs = feature_inputs(feats, view_feats, mu, sd, len(fd.train))
            head_cfg = dict(cfg.model)
            model = create_model("head_mlp", cfg=head_cfg, num_classes=NUM_CLASSES, in_dim=feats.shape[1])
            out = train_and_predict(cfg, exp, fold, model, inputs, tr_rows, va_rows, y_tr, y_va, progress,
                                    signature=run_signature(cfg, fd, paths))
            if out is None:
                return {"rank": dist_info.rank}
            va, te, history = out
            final = ("pt", {"state_dict": model.state_dict(), "mu": mu, "sd": sd, "in_dim": int(feats.shape[1])})
    else:
        if not dist_info.is_main:
            barrier(dist_info)  # rank 0 builds the token/image caches first; the others then read them
        inputs, model = build_inputs_and_model(cfg, paths, fd)
        if dist_info.is_main:
            barrier(dist_info)
        out = train_and_predict(cfg, exp, fold, model, inputs, tr_rows, va_rows, y_tr, y_va, progress,
                                    signature=run_signature(cfg, fd, paths))
        if out is None:
            return {"rank": dist_info.rank}
        va, te, history = out
        final = ("pt", {"state_dict": model.state_dict()})
        if dist_info.is_main and "tokenizer" in (inputs.model_kwargs or {}):
            save_tokenizer(inputs.model_kwargs["tokenizer"], exp.dir / "models" / "tokenizer")

    va.ids = fd.train["id"].to_numpy(np.int64)[va_rows]
    te.ids = fd.test["id"].to_numpy(np.int64)
    # The final model first, then the predictions: a fold whose npz files exist has its model too.
    exp.save_model(fold, final[1], torch_weights=final[0] == "pt")
    va.save(exp.oof_path(fold))
    te.save(exp.test_path(fold))
    s = scores(y_va, va.logits)
    s.update(seconds=round(time.time() - t0, 1), epochs=len(history),
             best_epoch=int(np.argmax([h["val_macro_f1"] for h in history])) if history else None, **extra)
    meta = exp.update_meta(
        name=cfg.name, kind="unimodal", modality="image" if cfg.kind == "image" else "text",
        field=None if cfg.kind == "image" else cfg.data.field, config=recorded_config(paths, cfg), config_hash=config_hash(cfg, paths),
        fold_file=workdir_relative(paths, fd.fold_file), fold_hash=fd.fold_hash, data_key=fd.content_key, folds={fold: s})
    if all(str(k) in meta["folds"] for k in sorted(fd.folds["fold"].unique())):
        oof = exp.load_oof(fd.folds)
        exp.update_meta(oof=scores(oof.labels, oof.logits))
    ckdir = exp.checkpoint_path(fold).parent
    for p in ckdir.glob(f"fold{fold}_*.pt") if ckdir.exists() else []:
        p.unlink()  # the resume checkpoints have served their purpose; the final model is in models/
    log.info("%s fold %d: macro-F1 %.4f weighted-F1 %.4f acc %.4f (%.0fs)", cfg.name, fold, s["macro_f1"],
             s["weighted_f1"], s["accuracy"], s["seconds"])
    return s
