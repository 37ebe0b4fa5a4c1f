"""Data layer: the real sample loads; every bad input gets one clear line and writes nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rakuten.data.challenge import DataError, load_challenge
from rakuten.data.prepared import load_dataset
from rakuten.data.text import clean_text
from rakuten.paths import Paths

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "rakuten_sample"


def write_cd(d: Path, n_train=40, n_test=10, codes=(10, 40, 50, 2583), seed=0) -> Path:
    """A tiny ChallengeData-format download."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    pid = rng.choice(10**9, n_train + n_test, replace=False) + 10**9
    iid = rng.choice(10**9, n_train + n_test, replace=False) + 10**9
    x = pd.DataFrame({"designation": [f"Produit {i} &amp; co" for i in range(n_train + n_test)],
                      "description": [f"<p>desc {i}</p>" if i % 3 else np.nan for i in range(n_train + n_test)],
                      "productid": pid, "imageid": iid})
    x.iloc[:n_train].to_csv(d / "X_train_update.csv")
    xt = x.iloc[n_train:].copy()
    xt.to_csv(d / "X_test_update.csv")
    pd.DataFrame({"prdtypecode": [codes[i % len(codes)] for i in range(n_train)]}).to_csv(d / "Y_train_CVw08PX.csv")
    return d


def test_clean_text():
    assert clean_text("<p>Caf&eacute; &amp;amp; th&eacute;</p><br/>  bio ") == "Café & thé bio"
    assert clean_text(float("nan")) == ""
    assert clean_text("&lt;b&gt;gras&lt;/b&gt;") == "gras"
    assert clean_text("a<br>b") == "a b"


def test_reads_minimal_download(tmp_path):
    ds = load_challenge(write_cd(tmp_path / "d"))
    assert len(ds.train) == 40 and len(ds.test) == 10
    assert ds.test["row_index"].tolist() == list(range(40, 50))
    assert set(ds.train["code"]) == {10, 40, 50, 2583}
    assert ds.train["label"].between(0, 26).all()
    assert ds.train["title"].iloc[0] == "Produit 0 & co"
    assert ds.report["train_images_missing"] == 40  # no image folder at all: every image reported missing
    assert {"title", "description", "text"} <= set(ds.train.columns)


def test_nested_image_folder(tmp_path):
    d = write_cd(tmp_path / "d")
    x = pd.read_csv(d / "X_train_update.csv", index_col=0)
    nested = d / "image_train" / "image_train"
    nested.mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (8, 8)).save(nested / f"image_{x.imageid.iloc[0]}_product_{x.productid.iloc[0]}.jpg")
    ds = load_challenge(d)
    assert ds.report["train_images_found"] == 1


