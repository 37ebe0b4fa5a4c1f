"""The frozen-backbone feature cache: a backbone's embeddings of every train+test row, computed once
per backbone, field, data and test-time view, and reused by every fold's head (thesis 5.6.2); and a
fine-tuned experiment's embeddings per fold model (``finetuned_features``).
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np

from rakuten.artifacts import Experiment, atomic_save_npz
from rakuten.errors import RakutenError
from rakuten.paths import Paths
from rakuten.safe_io import load_model
from rakuten.training.engine import resolve_device
from rakuten.training.fold_data import FoldData
from rakuten.training.inputs import build_inputs_and_model
from rakuten.training.predict import eval_engine, predict_rows, quantize_for_cpu

log = logging.getLogger(__name__)


def frozen_feature_key(cfg, fd: FoldData, view: str = "identity") -> str:
    """Cache key of a backbone's embeddings: every config key that changes them (the backbone and its
    weights, the input field and its preprocessing, the image cache size crops come from), the
    experiment's data fingerprint, and the test-time view of the images (``predict.tta``)."""
    m = cfg.model
    return hashlib.sha256(f"{m.name}|{m.backbone}|{m.get('cpu_int8', False)}|{cfg.kind}|{cfg.data.get('field')}|"
                         f"{cfg.data.max_len}|"
                         f"{cfg.data.get('prefix')}|{cfg.data.image_size}|{cfg.data.cache_size}|"
                         f"{m.get('pretrained', True)}|{fd.content_key}"
                         f"{'' if view == 'identity' else '|' + view}".encode()).hexdigest()[:12]


def _cached_features(path, n: int) -> np.ndarray | None:
    """The cached embeddings at ``path`` when they hold ``n`` rows, else None (absent, another
    dataset's, or unreadable: logged, then recomputed by the caller)."""
    if path.exists():
        try:
            with np.load(path) as z:
                if len(z["features"]) == n:
                    return z["features"]
        except Exception as e:
            log.warning("feature cache %s unusable (%s); recomputing", path, e)
    return None


def frozen_features(cfg, paths: Paths, fd: FoldData, progress: bool = True, view: str = "identity") -> np.ndarray:
    """Backbone embeddings of every train+test row, computed once and cached (thesis 5.6.2); ``view``
    is a test-time view of the images (``predict.tta``), cached separately."""

    m = cfg.model
    key = frozen_feature_key(cfg, fd, view)
    path = paths.cache_dir / "features" / f"{cfg.kind}_{key}.npz"
    n = len(fd.train) + len(fd.test)
    cached = _cached_features(path, n)
    if cached is not None:
        return cached
    inputs, model = build_inputs_and_model(cfg, paths, fd, frozen_backbone=True)
    if view != "identity" and not hasattr(inputs.batch_transform, "view"):
        raise RakutenError(f"{cfg.name}: test-time view {view!r} needs an image model")
    device = resolve_device(cfg.train.device)
    if device.type == "cpu" and m.get("cpu_int8", False):
        model = quantize_for_cpu(model)
    # the path a bundle extracts new products' features through (predict_rows, one view)
    _, emb = predict_rows(eval_engine(model, cfg, inputs, device, progress), cfg, inputs, np.arange(n), [view])
    atomic_save_npz(path, features=emb.astype(np.float32))
    return emb


def finetuned_features(name: str, cfg, paths: Paths, fd: FoldData, fold: int, progress: bool = True) -> np.ndarray:
    """Embeddings of every train+test row by fold ``fold``'s model of the fine-tuned experiment
    ``name`` (``cfg``: the config it was trained with, its meta.json's), cached per fold model.

    What a member reading a fine-tuned encoder's embeddings (``tfidf.dense``, ``knn.features``) uses
    for its fold ``fold``: that fold's encoder never saw fold ``fold``'s labels, so neither does the
    member. Its training rows' embeddings are in-sample for the encoder (it trained on them), which
    makes them cleaner than fold ``fold``'s: a cost in calibration, not a leak."""
    exp = Experiment(paths.oof_dir, name)
    model_file = exp.model_path(fold, "pt")
    if not model_file.exists() or not exp.test_path(fold).exists():
        raise RakutenError(f"feature source {name} fold {fold}: not trained yet (list it before the members "
                           "that read its embeddings in the preset)")
    stamp = hashlib.sha256(exp.test_path(fold).read_bytes()).hexdigest()[:12]   # changes when the fold is retrained
    path = paths.cache_dir / "features" / f"finetuned_{name}_fold{fold}_{stamp}_{fd.content_key}.npz"
    n = len(fd.train) + len(fd.test)
    cached = _cached_features(path, n)
    if cached is not None:
        return cached
    inputs, model = build_inputs_and_model(cfg, paths, fd)
    model.load_state_dict(load_model(model_file)["state_dict"])   # the fold's saved weights, weights only
    device = resolve_device(cfg.train.device)
    # the path a bundle computes this member's embeddings through (predict_rows, the config's views)
    _, emb = predict_rows(eval_engine(model.eval(), cfg, inputs, device, progress), cfg, inputs, np.arange(n))
    atomic_save_npz(path, features=emb.astype(np.float32))
    return emb
