"""Train one fold of one unimodal experiment and write its artifacts.

Fold k's model trains on the other folds, early-stops on fold k's macro-F1, and writes
``oof/<exp>/fold<k>.npz`` (fold k's rows) and ``test_fold<k>.npz``; ``meta.json`` records the config,
fold file + hash and scores. A per-epoch checkpoint (model, optimizer, scheduler, RNG states, best
score) lets a killed run resume where it stopped and end with the same OOF as an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import random
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from rakuten.artifacts import ArtifactError, Experiment, Predictions, atomic_path, atomic_write_csv
from rakuten.data.prepared import data_fingerprint, load_dataset, resolve_data_dir
from rakuten.errors import RakutenError
from rakuten.folds import check_folds_match
from rakuten.lineage import config_hash, fold_file, note, recorded_config, redo_reason, workdir_relative
from rakuten.labels import NUM_CLASSES
from rakuten.paths import Paths
from rakuten.reporting.metrics import scores

log = logging.getLogger(__name__)


@dataclass
class FoldData:
    """Rows of the training data in fold-file order, plus the test rows."""

    train: pd.DataFrame   # aligned with the fold file
    test: pd.DataFrame
    folds: pd.DataFrame
    fold_file: Path
    fold_hash: str
    data_key: str             # raw files' fingerprint (the token cache's key)
    content_key: str = ""     # what this experiment learns from (``experiment_data_key``)


def prepare_fold_data(cfg, paths: Paths, ds=None) -> FoldData:
    ds = ds or load_dataset(paths)
    fpath, folds, fhash = fold_file(paths, cfg)
    check_folds_match(folds, ds.train, fpath)
    train = ds.train.set_index("id").loc[folds["id"].to_numpy()].reset_index()
    test = ds.test.reset_index(drop=True)
    return FoldData(train, test, folds, fpath, fhash, data_fingerprint(resolve_data_dir(paths)),
                    experiment_data_key(cfg, train, test))


def experiment_data_key(cfg, train: pd.DataFrame, test: pd.DataFrame) -> str:
    """The data fingerprint an experiment's artifacts are keyed on: ids, labels, and only the inputs
    it reads (its text field, or the image files), so a new image does not retrain a text model."""
    from rakuten.data.prepared import content_fingerprint
    if cfg.kind == "image":
        return content_fingerprint(train, test, images=True)
    uses_other = (cfg.kind == "knn" and cfg.knn.features != "tfidf") or \
        (cfg.kind == "tfidf" and (cfg.tfidf.get("dense") or {}).get("experiment"))
    if uses_other:   # reads another experiment's embeddings: every input it could come from
        return content_fingerprint(train, test, fields=("title", "description", "text"), images=True)
    return content_fingerprint(train, test, fields=(cfg.data.field,))


def run_signature(cfg, fd: FoldData, paths: Paths | None = None) -> dict:
    """What a unimodal fold's artifacts and checkpoints are valid for."""
    return {"config_hash": config_hash(cfg, paths), "fold_hash": fd.fold_hash, "data_key": fd.content_key}


def check_experiment_folds(exp: Experiment, fd: FoldData, cfg, force: bool = False,
                           paths: Paths | None = None) -> Path | None:
    """All folds of an experiment come from one fold file, one config and one data fingerprint:
    refuse to mix, or (``force``) start afresh.

    The old experiment is moved aside, not deleted; the caller deletes it once the new fold is
    written (``discard_replaced``) or puts it back when the run fails (``restore_replaced``), so a
    failed ``--force`` run never costs the finished folds. Returns the moved-aside folder, if any.
    """
    if not exp.meta_path.exists():
        return None
    reason = stale_reason(exp, fd, cfg, paths)
    if not reason:
        return None
    if not force:
        raise ArtifactError(f"{exp.dir}: {reason}; rerun with --force to discard it and retrain, "
                            "or give the changed config another name")
    aside = exp.dir.with_name(f".{exp.dir.name}.replaced")
    if aside.exists():
        shutil.rmtree(aside)
    exp.dir.rename(aside)
    note(exp.name, "redone", f"{reason} (the old artifacts are deleted once the new fold is written)")
    return aside


