"""What a fold's artifacts are valid for and how they stay safe: the run signature, the
one-fold-file / one-config / one-data check (``--force`` moves the old experiment aside until
the new fold is written), the per-fold lock, and the RNG state and atomic saves of checkpoints.
"""
from __future__ import annotations

import os
import random
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from rakuten.artifacts import ArtifactError, Experiment, atomic_open
from rakuten.errors import RakutenError
from rakuten.lineage import config_hash, note, redo_reason
from rakuten.paths import Paths
from rakuten.training.fold_data import FoldData


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
    """Undo ``check_experiment_folds``'s move after a failed run: put the moved-aside folder ``aside`` back
    as ``exp.dir`` (deleting what the run wrote there); no-op for None or a missing folder."""
    if aside is not None and aside.exists():
        if exp.dir.exists():
            shutil.rmtree(exp.dir)
        aside.rename(exp.dir)


def discard_replaced(aside: Path | None) -> None:
    """Delete the moved-aside old experiment folder ``aside`` once the new fold is written; no-op for None
    or a missing folder."""
    if aside is not None and aside.exists():
        shutil.rmtree(aside)


@contextmanager
def fold_lock(paths: Paths, name: str, fold: int):
    """An exclusive lock per (workdir, experiment, fold): two processes training the same fold
    would both write it, and the later one's OOF would silently replace the other's. The second one
    fails at once with one line instead. The lock files stay (removing one would let two processes
    lock different inodes)."""
    try:
        # optional: fcntl is POSIX only
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


def rng_state() -> dict:
    """The RNG states of python, numpy, torch CPU and (when available) every CUDA device, for
    ``set_rng_state``."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    """Restore the states ``rng_state`` took; the CUDA ones only when saved and CUDA is available."""
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    # through atomic_open's one low-level write: a full disk is a one-line ArtifactError, not
    # torch's "PytorchStreamWriter failed" traceback
    with atomic_open(path, suffix=".pt") as f:
        torch.save(obj, f)
