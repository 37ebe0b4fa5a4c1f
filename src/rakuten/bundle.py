"""Model bundles: a finished run's submitted model and everything it depends on, usable on new products.

``export_bundle`` copies, from a workdir, the fold models (weights or fitted scikit-learn/LightGBM
objects), each text member's tokenizer, the resolved configs, the label map, the per-class biases the
submission applied, and writes ``manifest.json``. ``Bundle`` loads one and predicts products the way
the run predicted its test set: every unimodal fold model on the products, each second-level fold
model on its upstream fold models' outputs (``test_input``), the fold models' probabilities
averaged (``Experiment.load_test(average="probs")``, what ``submit.py`` does), then the biases.

Layout::

    manifest.json               submitted model, members and their inputs, versions, hashes, scores
    label_map.json
    members/<exp>/config.json   the resolved config of the run (meta.json's)
    members/<exp>/fold<k>.pt|.joblib, members/<exp>/tokenizer/

    features/<exp>/config.json  a frozen backbone's extraction settings (weights: the offline packages)

Supported members: TF-IDF models (with or without dense frozen features), kNN (on TF-IDF or on frozen
features), fine-tuned text and image models, heads (MLP or logistic regression) on frozen features,
and the stackers (lgbm, logreg, blend, caruana) over them, and the fusion models (each fold's kept
network, statistics and alignment maps, predicted by ``second_level.fusion.predict_fusion``).
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten.artifacts import Experiment, atomic_write_json, read_json, softmax
from rakuten.config import Config
from rakuten.data.challenge import SIGIR_RENAME, DataError
from rakuten.data.text import clean_text, join_text
from rakuten.errors import RakutenError
from rakuten.experiment import load_experiment
from rakuten.labels import NUM_CLASSES, LabelMap
from rakuten.models.backbones import load_tokenizer
from rakuten.models.registry import create_model
from rakuten.paths import REPO_ROOT, Paths
from rakuten.training.fold_data import field_texts

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1


class BundleError(RakutenError):
    """A bundle that cannot be written or read; the message is one line."""


# ---------------------------------------------------------------------------------------------- export
def submitted_experiment(paths: Paths, preset=None) -> dict:
    """{"experiment", "bias", "biases"} of the run's submission (``submissions/submitted.json``)."""
    p = paths.submissions_dir / "submitted.json"
    if p.exists():
        return read_json(p)
    raise BundleError(f"{p}: missing; run the submission stage first (run_all.py or submit.py through "
                      "run_all) so the run records which model it submitted")


def feature_source(cfg: dict) -> str | None:
    """The frozen-backbone experiment whose embeddings a member reads, or None: its own config for a
    frozen head, ``tfidf.dense.experiment`` or ``knn.features`` (by name, as training loads them)."""
    kind = cfg.get("kind")
    if kind in ("text", "image") and cfg.get("model", {}).get("freeze_backbone"):
        return cfg["name"]
    if kind == "tfidf":
        return (cfg.get("tfidf", {}).get("dense") or {}).get("experiment") or None
    if kind == "knn" and cfg.get("knn", {}).get("features") != "tfidf":
        return cfg["knn"]["features"]
    return None


def _unsupported(meta: dict) -> str | None:
    kind = meta.get("kind")
    if kind not in ("stack", "unimodal", "fusion"):
        return f"kind {kind!r} is not exportable"
    return None


def _source_config(name: str, member_cfg: dict) -> dict:
    """The config training extracted ``name``'s features with: the member's own for a frozen head,
    else the experiment's file (``classic.source_features`` loads it without preset overrides)."""
    if member_cfg.get("name") == name:
        cfg = member_cfg
    else:
        cfg = load_experiment(name).to_dict()
    backbone = str(cfg.get("model", {}).get("backbone", ""))
    if cfg.get("kind") == "text" and backbone.startswith("tiny:"):
        raise BundleError(f"{name}: frozen features of a {backbone} backbone are not exportable (its tokenizer "
                          "is fitted on the training text and is not kept)")
    return cfg