def stale_reason(exp: Experiment, fd: FoldData, cfg, paths: Paths | None = None) -> str | None:
    """Why an existing unimodal experiment is not the one ``cfg`` on this data and fold file would
    make (one line), or None when it is current or absent."""
    if not exp.meta_path.exists():
        return None
    return redo_reason(exp.read_meta(), cfg, fold_hash=fd.fold_hash, config_hash_now=config_hash(cfg, paths),
                       data_key=fd.content_key)


def restore_replaced(exp: Experiment, aside: Path | None) -> None:
    if aside is not None and aside.exists():
        if exp.dir.exists():
            shutil.rmtree(exp.dir)
        aside.rename(exp.dir)


def discard_replaced(aside: Path | None) -> None:
    if aside is not None and aside.exists():
        shutil.rmtree(aside)


@contextmanager
def fold_lock(paths: Paths, name: str, fold: int):
    """An exclusive lock per (workdir, experiment, fold): two processes training the same fold
    would both write it, and the later one's OOF would silently replace the other's. The second one
    fails at once with one line instead. The lock files stay (removing one would let two processes
    lock different inodes)."""
    try:
        import fcntl
    except ImportError:   # not POSIX: no lock
        yield
        return
    path = paths.oof_dir / ".locks" / f"{name}.fold{fold}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RakutenError(f"{name} fold {fold} is being trained by {holder} in {paths.workdir} "
                               f"(lock {path}); wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------- inputs
class RowSubset(Dataset):
    """Rows ``rows`` of a base dataset, relabelled, with ``index`` local to the subset."""

    def __init__(self, base: Dataset, rows: np.ndarray, labels: np.ndarray | None):
        self.base, self.rows, self.labels = base, np.asarray(rows), labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[int(self.rows[i])])
        item["index"] = i
        item["labels"] = int(self.labels[i]) if self.labels is not None else -1
        return item


class FeatureDataset(Dataset):
    def __init__(self, feats: np.ndarray):
        self.feats = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))

    def __len__(self):
        return len(self.feats)

    def __getitem__(self, i):
        return {"features": self.feats[i], "index": i, "labels": -1}


@dataclass
class Inputs:
    """What a torch model reads: one dataset over train+test rows and how to batch it."""

    dataset: Dataset          # rows 0..n_train-1 are train (fold-file order), then the test rows
    n_train: int
    collate: object
    lengths: np.ndarray | None = None   # token lengths, for length-grouped batches
    batch_transform: object = None
    model_kwargs: dict | None = None
    view_datasets: dict | None = None   # test-time view -> dataset of the same rows (frozen features)


