"""Submission: the writer's output passes the validator; every malformed variant is rejected."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from rakuten.data.prepared import load_dataset
from rakuten.labels import CODES
from rakuten.reporting.submission import SubmissionError, validate_submission, write_submission
from rakuten.stages import make_submission
from synthetic import TEST_GAP, bagged_test_proba, heldout_labels, make_synthetic, oof_macro_f1, random_floor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("submit"))


@pytest.fixture(scope="module")
def ds(synth):
    return load_dataset(synth)


@pytest.fixture(scope="module")
def cd_file(synth):
    return make_submission(synth, "image_tiny", "challengedata")


@pytest.fixture(scope="module")
def sigir_file(synth):
    return make_submission(synth, "image_tiny", "sigir")


def test_challengedata_file_is_valid_and_named_by_cv_score(cd_file, ds):
    assert cd_file.parent.name == "submissions"
    assert cd_file.name.startswith("image_tiny_cv0.") and cd_file.suffix == ".csv"
    lines = cd_file.read_text().splitlines()
    assert lines[0] == ",prdtypecode"
    assert len(lines) == len(ds.test) + 1
    df = pd.read_csv(cd_file, index_col=0)
    assert df.index.tolist() == ds.test["row_index"].tolist()
    assert validate_submission(cd_file, ds, "challengedata")["rows"] == len(ds.test)


def _codes_by_id(path: Path, data_dir: Path) -> pd.Series:
    """A ChallengeData submission's codes keyed by product id, through X_test_update.csv's row index."""
    x_test = pd.read_csv(data_dir / "X_test_update.csv", index_col=0)
    sub = pd.read_csv(path, index_col=0)
    assert sub.index.isin(x_test.index).all()
    return pd.Series(sub["prdtypecode"].to_numpy(), index=x_test.loc[sub.index, "productid"].to_numpy(np.int64))


def test_predictions_are_the_bagged_test_argmax(cd_file, synth):
    """Each product's code is the argmax of the mean fold-model probability, recomputed from the npz
    files with numpy/scipy and joined by product id: the fixture's test files list the rows in a
    fold-specific order, so a writer that pairs rows by position fails here."""
    proba = bagged_test_proba(synth, "image_tiny")
    want = pd.Series(np.asarray(CODES)[proba.to_numpy().argmax(1)], index=proba.index)
    got = _codes_by_id(cd_file, synth.data_dir)
    assert set(got.index) == set(want.index)
    assert (got.loc[want.index] == want).all()


def test_submission_scores_on_heldout_labels_like_its_oof(cd_file, synth):
    """The submitted codes, scored on the held-out test labels, within TEST_GAP of the experiment's
    OOF macro-F1 (and far above the random floor): shuffled ids or another experiment's rows fail."""
    y = heldout_labels(synth)
    got = _codes_by_id(cd_file, synth.data_dir)
    code_index = {c: i for i, c in enumerate(CODES)}
    f1 = f1_score(y.loc[got.index].to_numpy(), [code_index[int(c)] for c in got], average="macro")
    oof = oof_macro_f1(synth, "image_tiny")
    below, above = TEST_GAP
    assert oof - below <= f1 <= oof + above, (f1, oof)
    assert f1 > 3 * random_floor(y.to_numpy())


def test_no_silent_overwrite(synth, cd_file):
    before = cd_file.read_bytes()
    with pytest.raises(SubmissionError, match="already exists"):
        make_submission(synth, "image_tiny", "challengedata")
    assert make_submission(synth, "image_tiny", "challengedata", force=True) == cd_file
    assert cd_file.read_bytes() == before


def _variant(src: Path, tmp_path: Path, edit) -> Path:
    lines = src.read_text().splitlines()
    out = tmp_path / f"bad{src.suffix}"
    out.write_text("\n".join(edit(lines)) + "\n")
    return out


def _set_code(line: str, code: str, sep: str = ",") -> str:
    parts = line.split(sep)
    parts[-1] = code
    return sep.join(parts)


