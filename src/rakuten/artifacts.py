"""Artifacts on disk: atomic writes, out-of-fold (OOF) files, experiment meta, and the assembler.

Layout of one experiment (``oof/<experiment>/``)::

    fold<k>.npz        ids (int64 product ids), labels (int64 class idx), logits (float32 [n, C]),
                       embeddings (float32 [n, D])       -- predictions for fold k's held-out rows
    test_fold<k>.npz   ids, logits, embeddings           -- the fold-k model on the test set
    meta.json          resolved config, fold file + hash, per-fold scores
    summary_fold<k>.csv  per-epoch training log

Every writer goes through a temporary file and ``os.replace`` so a killed process never leaves a
half-written artifact that a later stage could mistake for a finished one; the bytes go through one
low-level write (``_raw_write``), and a full disk is a one-line ``ArtifactError`` naming the file.
Fold models are written in data-only formats (``rakuten.safe_io``), never pickled.
"""
from __future__ import annotations

from rakuten.errors import RakutenError
from rakuten.safe_io import LEGACY_SUFFIX, SAFE_SUFFIXES, serialize_model

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np


class ArtifactError(RakutenError, RuntimeError):
    """An artifact is missing, truncated, stale or inconsistent with its siblings."""


# A full or failing disk: the write is abandoned (the temporary file removed, the file there before
# kept) and reported in one line, not as a traceback from deep inside numpy, torch or skops.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically. A write
    that fails for want of space (``DISK_ERRNOS``) raises ``ArtifactError`` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600; artifacts get the usual permissions (0644 under umask 022)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        raise ArtifactError(f"{path}: not written ({e.strerror or os.strerror(e.errno)}); "
                            "the file there before, if any, is unchanged") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _raw_write(f: io.FileIO, data) -> int:
    """The one low-level write under every ``atomic_open`` (the fault-injection tests replace it with
    one that fails half way, as a full disk does)."""
    return io.FileIO.write(f, data)


class _ArtifactFile(io.FileIO):
    def write(self, data) -> int:
        """Write through ``_raw_write`` (the one low-level write the fault-injection tests replace)."""
        return _raw_write(self, data)