def test_sigir_tsv(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    x = pd.DataFrame({"Integer_id": range(30), "Title": [f"t{i}" for i in range(30)], "Description": "",
                      "Image_id": range(1000, 1030), "Product_id": range(5000, 5030)})
    x.to_csv(d / "X_train.tsv", sep="\t", index=False)
    pd.DataFrame({"Integer_id": range(30), "Prdtypecode": [10, 2905] * 15}).to_csv(d / "Y_train.tsv", sep="\t", index=False)
    xt = x.assign(Integer_id=range(30, 60), Image_id=range(2000, 2030), Product_id=range(6000, 6030))
    xt.to_csv(d / "X_test.tsv", sep="\t", index=False)
    ds = load_challenge(d)
    assert ds.fmt == "sigir" and len(ds.train) == 30 and len(ds.test) == 30


@pytest.mark.skipif(not SAMPLE.exists(), reason="real sample not present")
def test_real_sample(tmp_path):
    ds = load_dataset(Paths.make(tmp_path, SAMPLE))
    assert len(ds.train) == 517 and len(ds.test) == 499
    assert ds.report["train_images_found"] == 66
    assert ds.report["train_images_missing"] == 517 - 66
    # 186 NaN descriptions, plus one that is only "<br />": empty after cleaning, so missing too
    assert ds.report["train_missing_description"] == 187
    assert not ds.train["title"].str.contains("<").any()
    # second call comes from the prepared cache and agrees
    again = load_dataset(Paths.make(tmp_path, SAMPLE))
    pd.testing.assert_frame_equal(ds.train, again.train)


def _break(d: Path, what: str) -> str:
    """Apply one defect to a good download; return the text the error must mention."""
    xp, yp = d / "X_train_update.csv", d / "Y_train_CVw08PX.csv"
    if what == "missing_file":
        yp.unlink()
        return "Y_train_CVw08PX.csv: file not found"
    if what == "missing_column":
        x = pd.read_csv(xp, index_col=0).drop(columns=["imageid"])
        x.to_csv(xp)
        return "missing column(s) imageid"
    if what == "renamed_column":
        x = pd.read_csv(xp, index_col=0).rename(columns={"designation": "title"})
        x.to_csv(xp)
        return "missing column(s) designation"
    if what == "xy_mismatch":
        y = pd.read_csv(yp, index_col=0)
        y.index = y.index + 1
        y.to_csv(yp)
        return "does not line up"
    if what == "duplicate_id":
        x = pd.read_csv(xp, index_col=0)
        x.loc[x.index[1], "productid"] = x["productid"].iloc[0]
        x.to_csv(xp)
        return "duplicate productid"
    if what == "duplicate_index":
        x = pd.read_csv(xp, index_col=0)
        x.index = [0] + list(x.index[:-1])
        x.to_csv(xp)
        return "duplicate row index"
    if what == "unknown_code":
        y = pd.read_csv(yp, index_col=0)
        y.loc[y.index[3], "prdtypecode"] = 1234
        y.to_csv(yp)
        return "prdtypecode 1234 is not one of the 27 codes"
    if what == "empty_test_set":
        tp = d / "X_test_update.csv"
        pd.read_csv(tp, index_col=0).iloc[:0].to_csv(tp)
        return "X_test_update.csv: header only, no data rows"
    if what == "empty_file":
        xp.write_text("")
        return "file is empty"
    if what == "non_integer_id":
        x = pd.read_csv(xp, index_col=0)
        x["productid"] = x["productid"].astype(object)
        x.loc[x.index[2], "productid"] = "abc"
        x.to_csv(xp)
        return "column productid is not an integer"
    raise ValueError(what)


BAD = ["missing_file", "missing_column", "renamed_column", "xy_mismatch", "duplicate_id", "duplicate_index",
       "unknown_code", "empty_file", "non_integer_id", "empty_test_set"]


@pytest.mark.parametrize("what", BAD)
def test_bad_input_raises_one_line(tmp_path, what):
    d = write_cd(tmp_path / "d")
    expect = _break(d, what)
    with pytest.raises(DataError) as e:
        load_challenge(d)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
    assert str(d) in msg  # names the file


@pytest.mark.parametrize("what", ["missing_column", "unknown_code", "xy_mismatch"])
def test_bad_input_cli_exits_nonzero_and_writes_nothing(tmp_path, what):
    d = write_cd(tmp_path / "d")
    expect = _break(d, what)
    wd = tmp_path / "wd"
    r = subprocess.run([sys.executable, str(REPO / "src" / "make_folds.py"), "--data-dir", str(d),
                        "--workdir", str(wd), "--k", "2"], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0]
    assert not (wd / "folds").exists() or not any((wd / "folds").iterdir())


def test_extra_columns_and_html_only_description_are_fine(tmp_path):
    d = write_cd(tmp_path / "d")
    x = pd.read_csv(d / "X_train_update.csv", index_col=0)
    x["extra"] = 1
    x.loc[x.index[0], "description"] = "<p><br /></p>"
    x.loc[x.index[1], "designation"] = np.nan
    x.to_csv(d / "X_train_update.csv")
    ds = load_challenge(d)
    assert ds.train["description"].iloc[0] == "" and not ds.train["has_description"].iloc[0]
    assert ds.train["title"].iloc[1] == ""


def test_latin1_bytes_are_read(tmp_path):
    d = write_cd(tmp_path / "d")
    raw = (d / "X_train_update.csv").read_text(encoding="utf-8").replace("Produit 0", "Caf\u00e9 0")
    (d / "X_train_update.csv").write_bytes(raw.encode("latin-1"))
    ds = load_challenge(d)
    assert ds.train["title"].iloc[0].startswith("Café")


def test_one_latin1_row_in_a_utf8_file_is_decoded_alone_and_counted(tmp_path):
    """Only the row that is not UTF-8 is decoded as latin-1: the accented UTF-8 rows stay intact
    (decoding the whole file as latin-1 turns their "é" into "Ã©"), and the repair is reported."""
    from rakuten.data.prepared import describe
    d = write_cd(tmp_path / "d")
    path = d / "X_train_update.csv"
    lines = path.read_text(encoding="utf-8").replace("Produit", "Thé produit").splitlines(keepends=True)
    data = [line.encode("utf-8") for line in lines]
    data[3] = lines[3].replace("Thé", "Café").encode("latin-1")      # one pasted latin-1 row
    path.write_bytes(b"".join(data))
    ds = load_challenge(d)
    titles = ds.train["title"].tolist()
    assert titles[2].startswith("Café")
    assert all("Ã" not in t for t in titles)
    assert sum(t.startswith("Thé") for t in titles) == len(titles) - 1
    assert ds.report["repaired_rows"] == {"X_train_update.csv": 1}
    assert "1 in X_train_update.csv" in describe(ds)


def test_test_set_without_any_image_is_kept_and_counted(tmp_path):
    d = write_cd(tmp_path / "d")
    (d / "image_test").mkdir()  # folder present, no file in it
    ds = load_challenge(d)
    assert len(ds.test) == 10 and not ds.test["has_image"].any()
    assert ds.report["test_images_missing"] == 10
