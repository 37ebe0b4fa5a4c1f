"""Lineage: what every artifact was made from, and why one is reused or redone.

One place for what decides reuse:

- ``config_hash``: the resolved config less its name, tuning space and speed-only keys (plus, for a
  second-level model, its upstream signatures and fold hash), for every artifact kind;
- ``fold_file``: the one lookup of a fold file, by a config's ``folds: {k, seed}`` or by what an
  experiment's meta.json records (its name inside ``folds/``, so a copied workdir finds its own);
- ``artifact_signature`` / ``upstream_signature`` / ``lineage_problem``: content hashes of upstream
  artifacts, checked at any depth;
- ``redo_reason``: one line saying what changed between an artifact's record and the current inputs;
- the run ledger: each stage notes which artifacts it reused or redid (and why), and ``run_all``
  prints a per-stage summary.

Paths written into artifacts are relative to the workdir (``workdir_relative``), so a copied
workdir is self-contained. This module reads artifacts only; it imports no training or
second-level code (the reports import it).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pandas as pd

from rakuten.artifacts import ArtifactError, Experiment, atomic_write_json, file_hash
from rakuten.folds import folds_path, read_folds
from rakuten.paths import Paths

# Keys that change how fast a run goes, not what it computes: editing them keeps the artifacts valid.
RUNTIME_KEYS = {"train": ("num_workers", "device", "checkpoint", "eval_batch_size", "compile", "compile_dynamic"),
                "data": ("pad_to_multiple_of", "packing")}
# Not part of what an artifact computes: its name is its folder, ``tune`` is the search space (and the
# base signature a ``_tuned`` config records), ``_source_`` where the YAML was read from.
NOT_HASHED = ("_source_", "name", "tune")
HASH_LEN = 16


# Keys added after artifacts existed, each with the test of the value that means "as before the key
# existed" (a switch that is off, the rule that was hard-wired): at that value the key is left out of
# the hash, so adding it kept every earlier artifact valid. A new such key is one line here.
AS_BEFORE = {
    ("data", "label_issues"): lambda v: not (v or {}).get("file"),
    ("train", "pseudo_labels"): lambda v: not (v or {}).get("from"),
    ("predict",): lambda v: list((v or {}).get("tta") or ["identity"]) == ["identity"],
    ("loss", "class_weights"): lambda v: v == "frequency",
}


def hashed_view(cfg) -> dict:
    """The part of a config an artifact's hash covers, as a plain dict."""
    d = copy.deepcopy(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    for k in NOT_HASHED:
        d.pop(k, None)
    for sec, keys in RUNTIME_KEYS.items():
        for k in keys:
            if isinstance(d.get(sec), dict):
                d[sec].pop(k, None)
    for path, as_before in AS_BEFORE.items():
        parent = d
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent and as_before(parent[path[-1]]):
            parent.pop(path[-1])
    return d


def issues_path(cfg, paths) -> Path | None:
    """The label-issue file an experiment cleans its training rows with (under the workdir), or None."""
    f = (cfg.data.get("label_issues") or {}).get("file")
    if not f:
        return None
    p = Path(f)
    return p if p.is_absolute() else paths.workdir / p


def input_signature(cfg, paths) -> dict:
    """Hashes of the files the two switches of ``training.cleaning`` read, and of a fine-tuned feature
    source's fold outputs, for the config hash: a regenerated label_issues.csv, a retrained
    pseudo-label source or a retrained encoder invalidates the artifacts built on it."""
    sig = {}
    p = issues_path(cfg, paths)
    if p is not None:
        sig["label_issues"] = file_hash(p) if p.exists() else "missing"
    pl = cfg.train.get("pseudo_labels") or {}
    if pl.get("from"):
        exp = Experiment(paths.oof_dir, pl["from"])
        sig["pseudo_labels"] = {p.name: file_hash(p) for p in sorted(exp.dir.glob("test_fold*.npz"))}
    # a fine-tuned experiment whose embeddings a TF-IDF or kNN member reads: its retrained folds
    # change those embeddings (a frozen source's are fixed by its config, hashed already)
    src = ((cfg.get("tfidf") or {}).get("dense") or {}).get("experiment") if cfg.get("kind") == "tfidf" else \
        (cfg.get("knn") or {}).get("features") if cfg.get("kind") == "knn" else None
    if src and src != "tfidf":
        exp = Experiment(paths.oof_dir, src)
        rec = (exp.read_meta().get("config") or {}) if exp.meta_path.exists() else {}
        if rec.get("kind") in ("text", "image") and not (rec.get("model") or {}).get("freeze_backbone"):
            sig["features"] = {p.name: file_hash(p) for p in sorted(exp.dir.glob("test_fold*.npz"))}
    return sig


def config_hash(cfg, paths: Paths | None = None, *, extra: dict | None = None) -> str:
    """The one config hash of every artifact. ``paths`` (unimodal): the hashes of the files an
    enabled switch reads (label_issues.csv, the pseudo-label source) are added, so regenerating one
    invalidates what was built on it. ``extra`` (second level): upstream signatures and fold hash."""
    d = hashed_view(cfg)
    if paths is not None:
        sig = input_signature(cfg, paths)
        if sig:
            d["_inputs_"] = sig
    if extra:
        d["_extra_"] = extra
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:HASH_LEN]