def _extraction_key(cfg: dict) -> str:
    """What ``training.features.frozen_features`` keys its cache on (the data aside)."""
    m, d = cfg.get("model", {}), cfg.get("data", {})
    return (f"{m.get('name')}|{m.get('backbone')}|{m.get('cpu_int8', False)}|{cfg.get('kind')}|{d.get('field')}|"
            f"{d.get('max_len')}|{d.get('prefix')}|{d.get('image_size')}")


def _members(paths: Paths, name: str, out: dict) -> None:
    """Add ``name`` and, for second levels, its inputs to ``out`` (name -> meta), inputs first."""
    if name in out:
        return
    e = Experiment(paths.oof_dir, name)
    if not e.meta_path.exists():
        raise BundleError(f"{name}: no {e.meta_path}; the run is incomplete")
    meta = e.read_meta()
    why = _unsupported(meta)
    if why:
        raise BundleError(f"{name}: {why}")
    for up in _inputs(meta):
        _members(paths, up, out)
    out[name] = meta


def _inputs(meta: dict) -> list[str]:
    """The experiments a second-level model reads (none for a unimodal one)."""
    if meta.get("kind") == "fusion":
        # heavy: torch (the fusion networks), only for a bundle with a fusion
        from rakuten.second_level.fusion import fusion_inputs
        return fusion_inputs(meta["config"])[0]
    return list(meta["config"]["stack"]["inputs"]) if meta.get("kind") == "stack" else []


def _versions() -> dict:
    v = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "timm", "scikit-learn", "lightgbm", "numpy", "pandas"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        v["rakuten_commit"] = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        v["rakuten_commit"] = None
    return v


def _dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def export_bundle(paths: Paths, out: str | Path, preset_name: str | None = None) -> dict:
    """Write the bundle of the run's submitted model to ``out`` (replaced if it is a bundle)."""
    out = Path(out)
    sub = submitted_experiment(paths)
    top = sub["experiment"]
    members: dict = {}
    _members(paths, top, members)
    if out.exists():
        if not (out / "manifest.json").exists() and any(out.iterdir()):
            raise BundleError(f"{out}: exists and is not a bundle; choose an empty or new folder")
        shutil.rmtree(out)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "members").mkdir(parents=True)
    label_map = LabelMap()
    label_map.save(tmp / "label_map.json")
    entries, sources = {}, {}
    for name, meta in members.items():
        e = Experiment(paths.oof_dir, name)
        folds = sorted(int(k) for k in meta.get("folds", {}))
        if not folds:
            raise BundleError(f"{name}: no finished fold")
        d = tmp / "members" / name
        d.mkdir()
        files = []
        for k in folds:
            src = next((e.model_path(k, x) for x in ("pt", "joblib") if e.model_path(k, x).exists()), None)
            if src is None:
                raise BundleError(f"{name} fold {k}: no saved model in {e.dir / 'models'} (trained before "
                                  "fold models were kept: rerun the fold with --force)")
            shutil.copy2(src, d / src.name)
            files.append(src.name)
        tok = e.dir / "models" / "tokenizer"
        if tok.is_dir():
            shutil.copytree(tok, d / "tokenizer")
        elif (meta.get("kind") == "unimodal" and meta["config"].get("kind") == "text"
              and not meta["config"]["model"].get("freeze_backbone")):
            raise BundleError(f"{name}: no saved tokenizer in {tok}; rerun the experiment with --force")
        atomic_write_json(d / "config.json", meta["config"])
        cfg = meta["config"]
        src = feature_source(cfg) if meta.get("kind") == "unimodal" else None
        if src is not None and src not in sources:
            scfg = _source_config(src, cfg)
            same = next((n for n, c in sources.items() if _extraction_key(c) == _extraction_key(scfg)), None)
            if same is not None:
                src = same   # one extraction per backbone and settings, as training's feature cache
            else:
                sources[src] = scfg
                atomic_write_json(tmp / "features" / src / "config.json", scfg)
        entries[name] = {
            "kind": meta.get("kind"), "member_kind": cfg.get("kind"), "folds": folds, "files": files,
            "inputs": _inputs(meta),
            "config_hash": meta.get("config_hash"), "fold_hash": meta.get("fold_hash"),
            "oof_scores": meta.get("oof"), "field": meta.get("field"), "features": src,
        }
    version_src = json.dumps({n: (v["config_hash"], v["fold_hash"]) for n, v in entries.items()}, sort_keys=True)
    manifest = {
        "bundle_format": BUNDLE_FORMAT,
        "model_version": f"{top}-{hashlib.sha256(version_src.encode()).hexdigest()[:10]}",
        "submitted": top, "preset": preset_name,
        "biases": sub.get("biases") if sub.get("bias") else None,
        "average": "probs", "members": entries, "feature_sources": sorted(sources), "versions": _versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_workdir": str(paths.workdir),
    }
    atomic_write_json(tmp / "manifest.json", manifest)
    tmp.rename(out)
    return {"path": str(out), "bytes": _dir_size(out), "model_version": manifest["model_version"],
            "members": list(entries)}