@contextmanager
def atomic_open(path: str | Path, suffix: str | None = None) -> Iterator[BinaryIO]:
    """A binary file object (seekable) whose content replaces ``path`` atomically when the block ends."""
    with atomic_path(path, suffix) as tmp:
        with io.BufferedWriter(_ArtifactFile(tmp, "w")) as f:
            yield f


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_open``)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_copy(src: str | Path, dst: str | Path, chunk: int = 1 << 20) -> None:
    """Copy a file's bytes to ``dst`` atomically (a failed copy leaves no partial ``dst``)."""
    with open(src, "rb") as fin, atomic_open(dst) as fout:
        shutil.copyfileobj(fin, fout, chunk)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` to ``path`` as indented JSON with a final newline, atomically; numpy scalars and
    arrays and ``Path`` objects are converted, anything else not serialisable raises ``TypeError``."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_save_npz(path: str | Path, **arrays) -> None:
    """Save ``arrays`` to ``path`` as an uncompressed npz (``np.savez``), atomically."""
    with atomic_open(path, suffix=".npz") as f:
        np.savez(f, **arrays)


def atomic_write_csv(path: str | Path, df, **kwargs) -> None:
    """Write ``df.to_csv(**kwargs)`` to ``path`` atomically, encoded as ``kwargs["encoding"]`` (default UTF-8)."""
    atomic_write_bytes(path, df.to_csv(None, **kwargs).encode(kwargs.get("encoding") or "utf-8"))


def read_json(path: str | Path) -> dict:
    """The parsed JSON file ``path``; a missing, truncated or corrupt file raises ``ArtifactError``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: truncated or corrupt JSON ({e})") from None


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """Short sha256 of a file's bytes: recorded in every meta.json to tie artifacts to a fold file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- OOF files
@dataclass
class Predictions:
    """Predictions of one model on a set of products, keyed by product id."""

    ids: np.ndarray                 # int64 [n]
    logits: np.ndarray              # float32 [n, C]
    embeddings: np.ndarray | None   # float32 [n, D] or None (models with no embedding: TF-IDF, stacker)
    labels: np.ndarray | None = None  # int64 [n] class indices (train folds only)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.logits = np.asarray(self.logits, dtype=np.float32)
        n = len(self.ids)
        if self.logits.ndim != 2 or self.logits.shape[0] != n:
            raise ArtifactError(f"logits shape {self.logits.shape} does not match {n} ids")
        if self.embeddings is not None:
            self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
            if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n:
                raise ArtifactError(f"embeddings shape {self.embeddings.shape} does not match {n} ids")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (n,):
                raise ArtifactError(f"labels shape {self.labels.shape} does not match {n} ids")

    def save(self, path: str | Path) -> None:
        """Write the arrays to the npz ``path`` atomically (``embeddings`` and ``labels`` only when present)."""
        arrays = {"ids": self.ids, "logits": self.logits}
        if self.embeddings is not None:
            arrays["embeddings"] = self.embeddings
        if self.labels is not None:
            arrays["labels"] = self.labels
        atomic_save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        """Read an npz written by ``save``; a missing, truncated or corrupt file, or arrays whose shapes do
        not match, raise ``ArtifactError`` naming ``path``."""
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: missing")
        try:
            with np.load(path) as z:
                return cls(ids=z["ids"], logits=z["logits"],
                           embeddings=z["embeddings"] if "embeddings" in z.files else None,
                           labels=z["labels"] if "labels" in z.files else None)
        except ArtifactError as e:
            raise ArtifactError(f"{path}: {e}") from None
        except Exception as e:  # zipfile.BadZipFile, EOFError, KeyError, ValueError on truncation
            raise ArtifactError(f"{path}: truncated or corrupt ({type(e).__name__}: {e})") from None

    def reindex(self, ids) -> "Predictions":
        """Rows reordered to ``ids``; raises if any id is absent."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = {int(i): k for k, i in enumerate(self.ids)}
        try:
            take = np.fromiter((pos[int(i)] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise ArtifactError(f"product id {e.args[0]} has no prediction") from None
        return Predictions(ids, self.logits[take],
                           None if self.embeddings is None else self.embeddings[take],
                           None if self.labels is None else self.labels[take])

    @staticmethod
    def concat(parts: list["Predictions"]) -> "Predictions":
        """The rows of ``parts`` stacked in order; ``embeddings`` (``labels``) are kept only when every part
        has them."""
        emb = None if any(p.embeddings is None for p in parts) else np.concatenate([p.embeddings for p in parts])
        lab = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
        return Predictions(np.concatenate([p.ids for p in parts]), np.concatenate([p.logits for p in parts]),
                           emb, lab)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` [n, C] (max-shifted for stability): probabilities [n, C]."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Experiment:
    """Handle on ``oof/<name>/``: where each file goes, and readers that validate what they read."""

    def __init__(self, root: str | Path, name: str):
        self.name = name
        self.dir = Path(root) / name

    def oof_path(self, fold: int) -> Path:
        """Fold ``fold``'s out-of-fold predictions: ``fold<k>.npz``."""
        return self.dir / f"fold{fold}.npz"

    def test_path(self, fold: int) -> Path:
        """The fold-``fold`` model's test predictions: ``test_fold<k>.npz``."""
        return self.dir / f"test_fold{fold}.npz"

    def summary_path(self, fold: int) -> Path:
        """Fold ``fold``'s per-epoch training log: ``summary_fold<k>.csv``."""
        return self.dir / f"summary_fold{fold}.csv"

    def checkpoint_path(self, fold: int) -> Path:
        """Fold ``fold``'s last epoch checkpoint: ``checkpoints/fold<k>_last.pt``."""
        return self.dir / "checkpoints" / f"fold{fold}_last.pt"

    def model_path(self, fold: int, ext: str) -> Path:
        """Fold k's final model, ``ext`` one of ``safe_io``'s formats without the dot (``pt``: torch
        weights, ``skops``: scikit-learn objects, ``lgbm.txt``: a LightGBM booster; ``joblib``: the
        pickles of runs made before): kept after the run so that ``export.py`` can bundle it."""
        return self.dir / "models" / f"fold{fold}.{ext}"

    def model_file(self, fold: int) -> Path | None:
        """The saved model of fold ``fold`` (a data-only format first, a legacy pickle last), or None."""
        for suffix in (*SAFE_SUFFIXES, LEGACY_SUFFIX):
            p = self.model_path(fold, suffix[1:])
            if p.exists():
                return p
        return None

    def save_model(self, fold: int, obj, torch_weights: bool = False) -> Path:
        """Write fold ``fold``'s model in its data-only format (``safe_io.serialize_model``), atomically,
        and remove the fold's model files in other formats (a rerun's older save)."""
        suffix, data = serialize_model(obj, torch_weights)
        path = self.model_path(fold, suffix[1:])
        atomic_write_bytes(path, data)
        for other in (*SAFE_SUFFIXES, LEGACY_SUFFIX):
            if other != suffix:
                self.model_path(fold, other[1:]).unlink(missing_ok=True)
        return path

    @property
    def meta_path(self) -> Path:
        """The experiment's ``meta.json``."""
        return self.dir / "meta.json"

    def read_meta(self) -> dict:
        """The parsed ``meta.json`` (``ArtifactError`` when missing or corrupt)."""
        return read_json(self.meta_path)

    def update_meta(self, **fields) -> dict:
        """Merge ``fields`` into meta.json (``folds`` dicts merge per fold) and write it atomically.

        The read-modify-write holds an exclusive ``flock`` on ``meta.json.lock``: folds of one
        experiment running in parallel (``launch.py``, one process per GPU) each add their own entry,
        and without the lock two writers that read the same old file would drop one another's fold.
        The lock file is never removed (removing it would let two writers lock different inodes).
        """
        try:
            # optional: fcntl is POSIX only
            import fcntl
        except ImportError:  # not POSIX (Windows): parallel folds are not supported there
            fcntl = None
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "meta.json.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                meta = self.read_meta() if self.meta_path.exists() else {}
                for k, v in fields.items():
                    if k == "folds" and isinstance(v, dict):
                        meta.setdefault("folds", {}).update({str(f): s for f, s in v.items()})
                    else:
                        meta[k] = v
                atomic_write_json(self.meta_path, meta)
            finally:
                if fcntl is not None:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        return meta

    def fold_done(self, fold: int, fold_hash: str | None = None) -> bool:
        """A fold is done when both npz files load and meta.json records its score on this fold file."""
        if not (self.oof_path(fold).exists() and self.test_path(fold).exists() and self.meta_path.exists()):
            return False
        try:
            meta = self.read_meta()
            Predictions.load(self.oof_path(fold))
            Predictions.load(self.test_path(fold))
        except ArtifactError:
            return False
        if fold_hash is not None and meta.get("fold_hash") != fold_hash:
            return False
        return str(fold) in meta.get("folds", {})

    def load_oof(self, folds_df) -> Predictions:
        """Assemble the OOF predictions over every fold of ``folds_df`` (columns id, label, fold).

        Checks that every train id appears exactly once across the folds, that each fold file holds
        exactly that fold's ids, and that the stored labels agree with the fold file.
        """
        parts = []
        for k in sorted(folds_df["fold"].unique()):
            p = Predictions.load(self.oof_path(int(k)))
            want = folds_df.loc[folds_df["fold"] == k, "id"].to_numpy(np.int64)
            if len(p.ids) != len(want) or set(p.ids.tolist()) != set(want.tolist()):
                raise ArtifactError(f"{self.oof_path(int(k))}: ids differ from fold {k} of the fold file")
            parts.append(p)
        oof = Predictions.concat(parts)
        if len(np.unique(oof.ids)) != len(oof.ids):
            raise ArtifactError(f"{self.name}: a train id appears in more than one fold")
        oof = oof.reindex(folds_df["id"].to_numpy(np.int64))
        if oof.labels is not None and not np.array_equal(oof.labels, folds_df["label"].to_numpy(np.int64)):
            raise ArtifactError(f"{self.name}: stored labels disagree with the fold file")
        return oof

    def load_test(self, folds: list[int], ids=None, average: str = "logits") -> Predictions:
        """Bagged test prediction: the mean over fold models (of logits, or of probabilities)."""
        preds = [Predictions.load(self.test_path(k)) for k in folds]
        ref = preds[0].ids if ids is None else np.asarray(ids, dtype=np.int64)
        preds = [p.reindex(ref) for p in preds]
        if average == "probs":
            logits = np.log(np.mean([softmax(p.logits) for p in preds], axis=0) + 1e-12)
        else:
            logits = np.mean([p.logits for p in preds], axis=0)
        emb = None if preds[0].embeddings is None else np.mean([p.embeddings for p in preds], axis=0)
        return Predictions(ref, logits, emb)
