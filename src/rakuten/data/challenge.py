"""Readers for the challenge's raw files (ChallengeData CSVs and SIGIR eCom'20 TSVs).

Output is a pair of tidy tables keyed by product id (``id`` = ``productid``), with the columns every
later stage uses::

    id, row_index, imageid, title, description, text, has_description, image_path, has_image
    + label (class index 0..26) and code (prdtypecode) on train

Every problem with the input raises :class:`DataError` with one line naming the file and the problem,
before anything is written.
"""
from __future__ import annotations

from rakuten.errors import RakutenError

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten.data.text import clean_text, join_text
from rakuten.labels import LabelMap

log = logging.getLogger(__name__)

CD_FILES = {"x_train": "X_train_update.csv", "y_train": "Y_train_CVw08PX.csv", "x_test": "X_test_update.csv"}
CD_X_COLUMNS = ["designation", "description", "productid", "imageid"]
SIGIR_FILES = {"x_train": "X_train.tsv", "y_train": "Y_train.tsv", "x_test": "X_test.tsv"}
SIGIR_X_COLUMNS = ["Integer_id", "Title", "Description", "Image_id", "Product_id"]
# SIGIR names -> ChallengeData names, so one code path follows.
SIGIR_RENAME = {"Title": "designation", "Description": "description", "Product_id": "productid",
                "Image_id": "imageid", "Prdtypecode": "prdtypecode"}


class DataError(RakutenError, ValueError):
    """Bad input data; the message is one line naming the file and the problem."""


@dataclass
class Dataset:
    """One challenge download, read and cleaned: the ``train`` and ``test`` tables (columns in the module
    docstring), the ``label_map``, the format (``fmt``: challengedata or sigir), the data folder and the
    ``report`` (row, image and missing-description counts, lines decoded as latin-1)."""
    train: pd.DataFrame
    test: pd.DataFrame
    label_map: LabelMap
    fmt: str                      # "challengedata" or "sigir"
    data_dir: Path
    report: dict = field(default_factory=dict)


def detect_format(data_dir: Path) -> str:
    """``"challengedata"`` or ``"sigir"``: whichever edition's X_train file ``data_dir`` holds (ChallengeData
    first); raises ``DataError`` when it holds neither."""
    if (data_dir / CD_FILES["x_train"]).exists():
        return "challengedata"
    if (data_dir / SIGIR_FILES["x_train"]).exists():
        return "sigir"
    raise DataError(f"{data_dir}: no {CD_FILES['x_train']} (ChallengeData) or {SIGIR_FILES['x_train']} "
                    "(SIGIR eCom'20) found")


def _read_table(path: Path, sep: str, index_col) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: is a {'directory' if path.is_dir() else 'special file'}, not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    text, repaired = decode_rows(path)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, index_col=index_col, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None
    df.attrs["repaired_rows"] = len(repaired)
    return df


