"""The epoch loop of one fold: train through ``Engine``, score the inner split, checkpoint, early-stop;
then predict fold k and the test rows with the best weights (averaged over test-time views).
"""
from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import pandas as pd
import torch

from rakuten.artifacts import ArtifactError, Experiment, Predictions, atomic_write_csv
from rakuten.folds import inner_split
from rakuten.labels import NUM_CLASSES
from rakuten.metrics import scores
from rakuten.training.distributed import barrier, device_for, init_distributed
from rakuten.training.engine import Engine, make_optimizer, make_scheduler, resolve_device
from rakuten.training.fold_state import atomic_torch_save, rng_state, set_rng_state
from rakuten.training.inputs import Inputs, RowSubset
from rakuten.training.loaders import make_loader
from rakuten.training.losses import make_loss
from rakuten.training.predict import eval_engine, predict_rows

log = logging.getLogger(__name__)


def resume(engine: Engine, ckpt, signature) -> tuple[int, float, int, list]:
    """(first epoch to run, best macro-F1, epochs without improvement, history) from checkpoint
    ``ckpt``, its engine state (model, optimiser, scheduler, RNG) loaded into ``engine``; a checkpoint
    that cannot be used (unreadable, another config, a key missing, a state that does not fit) gives
    (0, -1.0, 0, []) with ``engine`` as it was: training then starts from scratch, not from whatever
    part of the checkpoint was loaded before the failure."""
    before = copy.deepcopy(engine.state_dict())
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if signature is not None and state.get("signature") != signature:
            # a run killed before its first meta.json, then the config or data was edited
            raise ArtifactError("made with another config, fold file or data")
        counters = state["epoch"] + 1, state["best"], state["bad"], state["history"]
        engine.load_state_dict(state["engine"])
        set_rng_state(state["rng"])
        return counters
    except Exception as e:
        log.warning("checkpoint %s unusable (%s); training from scratch", ckpt, e)
        engine.load_state_dict(before)
        return 0, -1.0, 0, []


