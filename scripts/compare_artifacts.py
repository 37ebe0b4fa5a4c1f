#!/usr/bin/env python
"""Compare the artifacts of two pipeline workdirs file by file: folds/, oof/, submissions/.

    python scripts/compare_artifacts.py /work/baseline/demo /tmp/run2

Prints every file that is only on one side or differs; for JSON and YAML files, the keys whose values
differ (dotted paths). Exit 0 when nothing differs beyond what two identical runs differ in (the
IGNORED lists below), else 1.

Files are compared byte for byte first; only a file whose bytes differ is compared by content:
JSON/YAML by value with each workdir's own path replaced by ``<workdir>`` (meta.json and the fold
sidecar record absolute paths, so two workdirs never agree byte for byte), ``.pt`` checkpoints by
their loaded tensors, ``.joblib`` models by their re-pickled objects, SQLite studies by their rows.
Standard library only, except torch / joblib for the files that need them (the project's venv).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sqlite3
import sys
from pathlib import Path

DIRS = ("folds", "oof", "submissions")

# What two runs of the same commit differ in (learned from /work/baseline/demo vs demo2: two runs of
# main at a343357 in two workdirs), and why. Nothing else is ignored.
#
# files whose content is who wrote them, compared for presence only: fold locks hold "pid N on HOST"
CONTENT_IGNORED_FILES = ("*.lock",)
# JSON/YAML keys (dotted, fnmatch patterns)
IGNORED_KEYS = (
    "folds.*.seconds",   # meta.json: wall-clock seconds of each fold's fit
    # The demo data is generated anew in each workdir, so its image files' mtimes differ, and the
    # image experiment's data key hashes them (data/prepared.content_fingerprint: name, size,
    # mtime). Everything derived from it differs with it: image_tiny's data_key, the upstream
    # signatures and config_hash of every second level that reads image_tiny, the tuned model's
    # base_signature, and the submission sidecar's artifact signature.
    "data_key",
    "config_hash",
    "upstream.*.signature",
    "tune.base_signature",
    "config.tune.base_signature",
    "artifacts",
)
# meta.json config._source_: the config file's absolute path in the checkout that ran the pipeline
# (/work/main, a helper's worktree); compared from "configs/" on, the file's place in the repository
SOURCE_KEY_SUFFIX = "_source_"
# .hashes.json: {file: [size, mtime_ns, content hash]}; the mtime is when the file was written
HASHES_MTIME_INDEX = 1
# columns of summary_fold<k>.csv that are wall-clock measurements (seconds per epoch)
IGNORED_CSV_COLUMNS = ("seconds",)
# Optuna study.db: trial timestamps; which process ran a trial ("worker": "host:pid"); the study's
# signature (the tuned config's config_hash, see above)
IGNORED_DB_COLUMNS = ("datetime_start", "datetime_complete")
IGNORED_DB_ATTRS = ("worker", "signature")
# attributes of pickled models that are memory addresses: sklearn's TfidfVectorizer keeps
# ``_stop_words_id = id(stop_words)`` to notice a changed list, a different number every process
IGNORED_PICKLE_ATTRS = ("_stop_words_id",)


def files(root: Path) -> set[str]:
    out = set()
    for d in DIRS:
        base = root / d
        if base.exists():
            out |= {str(p.relative_to(root)) for p in base.rglob("*") if p.is_file()}
    return out


def content_ignored(rel: str) -> bool:
    return any(fnmatch.fnmatch(Path(rel).name, pat) for pat in CONTENT_IGNORED_FILES)


def flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def ignored_key(key: str) -> bool:
    return any(fnmatch.fnmatch(key, pat) for pat in IGNORED_KEYS)


def in_repository(value):
    if isinstance(value, str) and "/configs/" in value:
        return value[value.index("/configs/") + 1:]
    return value


def diff_mapping(a, b) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    for f in (fa, fb):
        for k in f:
            if k.endswith(SOURCE_KEY_SUFFIX):
                f[k] = in_repository(f[k])
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>")
                  and not ignored_key(k))


def load_structured(path: Path, root: Path):
    # a workdir's own absolute path (fold_file, data_dir) says where, not what
    text = path.read_text().replace(str(root.resolve()), "<workdir>")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml   # only for .yaml files (best_config.yaml); PyYAML is a project requirement
    return yaml.safe_load(text)


def diff_csv(pa: Path, pb: Path) -> list[str]:
    la, lb = pa.read_text().splitlines(), pb.read_text().splitlines()
    if not la or not lb or la[0] != lb[0] or len(la) != len(lb):
        return ["header or row count"]
    head = la[0].split(",")
    keep = [i for i, c in enumerate(head) if c not in IGNORED_CSV_COLUMNS]
    bad = set()
    for ra, rb in zip(la[1:], lb[1:]):
        ca, cb = ra.split(","), rb.split(",")
        if len(ca) != len(cb):
            return ["row shape"]
        bad |= {head[i] for i in keep if i < len(ca) and ca[i] != cb[i]}
    return sorted(bad)


def diff_db(pa: Path, pb: Path) -> list[str]:
    def dump(p):
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            out = {}
            for (table,) in con.execute("select name from sqlite_master where type='table' order by name"):
                cols = [r[1] for r in con.execute(f"pragma table_info('{table}')")]
                keep = [c for c in cols if c not in IGNORED_DB_COLUMNS]
                sel = ", ".join(f'"{c}"' for c in keep)
                rows = con.execute(f'select {sel} from "{table}"').fetchall()
                if "key" in keep:   # *_user_attributes tables: (…, key, value_json)
                    rows = [r for r in rows if r[keep.index("key")] not in IGNORED_DB_ATTRS]
                out[table] = sorted(map(repr, rows))
            return out
        finally:
            con.close()
    da, db = dump(pa), dump(pb)
    return sorted(t for t in set(da) | set(db) if da.get(t) != db.get(t))


def same_values(x, y, seen: set | None = None) -> bool:
    """Structural equality of loaded checkpoints and models: tensors and arrays exactly, containers
    element-wise, other objects attribute by attribute (less ``IGNORED_PICKLE_ATTRS``). Not pickle
    bytes: a pickle also records which equal strings were one object, which varies run to run."""
    import numpy as np
    seen = set() if seen is None else seen
    if (id(x), id(y)) in seen:
        return True
    seen.add((id(x), id(y)))
    if type(x) is not type(y):
        return False
    if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
        return x.dtype == y.dtype and x.shape == y.shape and bool(sys.modules["torch"].equal(x, y))
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and np.array_equal(x, y)
    if isinstance(x, dict):
        kx = [k for k in x if k not in IGNORED_PICKLE_ATTRS]
        ky = [k for k in y if k not in IGNORED_PICKLE_ATTRS]
        return kx == ky and all(same_values(x[k], y[k], seen) for k in kx)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same_values(u, v, seen) for u, v in zip(x, y))
    if isinstance(x, float):
        return x == y or (x != x and y != y)   # NaN equals NaN here
    if isinstance(x, (set, frozenset, str, bytes, int, complex, bool, type(None))):
        return x == y
    if isinstance(getattr(x, "__dict__", None), dict):
        return same_values(vars(x), vars(y), seen)
    return x == y


def same_checkpoint(pa: Path, pb: Path) -> bool:
    # torch.save names the zip records after the (randomly named) temporary file it wrote: the
    # bytes differ run to run although every tensor is the same
    import torch   # only for .pt files
    return same_values(torch.load(pa, map_location="cpu", weights_only=False),
                       torch.load(pb, map_location="cpu", weights_only=False))


def same_pickled_model(pa: Path, pb: Path) -> bool:
    import joblib   # only for .joblib files
    return same_values(joblib.load(pa), joblib.load(pb))


def compare(a: Path, b: Path) -> list[str]:
    fa, fb = files(a), files(b)
    lines = [f"only in {a}: {f}" for f in sorted(fa - fb)] + [f"only in {b}: {f}" for f in sorted(fb - fa)]
    for f in sorted(fa & fb):
        pa, pb = a / f, b / f
        if content_ignored(f) or pa.read_bytes() == pb.read_bytes():
            continue
        suffix = pa.suffix
        if suffix in (".json", ".yaml", ".yml"):
            da, db = load_structured(pa, a), load_structured(pb, b)
            if pa.name == ".hashes.json":
                da, db = ({k: [x for i, x in enumerate(v) if i != HASHES_MTIME_INDEX] for k, v in d.items()}
                          for d in (da, db))
            keys = diff_mapping(da, db)
            if keys:
                lines.append(f"differs: {f}: keys {', '.join(keys)}")
        elif suffix == ".csv" and f.split("/")[-1].startswith("summary_fold"):
            cols = diff_csv(pa, pb)
            if cols:
                lines.append(f"differs: {f}: columns {', '.join(cols)}")
        elif suffix == ".pt":
            if not same_checkpoint(pa, pb):
                lines.append(f"differs: {f}: tensors or values")
        elif suffix == ".joblib":
            if not same_pickled_model(pa, pb):
                lines.append(f"differs: {f}: model content")
        elif suffix == ".db":
            tables = diff_db(pa, pb)
            if tables:
                lines.append(f"differs: {f}: tables {', '.join(tables)}")
        else:
            lines.append(f"differs: {f}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    for d in (args.a, args.b):
        if not d.is_dir():
            print(f"error: {d}: not a directory", file=sys.stderr)
            return 2
    lines = compare(args.a, args.b)
    n = len(files(args.a) | files(args.b))
    for line in lines:
        print(line)
    print(f"{n} files compared under {', '.join(DIRS)}: {len(lines)} differ" if lines
          else f"{n} files compared under {', '.join(DIRS)}: identical (up to the ignored run-to-run fields)")
    return 1 if lines else 0


if __name__ == "__main__":
    raise SystemExit(main())
