"""The one submission writer and the one validator, for both editions of the challenge.

ChallengeData (ENS): CSV with header ``,prdtypecode``; first column the X_test row index, one row per
test product, in X_test order. SIGIR eCom'20: TSV with header ``Integer_id, Image_id, Product_id,
Prdtypecode`` (tab-separated), one row per test product, in X_test order.

Files are named ``submissions/<exp>[_bias]_cv<oof macro-F1>.csv|tsv``, written atomically, never
overwritten silently, and validated right after writing (an invalid file is removed).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten.artifacts import ArtifactError, Experiment, atomic_write_csv, atomic_write_json, read_json
from rakuten.data.challenge import Dataset
from rakuten.data.prepared import load_dataset
from rakuten.errors import RakutenError
from rakuten.folds import check_folds_match
from rakuten.lineage import complete_oof, fold_file, note
from rakuten.metrics import scores
from rakuten.paths import Paths

log = logging.getLogger(__name__)

FORMATS = ("challengedata", "sigir")
CD_HEADER = ["", "prdtypecode"]
SIGIR_COLUMNS = ["Integer_id", "Image_id", "Product_id", "Prdtypecode"]
_INT = re.compile(r"^[+-]?\d+$")
_NAN = {"", "nan", "NaN", "NAN", "None", "null", "NULL", "NA", "N/A", "<NA>"}


class SubmissionError(RakutenError, ValueError):
    """A submission file that the challenge would reject; the message is one line."""


def _check_fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise SubmissionError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    return fmt


def submission_path(paths: Paths, exp: str, score: float, fmt: str, tag: str = "") -> Path:
    """``submissions/<exp><tag>_cv<score with 4 decimals>``, ``.csv`` for ChallengeData, ``.tsv`` otherwise."""
    ext = "csv" if fmt == "challengedata" else "tsv"
    return paths.submissions_dir / f"{exp}{tag}_cv{score:.4f}.{ext}"


def write_submission(path: Path, dataset: Dataset, codes, fmt: str | None = None, force: bool = False) -> Path:
    """Write predicted prdtypecodes (aligned with ``dataset.test`` rows) to ``path``, then validate it."""
    fmt = _check_fmt(fmt or dataset.fmt)
    path = Path(path)
    codes = np.asarray(codes, dtype=np.int64)
    test = dataset.test
    if len(codes) != len(test):
        raise SubmissionError(f"{len(codes)} predictions for {len(test)} test rows")
    if path.exists() and not force:
        raise SubmissionError(f"{path} already exists; pass --force (force=True) to overwrite it")
    if fmt == "challengedata":
        df = pd.DataFrame({"prdtypecode": codes}, index=pd.Index(test["row_index"].to_numpy(np.int64)))
        atomic_write_csv(path, df, index=True, index_label="", lineterminator="\n")
    else:
        df = pd.DataFrame({"Integer_id": test["row_index"].to_numpy(np.int64),
                           "Image_id": test["imageid"].to_numpy(np.int64),
                           "Product_id": test["id"].to_numpy(np.int64), "Prdtypecode": codes})
        atomic_write_csv(path, df, index=False, sep="\t", lineterminator="\n")
    try:
        validate_submission(path, dataset, fmt)
    except SubmissionError:
        path.unlink(missing_ok=True)
        raise
    return path


def _rows(text: str, sep: str, n_fields: int, path: Path) -> list[list[str]]:
    out = []
    for i, row in enumerate(csv.reader(io.StringIO(text), delimiter=sep), start=1):
        if i == 1:
            continue
        if not row:
            raise SubmissionError(f"{path.name}: line {i} is empty")
        if len(row) != n_fields:
            raise SubmissionError(f"{path.name}: line {i} has {len(row)} field(s), expected {n_fields} "
                                  f"separated by {'a tab' if sep == chr(9) else 'commas'}")
        out.append(row)
    return out


def _int_field(value: str, what: str, line: int, path: Path) -> int:
    v = value.strip()
    if v in _NAN:
        raise SubmissionError(f"{path.name}: line {line}: {what} is empty or NaN")
    if not _INT.match(v):
        raise SubmissionError(f"{path.name}: line {line}: {what} {value!r} is not an integer")
    return int(v)


def validate_submission(path: str | Path, dataset: Dataset, fmt: str | None = None) -> dict:
    """Check a submission file against the test set; raise SubmissionError (one line) on the first fault.

    Rejects: wrong header/columns or separator, empty/NaN or non-integer values, codes outside the
    27, duplicated, extra or missing test rows, rows out of X_test order; for SIGIR also Image_id /
    Product_id that do not belong to the row's Integer_id.
    """
    fmt = _check_fmt(fmt or dataset.fmt)
    path = Path(path)
    if not path.exists():
        raise SubmissionError(f"{path}: file not found")
    if path.is_dir():
        raise SubmissionError(f"{path}: is a directory, not a submission file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SubmissionError(f"{path.name}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset "
                              f"{e.start}); submissions are UTF-8 CSV") from None
    if "\0" in text:
        raise SubmissionError(f"{path.name}: holds NUL bytes; not a text submission file")
    if not text.strip():
        raise SubmissionError(f"{path.name}: file is empty")
    first = text.splitlines()[0]
    if fmt == "challengedata":
        sep, want = ",", CD_HEADER
    else:
        sep, want = "\t", SIGIR_COLUMNS
    header = next(csv.reader([first], delimiter=sep))
    if header != want:
        other = "\t" if sep == "," else ","
        if next(csv.reader([first], delimiter=other)) == want:
            raise SubmissionError(f"{path.name}: wrong separator: {fmt} submissions are "
                                  f"{'comma' if sep == ',' else 'tab'}-separated")
        shown = ",".join(want) if sep == "," else "\\t".join(want)
        raise SubmissionError(f"{path.name}: header must be {shown!r} (found {first!r})")
    rows = _rows(text, sep, len(want), path)

    label_map = dataset.label_map
    test = dataset.test
    expected = test["row_index"].to_numpy(np.int64)
    got, seen = [], {}
    lookup = None
    if fmt == "sigir":
        ri = expected.tolist()
        lookup = (dict(zip(ri, test["imageid"].to_numpy(np.int64).tolist())),
                  dict(zip(ri, test["id"].to_numpy(np.int64).tolist())))
    for line, row in enumerate(rows, start=2):
        idx = _int_field(row[0], "Integer_id" if fmt == "sigir" else "row index", line, path)
        code = _int_field(row[-1], "prdtypecode", line, path)
        if not label_map.is_known(code):
            raise SubmissionError(f"{path.name}: line {line}: prdtypecode {code} is not one of the "
                                  f"{len(label_map)} codes")
        if idx in seen:
            raise SubmissionError(f"{path.name}: test row {idx} appears twice (lines {seen[idx]} and {line})")
        seen[idx] = line
        got.append(idx)
        if fmt == "sigir":
            _check_sigir_ids(row, idx, line, lookup, path)
    exp_set = set(expected.tolist())
    extra = [i for i in got if i not in exp_set]
    if extra:
        raise SubmissionError(f"{path.name}: {len(extra)} row(s) not in the test set (e.g. index {extra[0]}, "
                              f"line {seen[extra[0]]})")
    missing = sorted(exp_set - set(got))
    if missing:
        raise SubmissionError(f"{path.name}: {len(missing)} test row(s) missing (e.g. index {missing[0]})")
    got = np.asarray(got, dtype=np.int64)
    if not np.array_equal(got, expected):
        i = int(np.flatnonzero(got != expected)[0])
        raise SubmissionError(f"{path.name}: rows are not in X_test order (line {i + 2}: index {got[i]}, "
                              f"expected {expected[i]})")
    return {"path": str(path), "format": fmt, "rows": len(got)}


def _check_sigir_ids(row: list[str], idx: int, line: int, lookup: tuple[dict, dict], path: Path) -> None:
    images, products = lookup
    if idx not in images:
        return  # reported as an extra row once all rows are read
    image = _int_field(row[1], "Image_id", line, path)
    product = _int_field(row[2], "Product_id", line, path)
    if image != images[idx] or product != products[idx]:
        raise SubmissionError(f"{path.name}: line {line}: Image_id/Product_id {image}/{product} do not belong "
                              f"to Integer_id {idx} (expected {images[idx]}/{products[idx]})")


def sidecar_path(path: Path) -> Path:
    """The lineage sidecar of a submission file: its name + ``.json``, beside it (``x.csv`` -> ``x.csv.json``)."""
    return Path(path).with_name(Path(path).name + ".json")


def write_experiment_submission(paths: Paths, exp: str, fmt: str | None = None, biases: dict | None = None,
                                force: bool = False, reuse: bool = False, selection: dict | None = None) -> Path:
    """Bagged test prediction of experiment ``exp`` -> ``submissions/<exp>[_bias]_cv<score>.<ext>``.

    ``biases``: the experiment's per-class logit biases as its caller fitted them (the record
    ``second_level.tuning.tune_biases`` writes: ``biases`` by class index, ``heldout`` scores), added
    to the test logits; ``None`` for none. The score in the name is the OOF macro-F1 recomputed from
    the artifacts; with biases it is the held-out-biased OOF macro-F1 (biases fitted on the other
    folds), not the optimistic in-sample one. ``selection``: how ``exp`` was chosen (its optimistic
    and nested scores), kept in the sidecar.
    """
    ds = load_dataset(paths)
    fmt = _check_fmt(fmt or ds.fmt)
    e = Experiment(paths.oof_dir, exp)
    if not e.meta_path.exists():
        raise SubmissionError(f"{exp}: no {e.meta_path}; run the experiment first")
    fpath, folds_df, fhash = fold_file(paths, e)
    check_folds_match(folds_df, ds.train, fpath)
    fold_ids = sorted(int(k) for k in folds_df["fold"].unique())
    oof = complete_oof(e, folds_df, fhash)
    score = scores(folds_df["label"].to_numpy(np.int64), oof.logits)["macro_f1"]
    # Probabilities, not logits, are averaged: fold models' logits can differ in scale.
    test = e.load_test(fold_ids, ids=ds.test["id"].to_numpy(np.int64), average="probs")
    logits = test.logits.astype(np.float64)
    tag = ""
    bias = biases is not None
    if bias:
        b = biases
        logits = logits + np.asarray(b["biases"])[None, :]
        score = b["heldout"]["oof_after"]["macro_f1"]
        tag = "_bias"
        log.info("%s: biases gain %+.4f macro-F1 on held-out folds", exp, b["heldout"]["mean_gain"])
    codes = ds.label_map.decode(logits.argmax(1))
    path = submission_path(paths, exp, score, fmt, tag)
    # which model this submission is, with the biases added to it: what export.py bundles
    atomic_write_json(paths.submissions_dir / "submitted.json",
                      {"experiment": exp, "bias": bool(bias), "biases": [float(v) for v in b["biases"]] if bias else None,
                       "format": fmt, "submission": path.name})
    # The sidecar ties the file to what made it: the name carries only the experiment and its OOF
    # score, and a change that alters the test predictions but not the OOF would keep the name.
    from rakuten.lineage import artifact_signature
    lineage = {"experiment": exp, "format": fmt, "bias": bool(bias), "artifacts": artifact_signature(e),
               "fold_hash": fhash, "predictions": hashlib.sha256(np.asarray(codes, np.int64).tobytes()).hexdigest()[:16]}
    side = sidecar_path(path)
    if path.exists() and not force and reuse:
        old = None
        try:
            old = read_json(side)
        except ArtifactError:
            pass
        if old is not None and {k: old.get(k) for k in lineage} == lineage:
            validate_submission(path, ds, fmt)
            print(f"  {path.name} exists and validates: reused (its sidecar matches the current predictions)")
            note(path.name, "reused")
            if selection is not None and old.get("selection") != selection:
                atomic_write_json(side, {**lineage, "selection": selection})
            return path
        note(path.name, "redone", "made from other predictions "
             f"({'no sidecar' if old is None else 'its sidecar differs'})")
        force = True
    elif not path.exists():
        note(path.name, "new")
    out = write_submission(path, ds, codes, fmt, force=force)
    atomic_write_json(side, lineage if selection is None else {**lineage, "selection": selection})
    return out
