"""Arguments shared by every stage script, and the one-line error exit they all use."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rakuten.errors import RakutenError
from rakuten.paths import Paths

# Tokenizers' Rust thread pool deadlocks after fork (DataLoader workers); set before any import of it.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads (torch, LightGBM) spin while waiting by default; on 2 shared cores that spinning
# starves the other thread (the demo stack: 92 s spinning vs 17 s passive). Every stage script imports
# this module before torch or lightgbm, so the setting takes effect.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--workdir``, ``--data-dir`` and ``-v/--verbose`` to ``p``; returns ``p``."""
    p.add_argument("--workdir", default=None,
                   help="folder that holds folds/, oof/, submissions/ and cache/ (default: the repository)")
    p.add_argument("--data-dir", default=None,
                   help="raw challenge files (X_train_update.csv ... or X_train.tsv ...); "
                        "default: the generated demo data in <workdir>/data/demo")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def quiet_progress(no_progress: bool) -> None:
    """``--no-progress`` for the libraries too: transformers 5 draws a "Loading weights" bar on every
    model load, and hub downloads draw theirs. Both read this variable when they are first imported,
    which in the stage scripts happens after argument parsing."""
    if no_progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        if "transformers" in sys.modules:  # imported already: switch it off directly
            sys.modules["transformers"].utils.logging.disable_progress_bar()


def paths_from_args(args, writable: bool = True) -> Paths:
    """The script's Paths, checked before any work: the workdir must be a folder (or not exist yet)
    and, for a stage that writes, writable -- else one line, not a traceback from deep inside."""
    paths = Paths.make(args.workdir, args.data_dir)
    check_workdir(paths.workdir, writable)
    return paths


def check_workdir(workdir, writable: bool = True) -> None:
    """Raise a one-line ``RakutenError`` when ``workdir`` is a file or, with ``writable``, when a file
    cannot be created in it (its nearest existing parent if it does not exist yet) or in its existing
    ``folds``, ``oof``, ``submissions`` or ``cache`` folder."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise RakutenError(f"--workdir {workdir} is a file, not a folder")
    if not writable:
        return
    # the folder the stage writes into first: the workdir, or its nearest existing parent
    probe_dirs = [workdir] if workdir.exists() else [next(p for p in workdir.parents if p.exists())]
    probe_dirs += [workdir / d for d in ("folds", "oof", "submissions", "cache") if (workdir / d).is_dir()]
    for d in probe_dirs:
        # a real write, not os.access: root passes os.access on a read-only mount or immutable folder
        try:
            fd, tmp = tempfile.mkstemp(prefix=".write_check.", dir=d)
        except OSError as e:
            raise RakutenError(f"--workdir {workdir}: cannot write in {d} ({e.strerror})") from None
        os.close(fd)
        os.unlink(tmp)


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger (``logging.basicConfig``: no effect when it already has handlers): DEBUG
    with ``verbose``, else INFO, each line with time, level and logger name."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


@contextmanager
def one_line_errors():
    """Expected failures (bad data, bad config, missing artifacts) exit 2 with one line on stderr."""
    try:
        yield
    except RakutenError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        # the file system refused (a read-only or misplaced file): the file and the reason in one line
        where = e.filename if e.filename is not None else ""
        print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)


def parse_fold_arg(value: str | None, k: int | None = None, flag: str = "--fold") -> list[int] | None:
    """``--fold`` (or ``flag``): an index, a comma list, or 'all' or no value (``None`` when ``k`` is
    unknown, else 0..k-1); with ``k``, an index outside 0..k-1 is an error (without it, the caller
    checks the range against its fold file)."""
    if value is None or value == "all":
        return None if k is None else list(range(k))
    try:
        folds = [int(v) for v in value.split(",")]
    except ValueError:
        raise RakutenError(f"{flag} must be an integer, a comma list or 'all' (got {value!r})") from None
    bad = [f for f in folds if k is not None and not 0 <= f < k]
    if bad:
        raise RakutenError(f"{flag} {bad[0]} is outside 0..{k - 1}")
    return folds


def print_fold_results(res: dict, header: str, seconds: float) -> None:
    """The summary block fuse.py and stack.py print: per-fold scores, skipped folds, OOF."""
    print(f"***** {header} *****")
    for k, s in sorted(res["folds"].items()):
        print(f"  fold {k}: macro-F1 {s['macro_f1']:.4f}  weighted-F1 {s['weighted_f1']:.4f}  acc {s['accuracy']:.4f}")
    if res["skipped"]:
        print(f"  skipped (already done): folds {', '.join(map(str, res['skipped']))}")
    if res["oof"]:
        o = res["oof"]
        print(f"  OOF: macro-F1 {o['macro_f1']:.4f}  weighted-F1 {o['weighted_f1']:.4f}  acc {o['accuracy']:.4f}")
    print(f"  {res['dir']}  ({seconds:.1f}s)")
