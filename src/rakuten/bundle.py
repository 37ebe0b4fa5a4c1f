"""Model bundles: a finished run's submitted model and everything it depends on, usable on new products.

``export_bundle`` copies, from a workdir, the fold models (weights or fitted scikit-learn/LightGBM
objects), each text member's tokenizer, the resolved configs, the label map, the per-class biases the
submission applied, and writes ``manifest.json``. ``Bundle`` loads one and predicts products the way
the run predicted its test set: every unimodal fold model on the products, each second-level fold
model on its upstream fold models' outputs (``test_input``), the fold models' probabilities
averaged (``Experiment.load_test(average="probs")``, what ``submit.py`` does), then the biases.

Layout::

    manifest.json               submitted model, members and their inputs, versions, hashes, scores,
                                and the SHA-256 of every other file (``sha256``)
    label_map.json
    members/<exp>/config.json   the resolved config of the run (meta.json's)
    members/<exp>/fold<k>.pt|.skops|.lgbm.txt, members/<exp>/tokenizer/

    features/<exp>/config.json  a frozen backbone's extraction settings (weights: the offline packages)

Supported members: TF-IDF models (with or without dense frozen features, or a fine-tuned member's
per-fold embeddings), kNN (on TF-IDF, frozen features or a fine-tuned member's embeddings), fine-tuned
text and image models, heads (MLP or logistic regression) on frozen features, the stackers (lgbm,
logreg, blend, caruana) over them, and the fusion models (each fold's kept network, statistics and
alignment maps, predicted by ``second_level.fusion.predict_fusion``).

A bundle holds no pickle: fold models are torch tensors, skops files of trusted types, or LightGBM
text (``rakuten.safe_io``), and loading first checks every file against the manifest's SHA-256 list,
refusing a changed, missing or added file with one line naming it.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten.artifacts import Experiment, atomic_copy, atomic_write_bytes, atomic_write_json, read_json, softmax
from rakuten.config import Config
from rakuten.data.challenge import SIGIR_RENAME, DataError
from rakuten.data.text import clean_text, join_text
from rakuten.defaults import BUNDLE_IMAGE_BATCH
from rakuten.errors import RakutenError
from rakuten.experiment import load_experiment
from rakuten.labels import NUM_CLASSES, LabelMap, code_label
from rakuten.models.backbones import load_tokenizer
from rakuten.models.knn import SharedBank
from rakuten.models.registry import create_model
from rakuten.models.tfidf import share_counts
from rakuten.paths import REPO_ROOT, Paths
from rakuten.safe_io import (SAFE_SUFFIXES, UnsafeModelError, check_digests, file_digests, load_model, load_run_model,
                             serialize_model, suffix_of)
from rakuten.training.fold_data import field_texts

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 2   # 2: data-only model files and the sha256 list (1 held pickles)


class BundleError(RakutenError):
    """A bundle that cannot be written or read; the message is one line."""


# ---------------------------------------------------------------------------------------------- export
def submitted_experiment(paths: Paths, preset=None) -> dict:
    """{"experiment", "bias", "biases"} of the run's submission (``submissions/submitted.json``)."""
    p = paths.submissions_dir / "submitted.json"
    if p.exists():
        sub = read_json(p)
        if not isinstance(sub, dict) or not isinstance(sub.get("experiment"), str):
            raise BundleError(f"{p}: malformed (no experiment name); rerun the submission stage")
        return sub
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
    if cfg.get("kind") == "text" and backbone.startswith(("tiny:", "reduced:")):
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
    src = feature_source(meta["config"]) if meta.get("kind") == "unimodal" else None
    if src is not None and src != name and _finetuned(paths, src):
        _members(paths, src, out)   # its fold models give each fold of this member its embeddings
    out[name] = meta