def decode_rows(path: Path) -> tuple[str, list[int]]:
    """The file's text, decoded as UTF-8 line by line; a line that is not valid UTF-8 (a row pasted
    from a latin-1 export) is decoded as latin-1 on its own. Returns (text, 1-based numbers of the
    repaired lines). Decoding the whole file as latin-1 instead would turn every accented character
    of the UTF-8 rows into mojibake ("Ã©" for "é"). A newline byte never occurs inside a UTF-8
    multi-byte sequence, so splitting on it is safe, quoted multi-line fields included."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    out, repaired = [], []
    for i, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(line.decode("latin-1"))
            repaired.append(i)
    shown = ", ".join(map(str, repaired[:5])) + (" ..." if len(repaired) > 5 else "")
    log.warning("%s: %d line(s) not valid UTF-8, decoded as latin-1 (line %s); the other lines are UTF-8",
                path, len(repaired), shown)
    return "".join(out), repaired


def _require_columns(df: pd.DataFrame, cols: list[str], path: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))})")


def _int_column(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    s = pd.to_numeric(df[col], errors="coerce")
    bad = s.isna() | (s != s.round())
    if bad.any():
        row = df.index[bad.to_numpy()][0]
        raise DataError(f"{path}: row {row}: column {col} is not an integer ({df[col].loc[row]!r})")
    return s.astype(np.int64)


def _read_x(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "challengedata":
        df = _read_table(path, ",", 0)
        repaired = int(df.attrs.get("repaired_rows", 0))
        _require_columns(df, CD_X_COLUMNS, path)
    else:
        df = _read_table(path, "\t", None)
        repaired = int(df.attrs.get("repaired_rows", 0))
        _require_columns(df, SIGIR_X_COLUMNS, path)
        df = df.set_index("Integer_id").rename(columns=SIGIR_RENAME)
    if len(df) == 0:
        # An empty test set would train every fold model only to predict nothing: say so up front.
        raise DataError(f"{path}: header only, no data rows")
    if df.index.has_duplicates:
        dup = df.index[df.index.duplicated()][0]
        raise DataError(f"{path}: duplicate row index {dup}")
    try:
        df.index = df.index.astype(np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: the row index is not integer") from None
    out = pd.DataFrame(index=df.index)
    out["id"] = _int_column(df, "productid", path)
    out["imageid"] = _int_column(df, "imageid", path)
    if out["id"].duplicated().any():
        dup = out["id"][out["id"].duplicated()].iloc[0]
        raise DataError(f"{path}: duplicate productid {dup}")
    out["title"] = [clean_text(v) for v in df["designation"].tolist()]
    out["description"] = [clean_text(v) for v in df["description"].tolist()]
    out["text"] = [join_text(t, d) for t, d in zip(out["title"], out["description"])]
    out["has_description"] = out["description"].str.len() > 0
    out.index.name = "row_index"
    out = out.reset_index()
    out.attrs["repaired_rows"] = repaired
    return out


def _read_y(path: Path, fmt: str, x: pd.DataFrame, x_path: Path, label_map: LabelMap) -> pd.DataFrame:
    if fmt == "challengedata":
        y = _read_table(path, ",", 0)
    else:
        y = _read_table(path, "\t", None)
        if "Integer_id" in y.columns:
            y = y.set_index("Integer_id")
        y = y.rename(columns=SIGIR_RENAME)
    _require_columns(y, ["prdtypecode"], path)
    if len(y) != len(x) or not np.array_equal(np.asarray(y.index, dtype=np.int64) if len(y) else [], x["row_index"].to_numpy()):
        extra = set(np.asarray(y.index).tolist()) ^ set(x["row_index"].tolist())
        where = f"e.g. index {sorted(extra)[0]}" if extra else "same indices, different order"
        raise DataError(f"{path}: index does not line up with {x_path.name} ({len(y)} vs {len(x)} rows; {where})")
    codes = _int_column(y, "prdtypecode", path)
    unknown = ~codes.map(label_map.is_known)
    if unknown.any():
        row = codes.index[unknown.to_numpy()][0]
        raise DataError(f"{path}: row {row}: prdtypecode {codes.loc[row]} is not one of the 27 codes")
    x = x.copy()
    x["code"] = codes.to_numpy()
    x["label"] = np.asarray(label_map.encode(x["code"]), dtype=np.int64)
    return x


def image_dir(data_dir: Path, split: str) -> Path | None:
    """``image_<split>/``, or the nested ``image_<split>/image_<split>/`` the zip produces."""
    for cand in (data_dir / f"image_{split}" / f"image_{split}", data_dir / f"image_{split}",
                 data_dir / "images" / f"image_{split}"):
        if cand.is_dir():
            return cand
    return None


def attach_images(df: pd.DataFrame, data_dir: Path, split: str) -> tuple[pd.DataFrame, int]:
    """Add ``image_path`` ('' when absent) and ``has_image``; returns the count of missing images."""
    d = image_dir(data_dir, split)
    present = set(p.name for p in d.iterdir()) if d is not None else set()
    names = [f"image_{i}_product_{p}.jpg" for i, p in zip(df["imageid"], df["id"])]
    df = df.copy()
    df["image_path"] = [str(d / n) if n in present else "" for n in names]
    df["has_image"] = df["image_path"] != ""
    return df, int((~df["has_image"]).sum())


def load_challenge(data_dir: str | Path, label_map: LabelMap | None = None, require_test: bool = True) -> Dataset:
    """Read, validate and clean one challenge download (either edition)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: {'is a file, not a' if data_dir.exists() else 'no such'} data directory")
    fmt = detect_format(data_dir)
    files = CD_FILES if fmt == "challengedata" else SIGIR_FILES
    label_map = label_map or LabelMap()
    x_path, y_path, t_path = (data_dir / files[k] for k in ("x_train", "y_train", "x_test"))
    train = _read_x(x_path, fmt)
    x_rep = train.attrs.get("repaired_rows", 0)
    train = _read_y(y_path, fmt, train, x_path, label_map)
    if t_path.exists() or require_test:
        test = _read_x(t_path, fmt)
    else:
        test = train.iloc[:0].drop(columns=["code", "label"])
    t_rep = test.attrs.get("repaired_rows", 0)
    shared = set(train["id"]) & set(test["id"])
    if shared:
        raise DataError(f"{t_path}: productid {min(shared)} also appears in {x_path.name}")
    train, miss_tr = attach_images(train, data_dir, "train")
    test, miss_te = attach_images(test, data_dir, "test")
    report = {
        "format": fmt, "n_train": len(train), "n_test": len(test),
        "train_images_found": int(train["has_image"].sum()), "train_images_missing": miss_tr,
        "test_images_found": int(test["has_image"].sum()), "test_images_missing": miss_te,
        "train_missing_description": int((~train["has_description"]).sum()),
        # lines decoded as latin-1 inside otherwise UTF-8 files, per file (reported on every run)
        "repaired_rows": {p.name: n for p, n in ((x_path, x_rep), (t_path, t_rep)) if n},
    }
    return Dataset(train=train, test=test, label_map=label_map, fmt=fmt, data_dir=data_dir, report=report)