def train_and_predict(cfg, exp: Experiment, fold: int, model, inputs: Inputs, tr_rows, va_rows, y_tr, y_va,
                      progress: bool = True, signature: dict | None = None
                      ) -> tuple[Predictions, Predictions, list[dict]]:
    """The epoch loop: train, score fold k, checkpoint, early-stop; then predict with the best weights."""

    t = cfg.train
    dist_info = init_distributed()
    device = device_for(dist_info, resolve_device(t.device))
    main = dist_info.is_main
    seed = int(t.seed) + fold
    lengths = inputs.lengths
    pred_rows, y_pred = va_rows, y_va   # fold k: predicted once, with the chosen weights
    if t.early_stop == "inner":
        # Early stopping watches an inner split of the training folds, never fold k: choosing the
        # epoch on fold k would make its OOF rows (what the second level learns from) optimistic.
        # pseudo-labelled test rows (index >= n_train) are never monitored: only given labels choose the epoch
        real = tr_rows < inputs.n_train
        pos = np.flatnonzero(real)
        fit_pos, mon_pos = inner_split(pos, y_tr[real], float(t.inner_frac), seed)
        fit_pos = np.concatenate([fit_pos, np.flatnonzero(~real)])
        tr_rows, y_tr, va_rows, y_va = tr_rows[fit_pos], y_tr[fit_pos], tr_rows[mon_pos], y_tr[mon_pos]
    tr_ds = RowSubset(inputs.dataset, tr_rows, y_tr)
    va_ds = RowSubset(inputs.dataset, va_rows, y_va)
    te_rows = np.arange(inputs.n_train, len(inputs.dataset))
    sub = (lambda rows: None if lengths is None else lengths[rows])
    train_loader, train_sampler = make_loader(tr_ds, cfg, True, inputs.collate, sub(tr_rows), y_tr, seed, dist_info)
    val_loader, _ = make_loader(va_ds, cfg, False, inputs.collate, sub(va_rows))

    model = model.to(device)
    net = model
    if dist_info.enabled:
        # DDP averages gradients across ranks; it broadcasts rank 0's initial weights at construction
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=bool(t.get("ddp_find_unused_parameters", False)))
    features = None
    if cfg.loss.class_weights == "difficulty" and float(cfg.loss.class_weight_power):
        # the starting (pretrained) model's embeddings of the rows it will fit: which classes they
        # separate badly decides the weights (losses.difficulty_weights); training rows only
        _, features = predict_rows(eval_engine(model, cfg, inputs, device), cfg, inputs, tr_rows, ["identity"])
    criterion = make_loss(cfg.loss, y_tr, NUM_CLASSES, features).to(device)
    if criterion.weight is not None:
        w = criterion.weight[torch.as_tensor(np.unique(y_tr))]
        log.info("%s fold %d: %s class weights %.2f-%.2f", exp.name, fold, cfg.loss.class_weights,
                 float(w.min()), float(w.max()))
    optimizer = make_optimizer(model, name="adamw", lr=float(t.lr), weight_decay=float(t.weight_decay),
                               head_lr=None if t.head_lr is None else float(t.head_lr))
    steps = math.ceil(len(train_loader) / int(t.grad_accum)) * int(t.epochs)
    scheduler = make_scheduler(optimizer, steps, warmup_ratio=float(t.warmup_ratio), kind=t.scheduler)
    engine = Engine(net, criterion, optimizer, scheduler, device=device, precision=t.precision,
                    grad_accum=int(t.grad_accum), clip_grad=t.clip_grad, batch_transform=inputs.batch_transform,
                    compile=t.compile, compile_dynamic=t.get("compile_dynamic"),
                    channels_last=bool(t.channels_last), progress=progress and main)

    ckpt, best_path = exp.checkpoint_path(fold), exp.checkpoint_path(fold).with_name(f"fold{fold}_best.pt")
    start, best, bad, history = 0, -1.0, 0, []
    if t.checkpoint and ckpt.exists():
        start, best, bad, history = resume(engine, ckpt, signature)
        if start:
            log.info("%s fold %d: resumed after epoch %d (best macro-F1 %.4f)", exp.name, fold, start, best)
    for epoch in range(start, int(t.epochs)):
        if bad >= int(t.patience):
            break
        if train_sampler is not None and hasattr(train_sampler, "set_epoch"):
            train_sampler.set_epoch(epoch)
        t0 = time.time()
        tr = engine.train_epoch(train_loader, epoch)
        va_logits, _ = engine.predict(val_loader)
        s = scores(y_va, va_logits)
        improved = s["macro_f1"] > best
        if improved:
            best, bad = s["macro_f1"], 0
            if main:
                atomic_torch_save(model.state_dict(), best_path)
        else:
            bad += 1
        row = {"epoch": epoch, "train_loss": tr.get("loss"), **{f"val_{k}": v for k, v in s.items()},
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2), "best": improved}
        history.append(row)
        log.info("%s fold %d epoch %d: loss %.4f val macro-F1 %.4f%s", exp.name, fold, epoch, row["train_loss"],
                 s["macro_f1"], " *" if improved else "")
        if main:
            atomic_write_csv(exp.summary_path(fold), pd.DataFrame(history), index=False)
            if t.checkpoint:
                atomic_torch_save({"engine": engine.state_dict(), "rng": rng_state(), "epoch": epoch,
                                    "best": best, "bad": bad, "history": history, "signature": signature}, ckpt)
        barrier(dist_info)  # ranks stay in step with the checkpoint on disk
    if not main:
        return None  # rank 0 predicts and writes; the others' work is done
    if best_path.exists() and history:
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    # the one prediction path of the torch members (a bundle predicts new products through it too)
    va_logits, va_emb = predict_rows(engine, cfg, inputs, pred_rows)
    te_logits, te_emb = predict_rows(engine, cfg, inputs, te_rows)
    return (Predictions(np.zeros(len(pred_rows)), va_logits, va_emb, y_pred),
            Predictions(np.zeros(len(te_rows)), te_logits, te_emb), history)