def tta_predict(engine, loader_for_view, views) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and embeddings) averaged over the test-time ``views``; ``loader_for_view(v)`` yields
    the same rows, in the same order, as seen through view ``v``."""
    outs = [engine.predict(loader_for_view(v)) for v in views]
    logits = np.mean([o[0] for o in outs], axis=0).astype(np.float32)
    emb = None if any(o[1] is None for o in outs) else np.mean([o[1] for o in outs], axis=0).astype(np.float32)
    return logits, emb


def _tta_views(cfg) -> list[str]:
    return list((cfg.get("predict") or {}).get("tta") or ["identity"])


def field_texts(df: pd.DataFrame, cfg) -> list[str]:
    prefix = cfg.data.get("prefix", "") or ""
    return [prefix + t for t in df[cfg.data.field].tolist()]


def empty_field(cfg, train: pd.DataFrame) -> str | None:
    """Why the experiment has nothing to learn from on this data (its text field is empty on every
    training row, or it is an image model and no training image exists), else None."""
    if cfg.kind == "knn" and cfg.knn.features != "tfidf":
        from rakuten.experiment import load_experiment
        return empty_field(load_experiment(cfg.knn.features), train)   # the feature source's input
    if cfg.kind == "image":
        if "has_image" in train and not bool(train["has_image"].any()):
            return "no training row has an image"
        return None
    col = train[cfg.data.field] if cfg.data.field in train else None
    if col is None or not bool(col.fillna("").astype(str).str.strip().str.len().gt(0).any()):
        return f"data.field {cfg.data.field!r} is empty on every training row"
    return None


def text_inputs(cfg, paths: Paths, fd: FoldData) -> Inputs:
    from rakuten.data.text_dataset import TokenDataset, cached_tokens
    from rakuten.models.backbones import load_tokenizer
    from rakuten.training.samplers import pad_collate

    texts = field_texts(fd.train, cfg) + field_texts(fd.test, cfg)
    # The tiny tokenizer is fitted on the training text of all folds: label-free, and one shared
    # vocabulary keeps the token cache shared across folds.
    tok = load_tokenizer(cfg.model.backbone, train_texts=texts[: len(fd.train)],
                         cache_dir=paths.cache_dir / "tokenizers", vocab_size=int(cfg.model.tokenizer_vocab))
    tokens = cached_tokens(tok, texts, int(cfg.data.max_len), paths.cache_dir,
                           tag=f"{cfg.data.field}_{fd.data_key}")
    # pad_to_multiple_of: 8 suits tensor cores; 32 or 64 caps the distinct shapes (CUDA graphs, compile)
    collate = pad_collate(tok.pad_token_id, pad_to_multiple_of=cfg.data.pad_to_multiple_of or None)
    return Inputs(TokenDataset(tokens), len(fd.train), collate, tokens.lengths,
                  model_kwargs={"tokenizer": tok})


def image_inputs(cfg, paths: Paths, fd: FoldData, mean, std) -> Inputs:
    from rakuten.data.image_cache import (CachedImageDataset, GpuImageAugment, build_image_cache,
                                          load_image_cache, make_image_batch_transform)

    size = int(cfg.data.cache_size)
    files = [p or None for p in fd.train["image_path"].tolist() + fd.test["image_path"].tolist()]
    # keyed by the image files' paths, sizes and mtimes: an image repaired in place is re-read
    from rakuten.data.prepared import content_fingerprint
    cache_file = paths.cache_dir / "images" / f"{content_fingerprint(fd.train, fd.test, images=True)}_{size}.npy"
    try:
        arr = load_image_cache(cache_file)
        if len(arr) != len(files):
            raise ArtifactError("row count differs")
    except Exception as e:  # missing, truncated or stale cache: rebuild it
        if cache_file.exists():
            log.warning("image cache %s unusable (%s); rebuilding", cache_file, e)
        report = build_image_cache(files, size, cache_file, workers=int(cfg.train.num_workers))
        log.info("image cache: %d images, %d missing, %d unreadable (blank inputs)",
                 report["n"], report["missing"], report["unreadable"])
        arr = load_image_cache(cache_file)
    aug = cfg.augment
    augment = GpuImageAugment(int(cfg.data.image_size), mean, std, train_crop_scale=tuple(aug.crop_scale),
                              hflip=bool(aug.hflip), max_rotate_deg=float(aug.max_rotate_deg),
                              channels_last=bool(cfg.train.channels_last))
    return Inputs(CachedImageDataset(arr), len(fd.train), None,
                  batch_transform=make_image_batch_transform(augment))


# ------------------------------------------------------------------------------------------- training
def _loader(ds: Dataset, cfg, train: bool, collate, lengths=None, labels=None, seed: int = 0, dist_info=None):
    """(DataLoader, its batch sampler). Every order is a function of (seed, epoch) via ``set_epoch``,
    so a resumed run replays it; eval loaders sort by length when lengths exist and the engine
    restores the original order through each batch's ``index``. Under DDP, training batches are
    sharded across ranks."""
    from torch.utils.data import BatchSampler, SequentialSampler

    from rakuten.training.distributed import EpochShuffleSampler, ShardedBatchSampler
    from rakuten.training.samplers import ClassBalancedSampler, LengthGroupedBatchSampler

    bs = int(cfg.train.batch_size if train else cfg.train.eval_batch_size)
    workers = int(cfg.train.num_workers)
    kw = dict(num_workers=workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
              persistent_workers=workers > 0)
    kind = cfg.train.sampler if train else "length"
    if train and kind == "balanced":
        # rare classes drawn more often (probability ~ count^-power); pairs with an unweighted loss
        bsampler = _EpochBatchSampler(ClassBalancedSampler(labels, power=float(cfg.train.balanced_power), seed=seed), bs)
    elif lengths is not None and kind == "length":
        bsampler = LengthGroupedBatchSampler(lengths, bs, shuffle=train, seed=seed)
    elif train:
        bsampler = _EpochBatchSampler(EpochShuffleSampler(len(ds), seed), bs)
    else:
        bsampler = BatchSampler(SequentialSampler(ds), bs, drop_last=False)
    if train and dist_info is not None and dist_info.enabled:
        bsampler = ShardedBatchSampler(bsampler, dist_info)
    return DataLoader(ds, batch_sampler=bsampler, **kw), bsampler


class _EpochBatchSampler(torch.utils.data.BatchSampler):
    """BatchSampler that forwards ``set_epoch`` to its sampler."""

    def __init__(self, sampler, batch_size: int):
        super().__init__(sampler, batch_size, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def train_and_predict(cfg, exp: Experiment, fold: int, model, inputs: Inputs, tr_rows, va_rows, y_tr, y_va,
                      progress: bool = True, signature: dict | None = None
                      ) -> tuple[Predictions, Predictions, list[dict]]:
    """The epoch loop: train, score fold k, checkpoint, early-stop; then predict with the best weights."""
    from rakuten.training.engine import Engine, make_optimizer, make_scheduler, resolve_device
    from rakuten.training.losses import make_loss

    from rakuten.training.distributed import barrier, device_for, init_distributed

    t = cfg.train
    dist_info = init_distributed()
    device = device_for(dist_info, resolve_device(t.device))
    main = dist_info.is_main
    seed = int(t.seed) + fold
    lengths = inputs.lengths
    pred_rows, y_pred = va_rows, y_va   # fold k: predicted once, with the chosen weights
    if t.get("early_stop", "inner") == "inner":
        # Early stopping watches an inner split of the training folds, never fold k: choosing the
        # epoch on fold k would make its OOF rows (what the second level learns from) optimistic.
        from rakuten.folds import inner_split
        # pseudo-labelled test rows (index >= n_train) are never monitored: only given labels choose the epoch
        real = tr_rows < inputs.n_train
        pos = np.flatnonzero(real)
        fit_pos, mon_pos = inner_split(pos, y_tr[real], float(t.get("inner_frac", 0.1)), seed)
        fit_pos = np.concatenate([fit_pos, np.flatnonzero(~real)])
        tr_rows, y_tr, va_rows, y_va = tr_rows[fit_pos], y_tr[fit_pos], tr_rows[mon_pos], y_tr[mon_pos]
    tr_ds = RowSubset(inputs.dataset, tr_rows, y_tr)
    va_ds = RowSubset(inputs.dataset, va_rows, y_va)
    pred_ds = RowSubset(inputs.dataset, pred_rows, y_pred)
    te_rows = np.arange(inputs.n_train, len(inputs.dataset))
    te_ds = RowSubset(inputs.dataset, te_rows, None)
    sub = (lambda rows: None if lengths is None else lengths[rows])
    train_loader, train_sampler = _loader(tr_ds, cfg, True, inputs.collate, sub(tr_rows), y_tr, seed, dist_info)
    val_loader, _ = _loader(va_ds, cfg, False, inputs.collate, sub(va_rows))
    pred_loader = val_loader if pred_rows is va_rows else _loader(pred_ds, cfg, False, inputs.collate, sub(pred_rows))[0]
    test_loader, _ = _loader(te_ds, cfg, False, inputs.collate, sub(te_rows))

    model = model.to(device)
    net = model
    if dist_info.enabled:
        # DDP averages gradients across ranks; it broadcasts rank 0's initial weights at construction
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=bool(t.get("ddp_find_unused_parameters", False)))
    criterion = make_loss(cfg.loss, y_tr, NUM_CLASSES).to(device)
    optimizer = make_optimizer(model, name="adamw", lr=float(t.lr), weight_decay=float(t.weight_decay))
    steps = math.ceil(len(train_loader) / int(t.grad_accum)) * int(t.epochs)
    scheduler = make_scheduler(optimizer, steps, warmup_ratio=float(t.warmup_ratio), kind=t.scheduler)
    engine = Engine(net, criterion, optimizer, scheduler, device=device, precision=t.precision,
                    grad_accum=int(t.grad_accum), clip_grad=t.clip_grad, batch_transform=inputs.batch_transform,
                    compile=t.compile, compile_dynamic=t.get("compile_dynamic"),
                    channels_last=bool(t.channels_last), progress=progress and main)

    ckpt, best_path = exp.checkpoint_path(fold), exp.checkpoint_path(fold).with_name(f"fold{fold}_best.pt")
    start, best, bad, history = 0, -1.0, 0, []
    if t.checkpoint and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            if signature is not None and state.get("signature") != signature:
                # a run killed before its first meta.json, then the config or data was edited
                raise ArtifactError("made with another config, fold file or data")
            engine.load_state_dict(state["engine"])
            _set_rng_state(state["rng"])
            start, best, bad, history = state["epoch"] + 1, state["best"], state["bad"], state["history"]
            log.info("%s fold %d: resumed after epoch %d (best macro-F1 %.4f)", exp.name, fold, start, best)
        except Exception as e:
            log.warning("checkpoint %s unusable (%s); training from scratch", ckpt, e)
            start, best, bad, history = 0, -1.0, 0, []
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
                _atomic_torch_save(model.state_dict(), best_path)
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
                _atomic_torch_save({"engine": engine.state_dict(), "rng": _rng_state(), "epoch": epoch,
                                    "best": best, "bad": bad, "history": history, "signature": signature}, ckpt)
        barrier(dist_info)  # ranks stay in step with the checkpoint on disk
    if not main:
        return None  # rank 0 predicts and writes; the others' work is done
    if best_path.exists() and history:
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    views = _tta_views(cfg)

    def view_loader(default, rows, labels):
        def make(view):
            if inputs.view_datasets is not None:   # frozen features: one dataset per view
                return _loader(RowSubset(inputs.view_datasets[view], rows, labels), cfg, False, inputs.collate,
                               sub(rows))[0]
            if view != "identity" and not hasattr(inputs.batch_transform, "view"):
                raise RakutenError(f"{cfg.name}: predict.tta view {view!r} needs an image model")
            if inputs.batch_transform is not None and hasattr(inputs.batch_transform, "view"):
                inputs.batch_transform.view = view
            return default
        return make
    try:
        va_logits, va_emb = tta_predict(engine, view_loader(pred_loader, pred_rows, y_pred), views)
        te_logits, te_emb = tta_predict(engine, view_loader(test_loader, te_rows, None), views)
    finally:
        if inputs.batch_transform is not None and hasattr(inputs.batch_transform, "view"):
            inputs.batch_transform.view = "identity"
    return (Predictions(np.zeros(len(pred_rows)), va_logits, va_emb, y_pred),
            Predictions(np.zeros(len(te_rows)), te_logits, te_emb), history)


# -------------------------------------------------------------------------------------- frozen features
def frozen_feature_key(cfg, fd: FoldData, view: str = "identity") -> str:
    """Cache key of a backbone's embeddings: every config key that changes them (the backbone and its
    weights, the input field and its preprocessing, the image cache size crops come from), the
    experiment's data fingerprint, and the test-time view of the images (``predict.tta``)."""
    import hashlib
    m = cfg.model
    return hashlib.sha256(f"{m.name}|{m.backbone}|{m.get('cpu_int8', False)}|{cfg.kind}|{cfg.data.get('field')}|"
                         f"{cfg.data.max_len}|"
                         f"{cfg.data.get('prefix')}|{cfg.data.image_size}|{cfg.data.cache_size}|"
                         f"{m.get('pretrained', True)}|{fd.content_key}"
                         f"{'' if view == 'identity' else '|' + view}".encode()).hexdigest()[:12]