CD_CASES = {
    "wrong header": (lambda L: ["id,prdtypecode"] + L[1:], "header must be"),
    "missing id": (lambda L: L[:5] + L[6:], "missing"),
    "extra id": (lambda L: L + ["999999999,10"], "not in the test set"),
    "duplicate id": (lambda L: L + [L[3]], "appears twice"),
    "unknown code": (lambda L: L[:2] + [_set_code(L[2], "1234")] + L[3:], "not one of the 27 codes"),
    "NaN code": (lambda L: L[:2] + [_set_code(L[2], "")] + L[3:], "empty or NaN"),
    "nan text": (lambda L: L[:2] + [_set_code(L[2], "nan")] + L[3:], "empty or NaN"),
    "non-integer code": (lambda L: L[:2] + [_set_code(L[2], "10.5")] + L[3:], "not an integer"),
    "wrong order": (lambda L: [L[0], L[2], L[1]] + L[3:], "not in X_test order"),
    "extra column": (lambda L: [L[0]] + [l + ",x" for l in L[1:]], "field"),
    "semicolons": (lambda L: [l.replace(",", ";") for l in L], "header must be"),
}


@pytest.mark.parametrize("case", sorted(CD_CASES))
def test_malformed_challengedata_rejected(cd_file, ds, tmp_path, case):
    edit, message = CD_CASES[case]
    bad = _variant(cd_file, tmp_path, edit)
    with pytest.raises(SubmissionError, match=message) as e:
        validate_submission(bad, ds, "challengedata")
    assert "\n" not in str(e.value)


def test_sigir_file_is_valid(sigir_file, ds):
    assert sigir_file.suffix == ".tsv"
    assert sigir_file.read_text().splitlines()[0] == "Integer_id\tImage_id\tProduct_id\tPrdtypecode"
    assert validate_submission(sigir_file, ds, "sigir")["rows"] == len(ds.test)


SIGIR_CASES = {
    "wrong separator": (lambda L: [l.replace("\t", ",") for l in L], "wrong separator"),
    "missing id": (lambda L: L[:-1], "missing"),
    "duplicate id": (lambda L: L + [L[1]], "appears twice"),
    "unknown code": (lambda L: L[:2] + [_set_code(L[2], "7", "\t")] + L[3:], "not one of the 27 codes"),
    "wrong product": (lambda L: L[:2] + ["\t".join(L[2].split("\t")[:2] + ["1", L[2].split("\t")[3]])] + L[3:],
                      "do not belong"),
    "wrong order": (lambda L: [L[0], L[2], L[1]] + L[3:], "not in X_test order"),
    "wrong header": (lambda L: ["Integer_id\tImage_id\tProduct_id\tprdtypecode"] + L[1:], "header must be"),
}


@pytest.mark.parametrize("case", sorted(SIGIR_CASES))
def test_malformed_sigir_rejected(sigir_file, ds, tmp_path, case):
    edit, message = SIGIR_CASES[case]
    bad = _variant(sigir_file, tmp_path, edit)
    with pytest.raises(SubmissionError, match=message):
        validate_submission(bad, ds, "sigir")


def test_challengedata_file_is_not_a_sigir_file(cd_file, ds):
    with pytest.raises(SubmissionError, match="header must be"):
        validate_submission(cd_file, ds, "sigir")


def test_writer_refuses_wrong_length_and_removes_invalid_output(ds, tmp_path):
    with pytest.raises(SubmissionError, match="predictions for"):
        write_submission(tmp_path / "x.csv", ds, [10, 40])
    codes = np.full(len(ds.test), 10)
    codes[0] = 11                                  # not a prdtypecode
    with pytest.raises(SubmissionError, match="not one of the 27"):
        write_submission(tmp_path / "y.csv", ds, codes)
    assert not (tmp_path / "y.csv").exists()


def test_bias_submission_named_and_scored_held_out(synth, ds):
    p = make_submission(synth, "text_tiny_title", "challengedata", bias=True)
    assert "_bias_cv" in p.name
    import json
    b = json.loads((synth.oof_dir / "text_tiny_title" / "biases.json").read_text())
    assert p.name.endswith(f"_cv{b['heldout']['oof_after']['macro_f1']:.4f}.csv")


def test_scripts(synth, cd_file, tmp_path):
    base = ["--workdir", str(synth.workdir), "--data-dir", str(synth.data_dir)]
    ok = subprocess.run([sys.executable, str(REPO / "src" / "validate_submission.py"), str(cd_file), *base],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert ok.returncode == 0 and "valid challengedata submission" in ok.stdout, ok.stderr
    bad = _variant(cd_file, tmp_path, lambda L: L[:-1])
    r = subprocess.run([sys.executable, str(REPO / "src" / "validate_submission.py"), str(bad), *base],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    s = subprocess.run([sys.executable, str(REPO / "src" / "submit.py"), "--exp", "text_tiny_text", *base],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert s.returncode == 0 and "wrote and validated" in s.stdout, s.stderr
    again = subprocess.run([sys.executable, str(REPO / "src" / "submit.py"), "--exp", "text_tiny_text", *base],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