# ------------------------------------------------------------------------------------------ products
def read_products(path: str | Path, images: str | Path | None = None) -> pd.DataFrame:
    """New products from the challenge's X format (CSV: ``,designation,description,productid,imageid``;
    SIGIR TSV) or JSON lines (``title`` or ``designation``, optional ``description``, ``productid``,
    ``imageid``, ``image_path``). Returns the columns the models read, one row per product, in order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix in (".jsonl", ".json"):
            df = pd.read_json(path, lines=True, dtype=False)
            df.index = pd.RangeIndex(len(df))
        elif path.suffix == ".tsv":
            df = pd.read_csv(path, sep="\t").rename(columns=SIGIR_RENAME)
            df = df.set_index("Integer_id") if "Integer_id" in df else df
        else:
            df = pd.read_csv(path, index_col=0)
    except ValueError as e:
        raise DataError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None
    return products_frame(df.rename(columns={"title": "designation"}), images, str(path))


def products_frame(df: pd.DataFrame, images: str | Path | None = None, where: str = "input") -> pd.DataFrame:
    """Products (``designation`` required; others optional) -> the cleaned model inputs."""
    if "designation" not in df.columns:
        raise DataError(f"{where}: no title column (designation or title)")
    n = len(df)
    out = pd.DataFrame({"row_index": np.asarray(df.index)})
    out["id"] = (pd.to_numeric(df["productid"], errors="coerce").fillna(-1).astype(np.int64).to_numpy()
                 if "productid" in df else np.full(n, -1, np.int64))
    out["imageid"] = (pd.to_numeric(df["imageid"], errors="coerce").fillna(-1).astype(np.int64).to_numpy()
                      if "imageid" in df else np.full(n, -1, np.int64))
    out["title"] = [clean_text(v) for v in df["designation"].tolist()]
    desc = df["description"].tolist() if "description" in df else [None] * n
    out["description"] = [clean_text(v) for v in desc]
    out["text"] = [join_text(t, d) for t, d in zip(out["title"], out["description"])]
    out["has_description"] = out["description"].str.len() > 0
    paths = list(df["image_path"].fillna("").astype(str)) if "image_path" in df else [""] * n
    if images is not None:
        d = Path(images)
        for i, (im, p) in enumerate(zip(out["imageid"], out["id"])):
            f = d / f"image_{im}_product_{p}.jpg"
            if not paths[i] and f.exists():
                paths[i] = str(f)
    out["image_path"] = [p if p and Path(p).exists() else "" for p in paths]
    out["has_image"] = out["image_path"] != ""
    missing = []
    for t, hd, hi in zip(out["title"], out["has_description"], out["has_image"]):
        m = [name for name, ok in (("title", bool(t)), ("description", hd), ("image", hi)) if not ok]
        missing.append(",".join(m))
    out["missing"] = missing
    return out


# ------------------------------------------------------------------------------------------- loading
class Bundle:
    """A loaded bundle: ``predict(products)`` -> (log of the averaged probabilities [n, 27], info)."""

    def __init__(self, path: str | Path, device: str = "cpu", progress: bool = False):
        t0 = time.time()
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.exists():
            raise BundleError(f"{self.path}: not a bundle (no manifest.json)")
        self.manifest = read_json(mpath)
        if self.manifest.get("bundle_format") != BUNDLE_FORMAT:
            raise BundleError(f"{self.path}: bundle format {self.manifest.get('bundle_format')}, "
                              f"this code reads {BUNDLE_FORMAT}")
        self.label_map = LabelMap.load(self.path / "label_map.json")
        self.device, self.progress = device, progress
        self._images: dict = {}      # decoded image arrays of the current predict call
        self._tmpdirs: list = []
        self.sources: dict[str, dict] = {}
        for name in self.manifest.get("feature_sources", []):
            cfg = Config(read_json(self.path / "features" / name / "config.json"))
            self.sources[name] = {"cfg": cfg, **self._load_source(cfg)}
        self.members: dict[str, dict] = {}
        for name, entry in self.manifest["members"].items():
            d = self.path / "members" / name
            cfg = Config(read_json(d / "config.json"))
            self.members[name] = {**entry, "cfg": cfg, "models": self._load_member(name, entry, cfg, d)}
        self.load_seconds = time.time() - t0

    def _load_source(self, cfg) -> dict:
        """The frozen backbone of a feature source, as ``training.features.frozen_features`` builds it
        (pretrained weights from the offline packages or a local folder; never trained further)."""
        if cfg.kind == "text":
            tok = load_tokenizer(cfg.model.backbone)
            model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, tokenizer=tok)
        else:
            # heavy: torch and timm load only when a bundle has an image member
            from rakuten.models.image import load_image_backbone
            tok = None
            backbone = load_image_backbone(cfg.model.backbone, pretrained=cfg.model.pretrained,
                                           drop_path_rate=cfg.model.get("drop_path_rate", 0.0))
            model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, backbone=backbone)
        model = model.eval()
        if self.device == "cpu" and cfg.model.get("cpu_int8", False):
            # heavy: torch
            import torch
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*deprecated.*")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return {"model": model, "tokenizer": tok}

    def _features(self, name: str, products: pd.DataFrame, cache: dict) -> np.ndarray:
        """Frozen embeddings [n, D] of feature source ``name`` (extracted once per predict call)."""
        key = ("features", name)
        if key not in cache:
            src = self.sources[name]
            cache[key] = self._torch_run(src["cfg"], src["model"], products, src["tokenizer"])[1].astype(np.float32)
        return cache[key]

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    def _load_member(self, name: str, entry: dict, cfg, d: Path) -> dict:
        # heavy: joblib (scikit-learn) and torch load only when a bundle loads its members
        import joblib
        import torch

        models = {}
        tok = None
        if entry["member_kind"] == "text" and (d / "tokenizer").is_dir():
            # heavy: transformers
            from transformers import PreTrainedTokenizerFast
            tok = PreTrainedTokenizerFast.from_pretrained(str(d / "tokenizer"))
        for k, fname in zip(entry["folds"], entry["files"]):
            f = d / fname
            if fname.endswith(".joblib"):
                models[k] = joblib.load(f)
                continue
            state = torch.load(f, map_location="cpu", weights_only=False)
            if entry["kind"] == "fusion":   # what fusion.fit_predict_fold kept, and its network
                # heavy: torch (the fusion networks)
                from rakuten.second_level.fusion import fusion_network
                models[k] = {"fitted": state, "net": fusion_network(cfg, state)}
            elif "in_dim" in state:   # a head on frozen features
                head = create_model("head_mlp", cfg=dict(cfg.model), num_classes=NUM_CLASSES, in_dim=state["in_dim"])
                head.load_state_dict(state["state_dict"])
                models[k] = {"head": head.eval(), "mu": state["mu"], "sd": state["sd"]}
            else:
                models[k] = self._torch_model(cfg, tok, state["state_dict"])
        if tok is not None:
            models["tokenizer"] = tok
        return models

    def _torch_model(self, cfg, tok, state_dict):
        if cfg.kind == "text":
            # backbone from its config only (tiny:* random init, then these weights); hub names
            # would need the hub (see the module docstring)
            model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, tokenizer=tok)
        else:
            # heavy: torch and timm
            from rakuten.models.image import load_image_backbone
            backbone = load_image_backbone(cfg.model.backbone, pretrained=False,
                                           drop_path_rate=cfg.model.get("drop_path_rate", 0.0))
            model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, backbone=backbone)
        model.load_state_dict(state_dict)
        return model.eval()

    # --------------------------------------------------------------------------------------- predict
    def predict(self, products: pd.DataFrame) -> np.ndarray:
        """Log of the fold-averaged probabilities (+ biases) of the submitted model, [n, 27] float64."""
        cache: dict = {}
        self._images.clear()
        top = self.manifest["submitted"]
        folds = self.members[top]["folds"]
        per_fold = self._fold_logits(top, products, cache)
        # probabilities averaged over the fold models, as Experiment.load_test(average="probs")
        logits = np.log(np.mean([softmax(per_fold[k]) for k in folds], axis=0) + 1e-12).astype(np.float64)
        if self.manifest.get("biases") is not None:
            logits = logits + np.asarray(self.manifest["biases"], dtype=np.float64)[None, :]
        return logits

    def _fold_logits(self, name: str, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        """{fold: logits float32 [n, 27]} of member ``name``'s fold models (computed once per call)."""
        if name in cache:
            return cache[name]
        m = self.members[name]
        if m["kind"] == "stack":
            out = self._stack_logits(name, m, products, cache)
        elif m["kind"] == "fusion":
            out = self._fusion_logits(m, products, cache)
        elif m["member_kind"] in ("tfidf", "knn"):
            out = self._classic_logits(m, products, cache)
        elif m.get("features"):
            out = self._frozen_logits(m, products, cache)
        else:
            out = {k: self._torch_run(m["cfg"], m["models"][k], products, m["models"].get("tokenizer"))[0]
                   for k in m["folds"]}
        cache[name] = {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
        return cache[name]

    def _classic_logits(self, m: dict, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        """TF-IDF linear models and kNN, as ``training.classic.fit_predict`` predicts its test rows."""
        # heavy: torch and scikit-learn
        from rakuten.training.classic import _l2_rows, knn_log_proba

        cfg = m["cfg"]
        texts = field_texts(products, cfg)
        feats = None
        if m.get("features"):
            f = self._features(m["features"], products, cache)
            feats = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)   # classic.source_features
        out = {}
        for k in m["folds"]:
            obj = m["models"][k]
            if obj["kind"] == "tfidf":
                dense = None if feats is None else feats * float(cfg.tfidf.dense.get("weight", 1.0))
                out[k] = obj["model"].predict_logits(texts, NUM_CLASSES, dense=dense)
            elif obj["kind"] == "knn_tfidf":
                q = _l2_rows(obj["vectorizer"]._features(texts, fit=False))
                out[k] = knn_log_proba(q, obj["bank"], obj["bank_labels"], cfg.knn.k, cfg.knn.temperature)
            else:
                out[k] = knn_log_proba(feats, obj["bank"], obj["bank_labels"], cfg.knn.k, cfg.knn.temperature)
        return out

    def _frozen_logits(self, m: dict, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        """Heads on frozen features, standardised with their fold's training statistics."""
        # heavy: the training modules load torch
        from rakuten.training.engine import Engine
        from rakuten.training.inputs import FeatureDataset, RowSubset
        from rakuten.training.loaders import make_loader

        cfg = m["cfg"]
        f = self._features(m["features"], products, cache)
        out = {}
        for k in m["folds"]:
            obj = m["models"][k]
            z = (f - obj["mu"]) / obj["sd"]
            if "clf" in obj:   # model.head: logreg (classic.frozen_logreg)
                full = np.full((len(z), NUM_CLASSES), -30.0, dtype=np.float64)
                full[:, obj["clf"].classes_] = obj["clf"].predict_log_proba(z)
                out[k] = full.astype(np.float32)
                continue
            engine = Engine(obj["head"], None, device=self.device, precision=cfg.train.precision, progress=False)
            loader, _ = make_loader(RowSubset(FeatureDataset(z), np.arange(len(z)), None), cfg, False, None)
            out[k] = engine.predict(loader)[0]
        return out

    def _torch_run(self, cfg, model, products: pd.DataFrame, tok=None) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of a torch text or image model on the products, batched like training's
        eval loaders (length-sorted text batches padded per batch)."""
        # heavy: the training modules load torch
        from rakuten.training.engine import Engine
        from rakuten.training.inputs import RowSubset
        from rakuten.training.loaders import make_loader

        transform, collate, lengths = None, None, None
        if cfg.kind == "text":
            # heavy: torch
            from rakuten.data.text_dataset import TokenDataset, tokenize_texts
            from rakuten.training.samplers import pad_collate
            tokens = tokenize_texts(tok, field_texts(products, cfg), int(cfg.data.max_len))
            ds, lengths = TokenDataset(tokens), tokens.lengths
            collate = pad_collate(tok.pad_token_id, pad_to_multiple_of=cfg.data.pad_to_multiple_of or None)
        else:
            ds, transform = self._image_inputs(cfg, model, products)
        engine = Engine(model, None, device=self.device, precision=cfg.train.precision, batch_transform=transform,
                        channels_last=bool(cfg.train.channels_last), progress=self.progress)
        loader, _ = make_loader(RowSubset(ds, np.arange(len(products)), None), cfg, False, collate, lengths)
        return engine.predict(loader)

    def _image_inputs(self, cfg, model, products: pd.DataFrame):
        # heavy: torch
        from rakuten.data.image_cache import (CachedImageDataset, GpuImageAugment, build_image_cache,
                                              load_image_cache, make_image_batch_transform)
        from rakuten.models.image import image_norm

        key = ("images", int(cfg.data.cache_size))
        if key not in self._images:
            files = [p or None for p in products["image_path"].tolist()]
            d = Path(tempfile.mkdtemp(prefix="rakuten_predict_"))
            self._tmpdirs.append(d)
            f = d / f"images_{key[1]}.npy"
            build_image_cache(files, key[1], f, workers=0, progress=False)
            self._images[key] = np.asarray(load_image_cache(f))
        mean, std = image_norm(getattr(model, "encoder", model))
        aug = cfg.augment
        augment = GpuImageAugment(int(cfg.data.image_size), mean, std, train_crop_scale=tuple(aug.crop_scale),
                                  hflip=bool(aug.hflip), max_rotate_deg=float(aug.max_rotate_deg),
                                  channels_last=bool(cfg.train.channels_last))
        return CachedImageDataset(self._images[key]), make_image_batch_transform(augment)

    def _stack_logits(self, name: str, m: dict, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        # heavy: scikit-learn and LightGBM
        from rakuten.second_level.blend import log_proba, model_meta_features
        from rakuten.second_level.stacker import _log_proba, _logodds, _proba_full, stack_config

        cfg = stack_config(m["cfg"])
        ups = {u: self._fold_logits(u, products, cache) for u in cfg.stack.inputs}
        out = {}
        for k in m["folds"]:
            if cfg.test_input == "per_fold":
                lp = [log_proba(ups[u][k]) for u in cfg.stack.inputs]
            else:   # averaged: the mean of the upstream fold models' logits (SecondLevelData.test_input)
                lp = [log_proba(np.mean([ups[u][j] for j in sorted(ups[u])], axis=0)) for u in cfg.stack.inputs]
            if cfg.stack.model != "lgbm":
                X = np.hstack(lp)
            else:
                tf = _logodds if cfg.stack.features == "logodds" else np.exp
                X = np.hstack([tf(v) for v in lp]).astype(np.float32)
                if cfg.stack.model_meta:
                    X = np.hstack([X, model_meta_features(lp)])
                if cfg.stack.meta_features:
                    X = np.hstack([X, np.column_stack([
                        products["has_description"].to_numpy(np.float32), products["has_image"].to_numpy(np.float32),
                        products["title"].str.len().to_numpy(np.float32),
                        products["description"].str.len().to_numpy(np.float32)])])
            out[k] = _log_proba(_proba_full(m["models"][k], X, NUM_CLASSES))
        return out

    def _fusion_logits(self, m: dict, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        """A fusion's fold models through ``predict_fusion``, the function the run predicted with, on
        its inputs' fold outputs and the products' title/description/image presence."""
        # heavy: torch (the fusion networks)
        from rakuten.second_level.fusion import fusion_config, fusion_net_class, input_present, predict_fusion

        cfg = fusion_config(m["cfg"])
        specs = fusion_net_class(cfg.fusion.variant).inputs(cfg.fusion)
        needs_emb = {n for n, f in specs if f == "embeddings"}
        outputs = {}
        for n in m["inputs"]:
            emb = self._fold_embeddings(n, products, cache) if n in needs_emb else {}
            logits = self._fold_logits(n, products, cache)
            outputs[n] = {j: (logits[j], emb.get(j)) for j in logits}
        out = {}
        for k in m["folds"]:
            fitted = m["models"][k]["fitted"]
            present = {n: input_present(products, v["modality"], v["field"]) for n, v in fitted["inputs"].items()}
            out[k] = predict_fusion(cfg, fitted, outputs, present, net=m["models"][k]["net"])[0]
        return out

    def _fold_embeddings(self, name: str, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        """{fold: embeddings [n, D]} of a unimodal member, the ``embeddings`` its fold wrote: the frozen
        features (logistic-regression head), the head's embedding, or the fine-tuned model's."""
        key = ("embeddings", name)
        if key in cache:
            return cache[key]
        m = self.members[name]
        out = {}
        if m.get("features"):
            # heavy: the training modules load torch
            from rakuten.training.engine import Engine
            from rakuten.training.inputs import FeatureDataset, RowSubset
            from rakuten.training.loaders import make_loader
            f = self._features(m["features"], products, cache)
            for k in m["folds"]:
                obj = m["models"][k]
                if "clf" in obj:   # logreg: its fold wrote the frozen features themselves
                    out[k] = f
                    continue
                z = (f - obj["mu"]) / obj["sd"]
                engine = Engine(obj["head"], None, device=self.device, precision=m["cfg"].train.precision, progress=False)
                loader, _ = make_loader(RowSubset(FeatureDataset(z), np.arange(len(z)), None), m["cfg"], False, None)
                out[k] = engine.predict(loader)[1]
        else:
            both = {k: self._torch_run(m["cfg"], m["models"][k], products, m["models"].get("tokenizer"))
                    for k in m["folds"]}
            out = {k: v[1] for k, v in both.items()}
            cache.setdefault(name, {k: np.asarray(v[0], dtype=np.float32) for k, v in both.items()})
        cache[key] = {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
        return cache[key]

    def close(self) -> None:
        for d in self._tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self._tmpdirs.clear()
        self._images.clear()


def predictions_frame(bundle: Bundle, products: pd.DataFrame, logits: np.ndarray) -> pd.DataFrame:
    """The output table: code, class index, top-3 codes with probabilities, missing inputs, version."""
    p = softmax(logits)
    top = np.argsort(-p, axis=1, kind="stable")[:, :3]
    codes = np.asarray(bundle.label_map.codes, dtype=np.int64)
    out = pd.DataFrame({"productid": products["id"].to_numpy(np.int64),
                        "prdtypecode": codes[logits.argmax(1)], "label": logits.argmax(1)})
    for j in range(3):
        out[f"top{j + 1}_code"] = codes[top[:, j]]
        out[f"top{j + 1}_prob"] = np.round(p[np.arange(len(p)), top[:, j]], 6)
    out["missing_inputs"] = products["missing"].to_numpy()
    out["model_version"] = bundle.model_version
    out.index = pd.Index(products["row_index"].to_numpy())
    return out


__all__ = ["Bundle", "BundleError", "export_bundle", "predictions_frame", "products_frame", "read_products"]