def frozen_features(cfg, paths: Paths, fd: FoldData, progress: bool = True, view: str = "identity") -> np.ndarray:
    """Backbone embeddings of every train+test row, computed once and cached (thesis 5.6.2); ``view``
    is a test-time view of the images (``predict.tta``), cached separately."""
    from rakuten.artifacts import atomic_save_npz
    from rakuten.training.engine import Engine, resolve_device

    m = cfg.model
    key = frozen_feature_key(cfg, fd, view)
    path = paths.cache_dir / "features" / f"{cfg.kind}_{key}.npz"
    n = len(fd.train) + len(fd.test)
    if path.exists():
        try:
            with np.load(path) as z:
                if len(z["features"]) == n:
                    return z["features"]
        except Exception as e:
            log.warning("feature cache %s unusable (%s); recomputing", path, e)
    inputs, model = build_inputs_and_model(cfg, paths, fd, frozen_backbone=True)
    if view != "identity":
        if not hasattr(inputs.batch_transform, "view"):
            raise RakutenError(f"{cfg.name}: test-time view {view!r} needs an image model")
        inputs.batch_transform.view = view
    device = resolve_device(cfg.train.device)
    if device.type == "cpu" and m.get("cpu_int8", False):
        # Frozen extraction only: int8 dynamic quantisation of the Linear layers roughly halves CPU
        # time for BERT-sized encoders; the e5 weights are 4-bit already, so little is lost.
        # torch 2.14 warns that the quantized tensor API is deprecated; it is what runs here (measured
        # 2.7x faster), and the warning would repeat once per extraction.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
            warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
            model = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)
    engine = Engine(model.to(device), None, device=device, precision=cfg.train.precision,
                    batch_transform=inputs.batch_transform, channels_last=bool(cfg.train.channels_last),
                    progress=progress)
    rows = np.arange(n)
    loader, _ = _loader(RowSubset(inputs.dataset, rows, None), cfg, False, inputs.collate,
                        None if inputs.lengths is None else inputs.lengths)
    _, emb = engine.predict(loader)
    atomic_save_npz(path, features=emb.astype(np.float32))
    return emb