def config_changes(old: dict | None, new) -> list[str]:
    """Dotted keys whose value differs between a recorded config and ``new`` (hashed part only)."""
    if not isinstance(old, dict):
        return []
    a, b = hashed_view(old), hashed_view(new)
    out: list[str] = []

    def walk(x, y, prefix):
        for k in sorted(set(x) | set(y), key=str):
            key = f"{prefix}{k}"
            vx, vy = x.get(k), y.get(k)
            if isinstance(vx, dict) and isinstance(vy, dict):
                walk(vx, vy, key + ".")
            elif json.dumps(vx, sort_keys=True, default=str) != json.dumps(vy, sort_keys=True, default=str):
                out.append(key)
    walk(a, b, "")
    return out


# ------------------------------------------------------------------------------------------ paths
def workdir_relative(paths: Paths, p: str | Path) -> str:
    """``p`` relative to the workdir when it lies inside it (what artifacts record), else as given."""
    p = Path(p)
    try:
        return Path(p).resolve().relative_to(paths.workdir.resolve()).as_posix()
    except ValueError:
        return str(p)


def recorded_config(paths: Paths, cfg) -> dict:
    """The config as meta.json records it: ``_source_`` relative when the YAML lies in the workdir
    (a ``best_config.yaml``)."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    if d.get("_source_"):
        d["_source_"] = workdir_relative(paths, d["_source_"])
    return d


def fold_file(paths: Paths, of) -> tuple[Path, pd.DataFrame, str]:
    """(path, table, hash) of the fold file of ``of``: a config (its ``folds: {k, seed}``) or an
    :class:`Experiment` (the file its meta.json names, looked up by name in this workdir's ``folds/``,
    and checked against the hash it records). The only fold-file lookup of the project."""
    if isinstance(of, Experiment):
        meta = of.read_meta()
        recorded = meta.get("fold_file")
        path = None
        if recorded:
            for cand in (paths.folds_dir / Path(recorded).name, paths.workdir / recorded):
                if cand.is_file():
                    path = cand
                    break
        if path is None:
            raise ArtifactError(f"{of.dir}: fold file {recorded!r} of meta.json not found in {paths.folds_dir}")
        h = file_hash(path)
        if meta.get("fold_hash") and meta["fold_hash"] != h:
            raise ArtifactError(f"{of.name}: made on fold file hash {meta['fold_hash']}, but {path.name} now "
                                f"hashes to {h}; rerun the experiment")
        return path, read_folds(path), h
    path = folds_path(paths.folds_dir, int(of["folds"]["k"]), int(of["folds"]["seed"]))
    df = read_folds(path)
    return path, df, file_hash(path)


def check_complete(exp: Experiment, fold_ids: list[int], fold_hash: str) -> None:
    """Raise ArtifactError unless every fold of ``fold_ids`` is done on fold hash ``fhash``."""
    missing = [k for k in fold_ids if not exp.fold_done(k, fold_hash)]
    if missing:
        raise ArtifactError(f"{exp.name}: fold(s) {', '.join(map(str, missing))} not finished on this fold "
                            f"file (hash {fold_hash}); run them first")


def complete_oof(exp: Experiment, folds_df: pd.DataFrame, fhash: str):
    """The OOF predictions (``Predictions``) of ``exp`` in ``folds_df``'s row order, after checking
    that every fold of that fold table is done on fold hash ``fhash``."""
    check_complete(exp, sorted(int(k) for k in folds_df["fold"].unique()), fhash)
    return exp.load_oof(folds_df)


def finished_oof(paths: Paths, exp: Experiment):
    """(fold file path, fold table, fold hash, OOF ``Predictions``) of a finished experiment: the one
    reader of a finished experiment's out-of-fold outputs (leaderboard, submission, selection, bias
    tuning, label-issue search; the second level reads its inputs through ``complete_oof``)."""
    fpath, folds_df, fhash = fold_file(paths, exp)
    return fpath, folds_df, fhash, complete_oof(exp, folds_df, fhash)


# ------------------------------------------------------------------------------------- signatures
def upstream_signature(paths: Paths, names: list[str]) -> dict:
    """Content hash of each named experiment's artifacts (``artifact_signature``)."""
    return {name: artifact_signature(Experiment(paths.oof_dir, name)) for name in names}


