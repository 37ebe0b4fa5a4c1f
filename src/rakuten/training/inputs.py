"""What a torch model of a fold reads: datasets over train+test rows (tokens, cached images, frozen
features), how to batch them, and the model built for them.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rakuten.artifacts import ArtifactError
from rakuten.data.image_cache import (CachedImageDataset, GpuImageAugment, build_image_cache,
                                      load_image_cache, make_image_batch_transform)
from rakuten.data.prepared import content_fingerprint
from rakuten.data.text_dataset import TokenDataset, cached_tokens
from rakuten.labels import NUM_CLASSES
from rakuten.models.backbones import load_tokenizer
from rakuten.models.image import image_norm, load_image_backbone
from rakuten.models.registry import create_model
from rakuten.paths import Paths
from rakuten.training.fold_data import FoldData, field_texts
from rakuten.training.samplers import text_collate

log = logging.getLogger(__name__)


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
    """Frozen features as a dataset: ``{"features": [D], "index", "labels": -1}`` per row."""
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


def text_inputs(cfg, paths: Paths, fd: FoldData) -> Inputs:
    """Inputs of a text model over a fold's train+test rows: the tokenizer (the tiny one fitted on the training
    text), cached tokens, per-batch padding."""
    texts = field_texts(fd.train, cfg) + field_texts(fd.test, cfg)
    # The tiny tokenizer is fitted on the training text of all folds: label-free, and one shared
    # vocabulary keeps the token cache shared across folds.
    tok = load_tokenizer(cfg.model.backbone, train_texts=texts[: len(fd.train)],
                         cache_dir=paths.cache_dir / "tokenizers", vocab_size=int(cfg.model.tokenizer_vocab))
    tokens = cached_tokens(tok, texts, int(cfg.data.max_len), paths.cache_dir,
                           tag=f"{cfg.data.field}_{fd.data_key}")
    return token_inputs(cfg, tok, tokens, len(fd.train))


def token_inputs(cfg, tok, tokens, n_train: int) -> Inputs:
    """Inputs over tokenised rows (a fold's train+test rows, or a bundle's new products with
    ``n_train=0``): length-sorted batches padded per batch, as every text model reads them."""
    # pad_to_multiple_of: 8 suits tensor cores; 32 or 64 caps the distinct shapes (CUDA graphs, compile);
    # data.packing: several texts per row instead (no padding between them)
    collate = text_collate(cfg.data, tok.pad_token_id)
    return Inputs(TokenDataset(tokens), n_train, collate, tokens.lengths, model_kwargs={"tokenizer": tok})


def image_inputs(cfg, paths: Paths, fd: FoldData, mean, std) -> Inputs:
    """Inputs of an image model over a fold's train+test rows: the decoded-image cache (rebuilt when missing or
    stale) and the device-side augmentation."""
    size = int(cfg.data.cache_size)
    files = [p or None for p in fd.train["image_path"].tolist() + fd.test["image_path"].tolist()]
    # keyed by the image files' paths, sizes and mtimes: an image repaired in place is re-read
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
    return image_array_inputs(cfg, arr, mean, std, len(fd.train))


def image_array_inputs(cfg, arr: np.ndarray, mean, std, n_train: int) -> Inputs:
    """Inputs over decoded images uint8 [N, S, S, 3] (a fold's image cache, or a bundle's new
    products decoded in memory with ``n_train=0``): crops, flips and normalisation on the device."""
    aug = cfg.augment
    augment = GpuImageAugment(int(cfg.data.image_size), mean, std, train_crop_scale=tuple(aug.crop_scale),
                              hflip=bool(aug.hflip), max_rotate_deg=float(aug.max_rotate_deg),
                              channels_last=bool(cfg.train.channels_last))
    return Inputs(CachedImageDataset(arr), n_train, None, batch_transform=make_image_batch_transform(augment))


def feature_inputs(feats: np.ndarray | None, view_feats: dict, mu: np.ndarray, sd: np.ndarray,
                   n_train: int) -> Inputs:
    """Inputs of a head on frozen features ``feats`` [N, D] (what it trains on; None when it only
    predicts) and each test-time view's features (``{view: [N, D]}``, what it predicts from), all
    standardised with the fold's training statistics ``mu``/``sd``."""
    views = {v: FeatureDataset((f - mu) / sd) for v, f in view_feats.items()}
    base = FeatureDataset((feats - mu) / sd) if feats is not None else next(iter(views.values()))
    return Inputs(base, n_train, None, view_datasets=views)


def build_inputs_and_model(cfg, paths: Paths, fd: FoldData, frozen_backbone: bool = False):
    """(Inputs, model) of a text or image experiment on a fold's data, the model built by the registry
    (``frozen_backbone``: for feature extraction)."""
    if cfg.kind == "text":
        inputs = text_inputs(cfg, paths, fd)
        model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, **inputs.model_kwargs)
    else:
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