def build_inputs_and_model(cfg, paths: Paths, fd: FoldData, frozen_backbone: bool = False):
    from rakuten.models.registry import create_model

    if cfg.kind == "text":
        inputs = text_inputs(cfg, paths, fd)
        model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, **inputs.model_kwargs)
    else:
        from rakuten.models.image import image_norm, load_image_backbone
        backbone = load_image_backbone(cfg.model.backbone, pretrained=cfg.model.pretrained,
                                       drop_path_rate=cfg.model.get("drop_path_rate", 0.0))
        mean, std = image_norm(backbone)
        inputs = image_inputs(cfg, paths, fd, mean, std)
        model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, backbone=backbone)
    return inputs, model


def save_tokenizer(tok, out: Path) -> None:
    """The tokenizer a text experiment's fold models read (one per experiment: all folds share it),
    saved once beside the models so that a bundle needs no training text to rebuild it."""
    if (out / "tokenizer_config.json").exists():
        return
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


# ------------------------------------------------------------------------------------------ the stage
def run_fold(cfg, paths: Paths, fold: int, ds=None, progress: bool = True, force: bool = False,
             replace_stale: bool = False) -> dict:
    """Train fold ``fold`` of experiment ``cfg`` (skipped when its artifacts are complete).

    ``force``: retrain even a current fold, discarding a stale experiment (``run_fold.py --force``);
    ``replace_stale``: discard a stale experiment (config, data or fold file changed) but keep the
    folds already done on the current inputs (``run_all.py --force``, resumable)."""
    from rakuten.training.distributed import barrier, init_distributed
    from rakuten.training.engine import seed_everything

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
    from rakuten.training.distributed import barrier
    from rakuten.training.engine import seed_everything

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
    from rakuten.training.cleaning import training_rows
    tr_rows, y_tr, w_tr, extra = training_rows(cfg, paths, fd, fold, tr_rows, y_tr, label_map)
    if extra:
        log.info("%s fold %d: training rows changed %s", cfg.name, fold, extra)

    if cfg.kind in ("tfidf", "knn"):
        from rakuten.training import classic
        test_texts = np.asarray(field_texts(fd.test, cfg), dtype=object)
        # rows index train+test (pseudo-labelled test rows are n_train + j), like the dense features
        texts = np.concatenate([np.asarray(field_texts(fd.train, cfg), dtype=object), test_texts])
        keep: dict = {}
        va_l, te_l, fextra = classic.fit_predict(cfg, paths, fd, tr_rows, va_rows, y_tr, texts, test_texts,
                                                 progress, keep=keep, sample_weight=w_tr)
        extra.update(fextra)
        final = ("joblib", keep)
        va = Predictions(np.zeros(len(va_rows)), va_l, None, y_va)
        te = Predictions(np.zeros(len(fd.test)), te_l, None)
        history = []
        if "C" in extra:
            log.info("%s fold %d: C=%g chosen by the inner search %s", exp.name, fold, extra["C"],
                     {r["C"]: round(r["inner_macro_f1"], 4) for r in extra["inner_search"]})
    elif cfg.model.freeze_backbone:
        from rakuten.models.registry import create_model
        if not dist_info.is_main:
            barrier(dist_info)  # rank 0 extracts (and caches) the features once
        views = _tta_views(cfg)
        view_feats = {v: frozen_features(cfg, paths, fd, progress and dist_info.is_main, view=v) for v in views}
        feats = view_feats.get("identity")
        if feats is None:
            feats = frozen_features(cfg, paths, fd, progress and dist_info.is_main)
        if dist_info.is_main:
            barrier(dist_info)
        if cfg.model.get("head", "mlp") == "logreg":
            from rakuten.training.classic import frozen_logreg
            keep = {}
            va_l, te_l = frozen_logreg(cfg, feats, tr_rows, va_rows, y_tr, len(fd.train), keep=keep,
                                       sample_weight=w_tr, predict_feats=[view_feats[v] for v in views])
            final = ("joblib", keep)
            mean_f = np.mean([view_feats[v] for v in views], axis=0).astype(np.float32)
            va = Predictions(np.zeros(len(va_rows)), va_l, mean_f[va_rows], y_va)
            te = Predictions(np.zeros(len(fd.test)), te_l, mean_f[len(fd.train):])
            history = []
        # Standardise with the training rows' statistics (never fold k's): raw pooled embeddings have
        # tiny, uneven scales, and a linear head on them stalls for many epochs.
        mu = feats[tr_rows].mean(0, keepdims=True)
        sd = feats[tr_rows].std(0, keepdims=True) + 1e-6
        if cfg.model.get("head", "mlp") != "logreg":
            inputs = Inputs(FeatureDataset((feats - mu) / sd), len(fd.train), None,
                            view_datasets={v: FeatureDataset((f - mu) / sd) for v, f in view_feats.items()})
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