def artifact_signature(exp: Experiment) -> str:
    """One digest over the sha256 of every ``fold*.npz`` / ``test_fold*.npz`` and the meta.json fields
    that define the experiment (config, fold file and data fingerprint hashes): a rerun upstream whose
    outputs changed invalidates what was built on it; one that wrote the same bytes again does not.
    File hashes are cached in ``.hashes.json`` keyed by size and mtime, so a check does not re-read
    GBs of embeddings."""
    files = sorted(list(exp.dir.glob("fold*.npz")) + list(exp.dir.glob("test_fold*.npz")))
    cache_path = exp.dir / ".hashes.json"
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except (OSError, ValueError):
        cache = {}
    h = hashlib.sha256()
    fresh = {}
    for f in files:
        st = f.stat()
        c = cache.get(f.name)
        if not (isinstance(c, list) and c[:2] == [st.st_size, st.st_mtime_ns]):
            c = [st.st_size, st.st_mtime_ns, file_hash(f)]
        fresh[f.name] = c
        h.update(f"{f.name}:{c[2]}|".encode())
    if exp.meta_path.exists():
        try:
            meta = exp.read_meta()
        except ArtifactError:
            meta = {}
        h.update(json.dumps({k: meta.get(k) for k in ("config_hash", "fold_hash", "data_key")},
                            sort_keys=True).encode())
    if fresh != cache and exp.dir.exists():
        try:
            atomic_write_json(cache_path, fresh)
        except OSError:
            pass          # a read-only upstream: hash again next time
    return h.hexdigest()[:16]


def lineage_problem(paths: Paths, name: str, _seen: dict | None = None) -> str | None:
    """Why ``name`` is stale (an upstream artifact, at any depth, changed since it was built on it),
    or None. Experiments that record no upstream signatures (unimodal ones) are checked at training
    time against their fold file, config and data instead."""
    seen = {} if _seen is None else _seen
    if name in seen:
        return seen[name]
    seen[name] = None
    exp = Experiment(paths.oof_dir, name)
    try:
        meta = exp.read_meta()
    except ArtifactError as e:
        seen[name] = str(e)
        return seen[name]
    for up, rec in (meta.get("upstream") or {}).items():
        want = (rec or {}).get("signature")
        if want is None:
            continue
        if not Experiment(paths.oof_dir, up).meta_path.exists():
            seen[name] = f"its input {up} is gone"
            break
        if artifact_signature(Experiment(paths.oof_dir, up)) != want:
            seen[name] = f"its input {up} changed since it was built (rerun {name})"
            break
        deeper = lineage_problem(paths, up, seen)
        if deeper:
            seen[name] = f"its input {up} is stale: {deeper}"
            break
    return seen[name]


