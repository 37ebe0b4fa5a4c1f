"""What every second-level stage (fusion, stacker, bias tuning) reads: upstream OOF artifacts on one fold file.

A second-level model learns only from out-of-fold outputs, on the same folds as the models that made
them. This module loads those outputs, refuses to mix experiments made on different fold files, and
holds the bookkeeping shared by the fusion and stacking stages (per-fold artifact writes, meta.json;
the config hash and upstream signatures are ``rakuten.lineage``'s).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten.artifacts import ArtifactError, Experiment, Predictions, atomic_write_json
from rakuten.config import ConfigError
from rakuten.folds import inner_split  # noqa: F401  (inner_split: re-exported)
from rakuten.lineage import (complete_oof, fold_file, note, recorded_config, redo_reason, upstream_signature,
                             workdir_relative)
from rakuten.labels import NUM_CLASSES
from rakuten.metrics import scores
from rakuten.paths import Paths

log = logging.getLogger(__name__)


@dataclass
class Upstream:
    """One upstream experiment: OOF rows in fold-file order, test predictions per fold model."""

    name: str
    meta: dict
    oof: Predictions                   # rows ordered as the fold file
    test: dict[int, Predictions]       # fold k -> test_fold<k>, rows ordered as ``test_ids``

    @property
    def has_embeddings(self) -> bool:
        """Whether the experiment wrote embeddings (a TF-IDF member has none)."""
        return self.oof.embeddings is not None

    def test_input(self, fold: int, mode: str) -> Predictions:
        """The test rows fold ``fold``'s second-level model is applied to.

        ``per_fold``: the upstream fold-``fold`` model's own test output. That model produced the
        fold-``fold`` OOF rows this second-level model is scored on, so test inputs follow the same
        distribution as the scored OOF inputs (same model, same confidence, same embedding space).
        ``averaged``: the mean over upstream fold models (logits and embeddings); smoother inputs than
        any row seen in training, and averaging embeddings of independently trained models is only
        meaningful when their spaces are aligned (fine-tuned from one checkpoint).
        """
        if mode == "per_fold":
            return self.test[fold]
        parts = list(self.test.values())
        logits = fold_test_input({k: p.logits for k, p in self.test.items()}, fold, mode)
        emb = None if parts[0].embeddings is None else np.mean([p.embeddings for p in parts], axis=0)
        return Predictions(parts[0].ids, logits, emb)


def fold_test_input(per_fold: dict[int, np.ndarray], fold: int, mode: str) -> np.ndarray:
    """The upstream logits fold ``fold``'s second-level model reads on test rows or new products
    (``per_fold``: the upstream fold-``fold`` model's; ``averaged``: the mean over its fold models,
    in fold order). ``Upstream.test_input`` and a bundle both take it from here."""
    if mode == "per_fold":
        return per_fold[fold]
    if mode == "averaged":
        return np.mean([per_fold[k] for k in sorted(per_fold)], axis=0)
    raise ConfigError(f"test_input must be per_fold or averaged (got {mode!r})")


@dataclass
class SecondLevelData:
    """Upstream OOF + test predictions, aligned on product ids, and the fold file they share."""

    fold_file: Path
    fold_hash: str
    folds_df: pd.DataFrame             # id, label, fold
    test_ids: np.ndarray               # int64 [T]
    inputs: dict[str, Upstream] = field(default_factory=dict)

    @property
    def ids(self) -> np.ndarray:
        """Product ids of the training rows, in fold-file order."""
        return self.folds_df["id"].to_numpy(np.int64)

    @property
    def y(self) -> np.ndarray:
        """Class indices of the training rows, in fold-file order."""
        return self.folds_df["label"].to_numpy(np.int64)

    @property
    def fold(self) -> np.ndarray:
        """The fold of each training row."""
        return self.folds_df["fold"].to_numpy(np.int64)

    @property
    def fold_ids(self) -> list[int]:
        """The fold numbers, sorted."""
        return sorted(int(k) for k in np.unique(self.fold))


def load_upstreams(paths: Paths, cfg, names: list[str], need_embeddings: tuple[str, ...] = ()) -> SecondLevelData:
    """Load every named experiment's OOF and per-fold test predictions on the config's fold file.

    Refuses experiments whose meta.json records another fold hash (their OOF rows would have been
    predicted by models that saw this fold file's held-out rows) and experiments with missing folds.
    """
    if not names:
        raise ConfigError(f"{cfg.get('name', '?')}: no upstream experiments named")
    if len(set(names)) != len(names):
        raise ConfigError(f"{cfg.get('name', '?')}: an upstream experiment is named twice ({names})")
    fpath, folds_df, fhash = fold_file(paths, cfg)
    fold_ids = sorted(int(k) for k in folds_df["fold"].unique())
    hashes = {}
    for name in names:
        exp = Experiment(paths.oof_dir, name)
        if not exp.meta_path.exists():
            raise ArtifactError(f"{name}: no {exp.meta_path} (run the experiment first)")
        hashes[name] = exp.read_meta().get("fold_hash")
    distinct = sorted(set(map(str, hashes.values())))
    if len(distinct) > 1:
        raise ArtifactError("refusing to combine experiments made on different fold files: "
                            + ", ".join(f"{n}={h}" for n, h in hashes.items()))
    if distinct[0] != fhash:
        raise ArtifactError(f"upstream experiments were made on fold hash {distinct[0]}, but {fpath.name} "
                            f"hashes to {fhash}; rerun them on the current fold file")
    data = SecondLevelData(fpath, fhash, folds_df.reset_index(drop=True), np.zeros(0, np.int64))
    test_ids = None
    for name in names:
        exp = Experiment(paths.oof_dir, name)
        oof = complete_oof(exp, data.folds_df, fhash)
        if name in need_embeddings and oof.embeddings is None:
            raise ArtifactError(f"{name}: has no embeddings (e.g. TF-IDF); it can be stacked or late-fused, "
                                "not embedding-fused")
        if oof.logits.shape[1] != NUM_CLASSES:
            raise ArtifactError(f"{name}: logits have {oof.logits.shape[1]} columns, expected {NUM_CLASSES}")
        tests = {}
        for k in fold_ids:
            t = Predictions.load(exp.test_path(k))
            if test_ids is None:
                test_ids = t.ids.copy()
            elif len(t.ids) != len(test_ids) or set(t.ids.tolist()) != set(test_ids.tolist()):
                raise ArtifactError(f"{exp.test_path(k)}: test ids differ from those of {names[0]}")
            tests[k] = t.reindex(test_ids)
        data.inputs[name] = Upstream(name, exp.read_meta(), oof, tests)
    data.test_ids = test_ids
    return data


# ------------------------------------------------------------------------------ artifact bookkeeping
def open_experiment(paths: Paths, cfg, kind: str, data: SecondLevelData, chash: str, extra: dict) -> Experiment:
    """Create or reuse ``oof/<name>/``; a changed config or fold file starts the per-fold record afresh."""
    exp = Experiment(paths.oof_dir, cfg["name"])
    sig = upstream_signature(paths, list(data.inputs))
    base = {"name": cfg["name"], "kind": kind, "config": recorded_config(paths, cfg),
            "config_hash": chash, "fold_file": workdir_relative(paths, data.fold_file), "fold_hash": data.fold_hash,
            "upstream": {n: {"fold_hash": u.meta.get("fold_hash"), "kind": u.meta.get("kind"), "signature": sig[n]}
                         for n, u in data.inputs.items()}, **extra}
    old = exp.read_meta() if exp.meta_path.exists() else None
    exp.pending_meta = None
    if old is not None and old.get("config_hash") == chash and old.get("fold_hash") == data.fold_hash:
        if _plain({k: v for k, v in old.items() if k in base}) != _plain(base):   # a reuse writes nothing
            exp.update_meta(**{k: v for k, v in base.items() if k != "folds"})
    else:
        if old is not None:
            note(exp.name, "redone", redo_reason(old, cfg, fold_hash=data.fold_hash, config_hash_now=chash,
                                                 upstream=sig) or "its record is incomplete")
        # Written by the first save_fold, once a new fold has been computed: a run that fails before
        # (a bad fold, a crash in the first fit) leaves the finished experiment as it was.
        exp.pending_meta = {**base, "folds": {}}
    return exp


def _plain(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def fold_is_current(exp: Experiment, fold: int, fold_hash: str, chash: str) -> bool:
    """Whether fold ``fold`` is done on this fold file under config hash ``chash`` (a reuse is noted)."""
    if not exp.fold_done(fold, fold_hash):
        return False
    current = exp.read_meta().get("config_hash") == chash
    if current:
        note(exp.name, "reused")
    return current


def save_fold(exp: Experiment, fold: int, oof: Predictions, test: Predictions, fold_scores: dict) -> None:
    """Both npz files first, the meta record last: a fold counts as done only once all three exist.

    The fresh meta.json of a changed config (``open_experiment``) replaces the old one first, so the
    old record never vouches for a new fold file."""
    pending = getattr(exp, "pending_meta", None)
    if pending is not None:
        atomic_write_json(exp.meta_path, pending)
        exp.pending_meta = None
    oof.save(exp.oof_path(fold))
    test.save(exp.test_path(fold))
    exp.update_meta(folds={fold: fold_scores})
    note(exp.name, "new")


def finish_experiment(exp: Experiment, data: SecondLevelData) -> dict | None:
    """OOF scores over every fold once all are done (written to meta.json as ``oof``), else None."""
    if getattr(exp, "pending_meta", None) is not None:
        return None     # nothing computed under the new config: the old record is not this one's
    if not all(exp.fold_done(k, data.fold_hash) for k in data.fold_ids):
        return None
    oof = exp.load_oof(data.folds_df)
    s = scores(data.y, oof.logits)
    exp.update_meta(oof=s)
    return s
