"""Prepared data: the cleaned tables of one challenge download, cached under ``<workdir>/cache``.

Reading and cleaning ~100k rows of HTML takes a while; every stage calls :func:`load_dataset`, which
reads the raw files once and afterwards loads the cached Parquet files (keyed by the raw files'
names, sizes and mtimes, so a changed download is re-read).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from rakuten.artifacts import atomic_path, atomic_write_json, read_json, ArtifactError
from rakuten.data.challenge import CD_FILES, SIGIR_FILES, Dataset, DataError, load_challenge, image_dir
from rakuten.labels import LabelMap
from rakuten.paths import Paths

log = logging.getLogger(__name__)


def data_fingerprint(data_dir: Path) -> str:
    """Cache key of a data folder (12 hex characters): a hash of its resolved path, the names, sizes and
    mtimes of the raw files present, and each image folder's mtime and number of entries."""
    h = hashlib.sha256(str(data_dir.resolve()).encode())
    for name in sorted(set(CD_FILES.values()) | set(SIGIR_FILES.values())):
        p = data_dir / name
        if p.exists():
            st = p.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for split in ("train", "test"):
        d = image_dir(data_dir, split)
        if d is not None:
            st = d.stat()
            h.update(f"img_{split}:{st.st_mtime_ns}:{sum(1 for _ in d.iterdir())}".encode())
    return h.hexdigest()[:12]


def resolve_data_dir(paths: Paths) -> Path:
    """``--data-dir`` if given, else the generated demo data inside the workdir."""
    if paths.data_dir is not None:
        return paths.data_dir
    if (paths.demo_data_dir / CD_FILES["x_train"]).exists():
        return paths.demo_data_dir
    raise DataError(f"no --data-dir given and no demo data at {paths.demo_data_dir}: "
                    "run `python src/make_demo_data.py` or `python src/run_all.py --preset demo`")


def load_dataset(paths: Paths, use_cache: bool = True) -> Dataset:
    """The cleaned dataset of ``paths``: from the Parquet cache in ``prepared/<data_fingerprint>`` when
    ``use_cache`` and its ``prepared.json`` (written last) agrees with the tables' row counts (an unusable
    cache is rebuilt with a warning), else read with ``load_challenge`` and cached."""
    data_dir = resolve_data_dir(paths)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: {'is a file, not a' if data_dir.exists() else 'no such'} data directory")
    key = data_fingerprint(data_dir)
    cdir = paths.prepared_dir / key
    meta_path = cdir / "prepared.json"
    if use_cache and meta_path.exists():
        try:
            meta = read_json(meta_path)
            train = pd.read_parquet(cdir / "train.parquet")
            test = pd.read_parquet(cdir / "test.parquet")
            if len(train) == meta["report"]["n_train"] and len(test) == meta["report"]["n_test"]:
                return Dataset(train, test, LabelMap.load(cdir / "label_map.json"), meta["format"],
                               data_dir, meta["report"])
        except (ArtifactError, OSError, KeyError, ValueError) as e:
            log.warning("prepared data in %s unusable (%s); rebuilding", cdir, e)
    ds = load_challenge(data_dir)
    cdir.mkdir(parents=True, exist_ok=True)
    for name, df in (("train", ds.train), ("test", ds.test)):
        with atomic_path(cdir / f"{name}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    ds.label_map.save(cdir / "label_map.json")
    # prepared.json last: its presence marks the cache complete.
    atomic_write_json(meta_path, {"format": ds.fmt, "data_dir": str(data_dir), "report": ds.report})
    return ds


def describe(ds: Dataset) -> str:
    """One line on a dataset: format, folder, train and test rows, images found and missing per split, and
    rows decoded as latin-1."""
    r = ds.report
    rep = r.get("repaired_rows") or {}
    fixed = ("; rows decoded as latin-1 (not UTF-8): " + ", ".join(f"{n} in {f}" for f, n in rep.items())) if rep else ""
    return (f"{ds.fmt} data at {ds.data_dir}: {r['n_train']} train / {r['n_test']} test rows; images found "
            f"{r['train_images_found']} train ({r['train_images_missing']} missing), "
            f"{r['test_images_found']} test ({r['test_images_missing']} missing){fixed}")


def dump_report(ds: Dataset) -> str:
    """``ds.report`` as indented JSON."""
    return json.dumps(ds.report, indent=2)


_CONTENT_KEYS: dict = {}


def content_fingerprint(train: pd.DataFrame, test: pd.DataFrame, fields: tuple[str, ...] = (),
                        images: bool = False) -> str:
    """Hash of what a model learns from: train ids and labels, test ids, the text of ``fields``
    and, with ``images``, every image file's name (within its split folder), size and mtime.

    Unlike :func:`data_fingerprint` (raw files' sizes and mtimes, and the image folders' mtime and
    count), it changes when a text is edited in place with the file size kept, or an image is
    repaired or added; and it does not change when only another modality's input does, so a new image
    does not retrain the text models. Memoised per (tables, fields) within a process.
    """
    memo = (id(train), id(test), len(train), len(test), fields, images)
    if memo in _CONTENT_KEYS:
        return _CONTENT_KEYS[memo]
    h = hashlib.sha256()
    for df, split in ((train, "train"), (test, "test")):
        h.update(f"{split}:{len(df)}".encode())
        h.update(df["id"].to_numpy("int64").tobytes())
        if "label" in df:
            h.update(df["label"].to_numpy("int64").tobytes())
        for f in fields:
            col = df[f].fillna("").astype(str) if f in df else pd.Series([], dtype=str)
            h.update(f"{f}:".encode())
            h.update(pd.util.hash_pandas_object(col, index=False).to_numpy().tobytes())
        if images and "image_path" in df:
            for p in df["image_path"].fillna("").astype(str):
                try:
                    st = Path(p).stat() if p else None
                except OSError:
                    st = None
                # the file's name within its split folder, not its absolute path: a copied or
                # moved workdir / data folder keeps its fingerprint
                rel = "/".join(Path(p).parts[-2:]) if p else ""
                h.update((f"{rel}:{st.st_size}:{st.st_mtime_ns}|" if st else f"{rel}:-|").encode())
    key = h.hexdigest()[:16]
    _CONTENT_KEYS[memo] = key
    return key