def _finetuned(paths: Paths, name: str) -> bool:
    """Whether ``name`` is a fine-tuned (not frozen) text or image experiment of this workdir."""
    e = Experiment(paths.oof_dir, name)
    cfg = e.read_meta().get("config", {}) if e.meta_path.exists() else {}
    return cfg.get("kind") in ("text", "image") and not cfg.get("model", {}).get("freeze_backbone")


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
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: is a file; choose an empty or new folder")
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise BundleError(f"{out}: exists and is not a bundle; choose an empty or new folder")
    # the new bundle is written beside ``out`` and swapped in whole: a failed export (a full disk)
    # leaves the bundle there before byte-identical
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_bundle(paths, tmp, top, sub, members, preset_name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = read_json(tmp / "manifest.json")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return {"path": str(out), "bytes": _dir_size(out), "model_version": manifest["model_version"],
            "members": list(manifest["members"])}


def _bundle_model(src: Path, d: Path, k: int) -> str:
    """Put fold ``k``'s model file ``src`` (a run's) into member folder ``d`` in a data-only format:
    copied when it is one already, else (the pickles of runs made before) read and re-saved."""
    suffix = suffix_of(src)
    if suffix in SAFE_SUFFIXES:
        try:
            load_model(src)   # a truncated or foreign file fails here, not when the bundle is loaded
            atomic_copy(src, d / src.name)
            return src.name
        except UnsafeModelError:
            if suffix != ".pt":
                raise
            # a head saved with numpy arrays (before safe_io): re-saved as tensors below
    new_suffix, data = serialize_model(load_run_model(src), torch_weights=suffix == ".pt")
    atomic_write_bytes(d / f"fold{k}{new_suffix}", data)
    return f"fold{k}{new_suffix}"


def _write_bundle(paths: Paths, tmp: Path, top: str, sub: dict, members: dict, preset_name: str | None) -> None:
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
            src = e.model_file(k)
            if src is None:
                raise BundleError(f"{name} fold {k}: no saved model in {e.dir / 'models'} (trained before "
                                  "fold models were kept: rerun the fold with --force)")
            files.append(_bundle_model(src, d, k))
        tok = e.dir / "models" / "tokenizer"
        if tok.is_dir():
            shutil.copytree(tok, d / "tokenizer", copy_function=atomic_copy)
        elif (meta.get("kind") == "unimodal" and meta["config"].get("kind") == "text"
              and not meta["config"]["model"].get("freeze_backbone")):
            raise BundleError(f"{name}: no saved tokenizer in {tok}; rerun the experiment with --force")
        atomic_write_json(d / "config.json", meta["config"])
        cfg = meta["config"]
        src = feature_source(cfg) if meta.get("kind") == "unimodal" else None
        per_fold = src is not None and src != name and _finetuned(paths, src)
        if src is not None and src not in sources and not per_fold:
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
            # features from the fine-tuned member ``src``: fold k reads its fold-k model's embeddings
            "features_per_fold": per_fold,
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
        "sha256": file_digests(tmp),
    }
    atomic_write_json(tmp / "manifest.json", manifest)


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
def _check_manifest(m: dict, mpath: Path) -> None:
    """The manifest's tables have the shapes the loader reads, and every file it will open is one
    the SHA-256 list pins (no path leaves the bundle): else one line naming what is wrong."""
    def bad(why: str):
        raise BundleError(f"{mpath}: malformed ({why}); re-export the bundle")
    digests, members = m.get("sha256"), m.get("members")
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        bad("no sha256 table")
    if not isinstance(members, dict) or not isinstance(m.get("submitted"), str) or m["submitted"] not in members:
        bad("no members table holding the submitted model")
    b = m.get("biases")
    if b is not None and (not isinstance(b, list) or len(b) != NUM_CLASSES
                          or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
        bad(f"biases must be null or {NUM_CLASSES} numbers")
    if not isinstance(m.get("feature_sources", []), list):
        bad("feature_sources is not a list")
    for name in [*members, *m.get("feature_sources", [])]:
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            bad(f"member or feature source name {name!r} is not a plain folder name")
    for name in m.get("feature_sources", []):
        if f"features/{name}/config.json" not in digests:
            bad(f"feature source {name!r} has no pinned config")
    for name, e in members.items():
        if not isinstance(e, dict) or not isinstance(e.get("folds"), list) or not isinstance(e.get("files"), list) \
                or len(e["folds"]) != len(e["files"]) or not all(isinstance(k, int) for k in e["folds"]):
            bad(f"member {name!r}: folds and files must be lists of the same length")
        for f in [*e["files"], "config.json"]:
            if not isinstance(f, str) or "/" in f or "\\" in f or f"members/{name}/{f}" not in digests:
                bad(f"member {name!r}: file {f!r} is not pinned by the sha256 table")
        ins = e.get("inputs") or []
        if not isinstance(ins, list) or not all(isinstance(u, str) and u in members for u in ins):
            bad(f"member {name!r}: an input is not a member")
        if e.get("kind") not in ("stack", "fusion", "unimodal") or not isinstance(e.get("member_kind"), str):
            bad(f"member {name!r}: kind must be stack, fusion or unimodal, with a member_kind")


class SharedRows:
    """Distinct rows of several dense matrices (the kNN fold models' neighbour banks, each the
    training folds' rows of one embedding matrix), held once: ``add`` returns a matrix's row numbers
    in the shared one, ``matrix`` the shared rows. Rows are matched by their bytes (a 16-byte digest,
    then compared), so a fold's bank is ``matrix()[rows]`` exactly and no prediction changes."""

    def __init__(self):
        self.rows: list[np.ndarray] = []
        self.index: dict[bytes, int] = {}

    @property
    def n(self) -> int:
        """How many distinct rows are held."""
        return len(self.rows)

    def add(self, m: np.ndarray) -> np.ndarray:
        """Row numbers of the rows of ``m`` in the shared matrix, adding those not held yet."""
        m = np.ascontiguousarray(m)
        out = np.empty(len(m), dtype=np.int64)
        for i, r in enumerate(m):
            key = hashlib.blake2b(r.tobytes(), digest_size=16).digest()
            j = self.index.get(key)
            if j is None or not np.array_equal(self.rows[j], r):
                j = self.index[key] = len(self.rows)
                self.rows.append(r.copy())
            out[i] = j
        return out

    def matrix(self) -> np.ndarray:
        """The distinct rows, [n, D], in the order they were first added."""
        return np.stack(self.rows) if self.rows else np.zeros((0, 0), np.float32)


def _one_openblas_thread() -> None:
    """numpy's OpenBLAS on one thread in a process that serves a bundle. Its matrix products here are
    small (a request's rows against a kNN bank, the logistic-regression heads), and after each one its
    idle worker spins for about 200 ms: on 2 cores that took a core from the next step, the image
    decoding of the next request went from 47 to 75-85 ms and the backbones slowed too (measured,
    benchmarks/bundle_bench.py). torch's own threads (OpenMP, MKL) are not touched."""
    # heavy: threadpoolctl (scikit-learn's dependency) finds the BLAS libraries loaded in this process
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(internal_api="openblas").limit(limits=1)


class Bundle:
    """A loaded bundle: ``predict(products)`` -> (log of the averaged probabilities [n, 27], info)."""

    def __init__(self, path: str | Path, device: str = "cpu", progress: bool = False):
        t0 = time.time()
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.exists():
            raise BundleError(f"{self.path}: not a bundle (no manifest.json)")
        self.manifest = read_json(mpath)
        if not isinstance(self.manifest, dict) or self.manifest.get("bundle_format") != BUNDLE_FORMAT:
            fmt = self.manifest.get("bundle_format") if isinstance(self.manifest, dict) else None
            raise BundleError(f"{self.path}: bundle format {fmt}, this code reads {BUNDLE_FORMAT} "
                              "(re-export the run with export.py)")
        _check_manifest(self.manifest, mpath)
        # before anything is read: every file as exported, none added
        check_digests(self.path, self.manifest["sha256"])
        self.label_map = LabelMap.load(self.path / "label_map.json")
        self.device, self.progress = device, progress
        self._images: dict = {}      # decoded image arrays of the current predict call, by size
        self._engines: dict = {}     # inference engines by model (built on first use, see _engine)
        self.sources: dict[str, dict] = {}
        for name in self.manifest.get("feature_sources", []):
            cfg = Config(read_json(self.path / "features" / name / "config.json"))
            self.sources[name] = {"cfg": cfg, **self._load_source(cfg)}
        self.members: dict[str, dict] = {}
        for name, entry in self.manifest["members"].items():
            d = self.path / "members" / name
            cfg = Config(read_json(d / "config.json"))
            self.members[name] = {**entry, "cfg": cfg, "models": self._load_member(name, entry, cfg, d)}
        self._embedding_sources = {m["features"] for m in self.members.values() if m.get("features_per_fold")}
        _one_openblas_thread()
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
                                           drop_path_rate=cfg.model.get("drop_path_rate", 0.0))  # optional key
            model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, backbone=backbone)
        model = model.eval()
        if self.device == "cpu" and cfg.model.cpu_int8:
            # heavy: torch (the training modules)
            from rakuten.training.predict import quantize_for_cpu
            model = quantize_for_cpu(model)
        return {"model": model, "tokenizer": tok}

    def _features(self, name: str, products: pd.DataFrame, cache: dict, view: str = "identity") -> np.ndarray:
        """Frozen embeddings [n, D] of feature source ``name`` through test-time ``view`` (extracted
        once per predict call), by the path training extracted them (``predict_rows``)."""
        key = ("features", name, view)
        if key not in cache:
            src = self.sources[name]
            cache[key] = self._torch_run(src["cfg"], src["model"], products, src["tokenizer"], [view])[1]
        return cache[key]

    @property
    def model_version(self) -> str:
        """The bundle's version string: the submitted model's name and a hash of its members' configs."""
        return self.manifest["model_version"]

    def _load_member(self, name: str, entry: dict, cfg, d: Path) -> dict:
        # heavy: LightGBM (and through it the stacker module) only when a bundle loads its members
        from rakuten.second_level.stacker import LGBMStacker

        models = {}
        shared = SharedRows()     # kNN on frozen features: the folds' banks overlap (each 1 - 1/K of the rows)
        tok = None
        if entry["member_kind"] == "text" and (d / "tokenizer").is_dir():
            # the class the run saved (tokenizer_config.json), e.g. CamembertTokenizer or FlaubertTokenizer
            # of a reduced backbone, a fast WordPiece, or e5's compact Unigram tokenizer
            tok = load_tokenizer(str(d / "tokenizer"))
        for k, fname in zip(entry["folds"], entry["files"]):
            f = d / fname
            obj = load_model(f)   # data-only formats; a pickle is refused, never loaded
            if suffix_of(f) == ".skops":
                models[k] = obj
                if isinstance(obj, dict) and obj.get("kind") == "knn_features":
                    obj["bank_rows"] = shared.add(obj.pop("bank"))
                continue
            if suffix_of(f) == ".lgbm.txt":
                models[k] = LGBMStacker.from_booster(obj)
                continue
            state = obj
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
        # one n-gram count per request for the member's TF-IDF fold models, the same rows
        share_counts([m.get("model") or m.get("vectorizer") for k, m in models.items()
                      if k != "tokenizer" and isinstance(m, dict) and m.get("kind") in ("tfidf", "knn_tfidf")])
        if shared.n:
            # one matrix of the member's training rows; each fold keeps row numbers, and a request's
            # similarities to all of them are computed once for the folds (models.knn.SharedBank)
            bank = SharedBank(shared.matrix())
            for k in entry["folds"]:
                models[k]["bank"] = bank
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
                                           drop_path_rate=cfg.model.get("drop_path_rate", 0.0))  # optional key
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
        """{fold: logits float32 [n, 27]} of member ``name``'s fold models (computed once per call).

        Each kind predicts through the function its training predicted the test rows with:
        ``stack_predict`` over ``stack_inputs`` (stackers), ``predict_classic`` (TF-IDF, kNN),
        ``predict_logreg_head`` / ``predict_rows`` (heads on frozen features), ``predict_rows``
        (fine-tuned text and image models). A fusion member would be dispatched here too, by its
        kind, once its predict keeps what it fits (``_unsupported`` refuses it at export until then)."""
        if name in cache:
            return cache[name]
        m = self.members[name]
        if m["kind"] == "stack":
            out = self._stack_logits(m, products, cache)
        elif m["kind"] == "fusion":
            out = self._fusion_logits(m, products, cache)
        elif m["member_kind"] in ("tfidf", "knn"):
            out = self._classic_logits(m, products, cache)
        elif m.get("features"):
            out = self._frozen_logits(m, products, cache)
        else:
            out = {}
            for k in m["folds"]:
                out[k], emb = self._torch_run(m["cfg"], m["models"][k], products, m["models"].get("tokenizer"))
                if name in self._embedding_sources:   # another member reads this fold's embeddings
                    cache[("embeddings", name, k)] = emb
        cache[name] = {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
        return cache[name]

    def _member_embeddings(self, name: str, k: int, products: pd.DataFrame, cache: dict) -> np.ndarray:
        """Embeddings [n, D] of member ``name``'s fold-``k`` model: one forward per predict call gives
        both its logits (for the second level) and these (for the members that read them)."""
        if ("embeddings", name, k) not in cache:
            self._fold_logits(name, products, cache)
        return cache[("embeddings", name, k)]

    def _classic_logits(self, m: dict, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        """TF-IDF linear models and kNN, through ``training.classic.predict_classic``."""
        # heavy: torch and scikit-learn (the training modules)
        from rakuten.training.classic import l2_normalise, predict_classic

        cfg = m["cfg"]
        texts = field_texts(products, cfg)
        shared = None
        if m.get("features") and not m.get("features_per_fold"):
            shared = l2_normalise(self._features(m["features"], products, cache))
        out = {}
        for k in m["folds"]:
            feats = shared
            if m.get("features_per_fold"):   # fold k's embeddings come from the source's fold-k model
                feats = l2_normalise(self._member_embeddings(m["features"], k, products, cache))
            out[k] = predict_classic(m["models"][k], cfg, texts, feats)
        return out

    def _frozen_logits(self, m: dict, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        """Heads on frozen features (every test-time view), standardised with their fold's training
        statistics, through ``predict_logreg_head`` or ``predict_rows`` as the fold's run predicted."""
        # heavy: the training modules load torch
        from rakuten.training.classic import predict_logreg_head
        from rakuten.training.inputs import feature_inputs
        from rakuten.training.predict import predict_rows, tta_views

        cfg = m["cfg"]
        views = {v: self._features(m["features"], products, cache, v) for v in tta_views(cfg)}
        out = {}
        for k in m["folds"]:
            obj = m["models"][k]
            if obj.get("kind") == "frozen_logreg":   # model.head: logreg
                out[k] = predict_logreg_head(obj, list(views.values()))
                continue
            inputs = feature_inputs(None, views, obj["mu"], obj["sd"], 0)
            out[k] = predict_rows(self._engine(obj["head"], cfg, inputs, False), cfg, inputs,
                                  np.arange(len(products)))[0]
        return out

    def _engine(self, model, cfg, inputs, progress: bool):
        """The inference engine of ``model`` (``predict.eval_engine``), built on its first request and
        kept: building one moves the model to the device and its memory layout, a walk over every
        module that cost 2-3% of a request when repeated for each model on each request. Only the
        batch transform (this request's inputs) changes between calls."""
        # heavy: the training modules load torch
        from rakuten.training.predict import eval_engine

        engine = self._engines.get(id(model))
        if engine is None or engine.model is not model:
            engine = self._engines[id(model)] = eval_engine(model, cfg, inputs, self.device, progress)
        engine.batch_transform = None if inputs is None else inputs.batch_transform
        return engine

    def _torch_run(self, cfg, model, products: pd.DataFrame, tok=None, views: list[str] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of a torch text or image model on the products, through
        ``predict_rows`` as the fold's run (length-sorted text batches padded per batch, images
        decoded in memory, the config's test-time views unless ``views`` is given)."""
        # heavy: the training modules load torch
        from rakuten.data.text_dataset import tokenize_texts
        from rakuten.models.image import image_norm
        from rakuten.training.inputs import image_array_inputs, token_inputs
        from rakuten.training.predict import predict_rows

        if cfg.kind == "text":
            inputs = token_inputs(cfg, tok, tokenize_texts(tok, field_texts(products, cfg), int(cfg.data.max_len)), 0)
        else:
            mean, std = image_norm(getattr(model, "encoder", model))
            inputs = image_array_inputs(cfg, self._decoded_images(products, int(cfg.data.cache_size)), mean, std, 0)
            if int(cfg.train.eval_batch_size) > BUNDLE_IMAGE_BATCH:
                # a CNN's activations grow with the batch: a few images per forward caps the peak memory
                cfg = Config(cfg.to_dict())
                cfg.train.eval_batch_size = BUNDLE_IMAGE_BATCH
        return predict_rows(self._engine(model, cfg, inputs, self.progress), cfg, inputs,
                            np.arange(len(products)), views)

    def _decoded_images(self, products: pd.DataFrame, size: int) -> np.ndarray:
        """The products' images, uint8 [n, size, size, 3], decoded in memory once per predict call
        (``data.image_cache.decode_images``: the rows a training image cache holds)."""
        # heavy: torch (the image cache module)
        from rakuten.data.image_cache import decode_images

        if size not in self._images:
            self._images[size] = decode_images([p or None for p in products["image_path"].tolist()], size)
        return self._images[size]

    def _stack_logits(self, m: dict, products: pd.DataFrame, cache: dict) -> dict[int, np.ndarray]:
        """A stacker's fold models over its inputs' fold outputs: ``stack_inputs`` builds the rows as
        training did, ``stack_predict`` predicts them."""
        # heavy: scikit-learn and LightGBM
        from rakuten.second_level.blend import log_proba
        from rakuten.second_level.stacker import product_meta_features, stack_config, stack_inputs, stack_predict
        from rakuten.second_level.upstream import fold_test_input

        cfg = stack_config(m["cfg"])
        ups = {u: self._fold_logits(u, products, cache) for u in cfg.stack.inputs}
        meta = product_meta_features(products) if cfg.stack.meta_features else None
        out = {}
        for k in m["folds"]:
            lp = [log_proba(fold_test_input(ups[u], k, cfg.test_input)) for u in cfg.stack.inputs]
            out[k] = stack_predict(m["models"][k], stack_inputs(cfg, lp, meta))
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
        """Free the decoded images of the last predict call."""
        self._images.clear()


def predictions_frame(bundle: Bundle, products: pd.DataFrame, logits: np.ndarray) -> pd.DataFrame:
    """The output table: code and its ``code - name`` category, class index, top-3 codes with their
    categories and probabilities, missing inputs, version."""
    p = softmax(logits)
    top = np.argsort(-p, axis=1, kind="stable")[:, :3]
    codes = np.asarray(bundle.label_map.codes, dtype=np.int64)
    out = pd.DataFrame({"productid": products["id"].to_numpy(np.int64),
                        "prdtypecode": codes[logits.argmax(1)], "label": logits.argmax(1)})
    out.insert(2, "category", [code_label(c) for c in out["prdtypecode"]])   # "2583 - Piscine et accessoires"
    for j in range(3):
        out[f"top{j + 1}_code"] = codes[top[:, j]]
        out[f"top{j + 1}_category"] = [code_label(c) for c in codes[top[:, j]]]
        out[f"top{j + 1}_prob"] = np.round(p[np.arange(len(p)), top[:, j]], 6)
    out["missing_inputs"] = products["missing"].to_numpy()
    out["model_version"] = bundle.model_version
    out.index = pd.Index(products["row_index"].to_numpy())
    return out


__all__ = ["Bundle", "BundleError", "export_bundle", "predictions_frame", "products_frame", "read_products"]