def redo_reason(old: dict, cfg, *, fold_hash: str, config_hash_now: str, data_key: str | None = None,
                upstream: dict | None = None) -> str | None:
    """One line saying why an artifact recorded as ``old`` (its meta.json) is not the one the current
    inputs would make, or None when it is current. Checked in order: fold file, data, upstream
    artifacts, config keys; a hash mismatch with none of these is an artifact of an older version."""
    if old.get("fold_hash") not in (None, fold_hash):
        return "fold file changed"
    if data_key is not None and old.get("data_key") not in (None, data_key):
        return "data changed (ids, labels, or the text or images it reads)"
    if upstream:
        rec = old.get("upstream") or {}
        changed = [n for n, sig in upstream.items() if (rec.get(n) or {}).get("signature") != sig]
        if changed:
            return f"upstream {', '.join(changed)} changed"
    if old.get("config_hash") in (None, config_hash_now):
        return None
    keys = config_changes(old.get("config"), cfg)
    if keys:
        shown = ", ".join(keys[:4]) + (f" +{len(keys) - 4} more" if len(keys) > 4 else "")
        return f"config changed ({shown})"
    view = hashed_view(cfg)
    if (view.get("data") or {}).get("label_issues") or (view.get("train") or {}).get("pseudo_labels"):
        return "an input of its config changed (label issues file or pseudo-label source)"
    return "made by an older version of the code (same config, another config hash)"


# ------------------------------------------------------------------------------------- the ledger
class Ledger:
    """Which artifacts each stage of one run reused, computed new, or redid (and why)."""

    def __init__(self):
        self.stage = "-"
        self.entries: dict[tuple[str, str], dict] = {}

    def note(self, artifact: str, status: str, reason: str | None = None) -> None:
        """Record ``artifact``'s ``status`` (reused, new or redone) in the current stage; noted twice, the
        stronger status wins (reused < new < redone) with its reason."""
        key = (self.stage, artifact)
        cur = self.entries.get(key)
        rank = {"reused": 0, "new": 1, "redone": 2}
        if cur is None or rank[status] > rank[cur["status"]]:
            self.entries[key] = {"status": status, "reason": reason}

    def summary(self) -> list[str]:
        """One text line per stage: its counts of reused / new / redone artifacts and the redone ones' names."""
        by_stage: dict[str, dict[str, list[str]]] = {}
        for (st, art), e in self.entries.items():
            by_stage.setdefault(st, {}).setdefault(e["status"], []).append(art)
        lines = []
        for st, d in by_stage.items():
            parts = [f"{len(d[s])} {s}" for s in ("reused", "new", "redone") if d.get(s)]
            redone = f" ({', '.join(d['redone'])})" if d.get("redone") else ""
            lines.append(f"  {st:12s} {', '.join(parts)}{redone}")
        return lines

    @property
    def redone(self) -> dict[str, str]:
        """``{artifact: reason}`` of every artifact redone, in any stage."""
        return {a: e["reason"] for (_, a), e in self.entries.items() if e["status"] == "redone"}


_LEDGER: Ledger | None = None


def begin_run() -> Ledger:
    """Start the ledger of one ``run_all``: every ``note`` until ``end_run`` is recorded in it."""
    global _LEDGER
    _LEDGER = Ledger()
    return _LEDGER


def end_run(ledger: Ledger) -> dict:
    """Print the per-stage summary, stop recording; returns {artifact: why redone}."""
    global _LEDGER
    print_summary(ledger)
    _LEDGER = None
    return ledger.redone


def set_stage(name: str) -> None:
    """Name the stage under which the run's ledger records the next notes (no-op outside a ``begin_run``)."""
    if _LEDGER is not None:
        _LEDGER.stage = name


def note(artifact: str, status: str, reason: str | None = None) -> None:
    """Record that ``artifact`` was ``reused``, computed ``new`` or ``redone``; a redone one prints
    its reason at once, in one line, from whichever script is running."""
    if status == "redone":
        print(f"  {artifact}: redone because: {reason}", flush=True)
    if _LEDGER is not None:
        _LEDGER.note(artifact, status, reason)


def print_summary(ledger: Ledger) -> None:
    """Print the ledger's per-stage counts of reused / new / redone artifacts, and a 'nothing redone' line
    when every artifact it recorded was reused."""
    print("\nartifacts per stage (reused / new / redone):")
    for line in ledger.summary():
        print(line)
    if ledger.entries and not ledger.redone and all(e["status"] == "reused" for e in ledger.entries.values()):
        print("  nothing redone: every artifact reused")
