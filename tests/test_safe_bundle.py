"""Bundles that cannot run foreign code: fold models in data-only formats (``rakuten.safe_io``), a
planted pickle refused unread (its payload would write a marker file: the marker must not appear),
and every bundle file pinned by the manifest's SHA-256 (a changed, missing or added file refused with
one line naming it)."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_bundle import run


class Payload:
    """Unpickling this runs code: it writes ``marker`` (what a hostile bundle would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


class Hostile:
    """A class outside the trusted list whose state restore would write a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __setstate__(self, state):
        Path(state["marker"]).write_text("code ran")


def _planted(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def test_the_planted_payload_is_live(tmp_path):
    """The payload the other tests plant does run code when unpickled (else their checks prove nothing)."""
    marker = tmp_path / "marker"
    pickle.loads(_planted(marker))
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("name", ["fold0.joblib", "fold0.pkl", "fold0.skops", "fold0.pt", "fold0.lgbm.txt"])
def test_planted_pickle_is_refused_unread(tmp_path, name):
    from rakuten.safe_io import ModelFileError, load_model

    marker = tmp_path / "marker"
    f = tmp_path / name
    f.write_bytes(_planted(marker))
    with pytest.raises(ModelFileError) as e:
        load_model(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_torch_file_holding_a_pickled_object_is_refused(tmp_path):
    import torch

    from rakuten.safe_io import UnsafeModelError, load_model

    marker = tmp_path / "marker"
    f = tmp_path / "fold0.pt"
    torch.save({"state_dict": {}, "x": Payload(marker)}, f)     # a real torch archive, a pickle inside
    assert not marker.exists()
    with pytest.raises(UnsafeModelError, match="weights-only"):
        load_model(f)
    assert not marker.exists()


def test_skops_file_naming_an_untrusted_type_is_refused(tmp_path):
    import skops.io as sio

    from rakuten.safe_io import UnsafeModelError, load_model

    marker = tmp_path / "marker"
    f = tmp_path / "fold0.skops"
    f.write_bytes(sio.dumps({"kind": "tfidf", "model": Hostile(marker)}))
    with pytest.raises(UnsafeModelError, match="test_safe_bundle.Hostile"):
        load_model(f)
    assert not marker.exists()


def test_every_model_kind_round_trips_exactly(tmp_path):
    """What fold runs and stacks keep: a TF-IDF model (its config a dict subclass), a k-NN bank, the
    linear second levels, a LightGBM stacker and a frozen-feature head: predictions after a save and
    a load equal those before, bit for bit."""
    import torch

    from rakuten.artifacts import Experiment
    from rakuten.config import Config
    from rakuten.models.registry import create_model
    from rakuten.safe_io import load_model
    from rakuten.second_level.blend import CaruanaBlend, LogitBlend, LogRegStacker
    from rakuten.second_level.stacker import LGBMStacker

    rng = np.random.default_rng(0)
    words = ["lot", "stylo", "bleu", "jeu", "ps4", "livre", "enfant", "piscine", "chaise", "table", "lampe"]
    texts = [" ".join(rng.choice(words, 5)) for _ in range(120)]
    y = rng.integers(0, 4, 120)
    e = Experiment(tmp_path, "exp")
    tf = create_model("tfidf_linear", cfg=Config({"classifier": "svm", "calibration": "sigmoid", "max_features": 300}),
                      num_classes=27, seed=1).fit(texts, y)
    p = e.save_model(0, {"kind": "tfidf", "model": tf})
    assert p.name == "fold0.skops"
    assert np.array_equal(load_model(p)["model"].predict_logits(texts, 27), tf.predict_logits(texts, 27))
    # the vocabularies go in as ints (one .npy file per numpy int made a cpu bundle load in 19 s),
    # and the fitted model in memory keeps its own
    import zipfile
    with zipfile.ZipFile(p) as z:
        assert sum(n.endswith(".npy") for n in z.namelist()) < len(tf.word.vocabulary_)
    assert not all(type(i) is int for i in tf.word.vocabulary_.values())

    X = rng.normal(size=(120, 8)).astype(np.float32)
    for k, est in enumerate([LogitBlend(2), CaruanaBlend(2), LogRegStacker()], start=1):
        est.fit(X, y)
        assert np.array_equal(load_model(e.save_model(k, est)).predict_proba(X), est.predict_proba(X))
    lg = LGBMStacker(num_boost_round=30, early_stopping_rounds=5, num_leaves=4, min_data_in_leaf=5, num_class=4,
                     num_threads=1).fit(X, y)
    p = e.save_model(4, lg)
    assert p.name == "fold4.lgbm.txt"
    back = LGBMStacker.from_booster(load_model(p))
    assert np.array_equal(back.predict_proba(X), lg.predict_proba(X)) and list(back.classes_) == [0, 1, 2, 3]

    head = {"state_dict": {"w": torch.randn(3, 4)}, "mu": rng.normal(size=(1, 4)).astype(np.float32),
            "sd": rng.random((1, 4)).astype(np.float32), "in_dim": 4}
    back = load_model(e.save_model(5, head, torch_weights=True))
    assert torch.equal(back["state_dict"]["w"], head["state_dict"]["w"]) and back["in_dim"] == 4
    assert np.array_equal(back["mu"], head["mu"]) and back["mu"].dtype == np.float32
    # a rerun in another format replaces the fold's older file, never leaves two
    (e.dir / "models" / "fold5.joblib").write_bytes(b"old pickle")
    e.save_model(5, head, torch_weights=True)
    assert sorted(f.name for f in (e.dir / "models").glob("fold5*")) == ["fold5.pt"]


# ------------------------------------------------------------------------ a real exported bundle
def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def _rehash(b: Path, rel: str) -> None:
    """What an attacker who also edits the manifest does: record the planted file's real SHA-256."""
    from rakuten.safe_io import sha256
    m = json.loads((b / "manifest.json").read_text())
    m["sha256"][rel] = sha256(b / rel)
    (b / "manifest.json").write_text(json.dumps(m))


@pytest.mark.slow    # reads the session fixture bundle_run (a tiny run and its export)
def test_exported_bundle_holds_no_pickle_and_pins_every_file(bundle_run):
    _, _, bundle, _, _ = bundle_run
    from rakuten.safe_io import SAFE_SUFFIXES, file_digests

    m = json.loads((bundle / "manifest.json").read_text())
    assert m["sha256"] == file_digests(bundle) and len(m["sha256"]) > 10
    for name, e in m["members"].items():
        for f in e["files"]:
            assert f.endswith(SAFE_SUFFIXES), (name, f)
            assert not (bundle / "members" / name / f).read_bytes().startswith(b"\x80"), f   # no pickle header


@pytest.mark.slow
def test_planted_pickle_in_a_bundle_is_refused_and_never_runs(bundle_run, tmp_path):
    _, wd, bundle, _, _ = bundle_run
    from rakuten.bundle import Bundle
    from rakuten.safe_io import UnsafeModelError

    marker = tmp_path / "marker"
    m = json.loads((bundle / "manifest.json").read_text())
    # 1. the TF-IDF member's skops file replaced by the pickle, its hash updated to match
    b1 = _copy(bundle, tmp_path / "b1")
    rel = "members/tfidf_text/fold0.skops"
    (b1 / rel).write_bytes(_planted(marker))
    _rehash(b1, rel)
    with pytest.raises(UnsafeModelError, match="not a skops file"):
        Bundle(b1)
    # 2. a joblib file planted and named by the manifest (files list and hash), as bundles once were
    b2 = _copy(bundle, tmp_path / "b2")
    (b2 / rel).unlink()
    (b2 / "members/tfidf_text/fold0.joblib").write_bytes(_planted(marker))
    m2 = json.loads((b2 / "manifest.json").read_text())
    m2["members"]["tfidf_text"]["files"][0] = "fold0.joblib"
    del m2["sha256"][rel]
    (b2 / "manifest.json").write_text(json.dumps(m2))
    _rehash(b2, "members/tfidf_text/fold0.joblib")
    with pytest.raises(UnsafeModelError, match="not a data-only model format"):
        Bundle(b2)
    # 3. a torch member's weights replaced by a torch archive with a pickled object inside
    import torch
    b3 = _copy(bundle, tmp_path / "b3")
    rel3 = f"members/text_tiny_title/{m['members']['text_tiny_title']['files'][0]}"
    torch.save({"state_dict": Payload(marker)}, b3 / rel3)
    _rehash(b3, rel3)
    with pytest.raises(UnsafeModelError, match="weights-only"):
        Bundle(b3)
    assert not marker.exists()
    # predict.py says so in one line, exit 2
    r = run("predict.py", "--bundle", b1, "--input", wd / "data" / "demo" / "X_test_update.csv",
            "--out", tmp_path / "p.csv", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert "fold0.skops" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.slow
def test_changed_missing_or_added_file_is_refused_with_its_name(bundle_run, tmp_path):
    _, _, bundle, _, _ = bundle_run
    from rakuten.bundle import Bundle
    from rakuten.safe_io import ModelFileError

    m = json.loads((bundle / "manifest.json").read_text())
    stack = m["submitted"]
    rel = f"members/{stack}/{m['members'][stack]['files'][1]}"
    cases = {
        "changed": (lambda b: (b / rel).write_bytes((b / rel).read_bytes().replace(b"leaf_value=", b"leaf_value=1", 1)),
                    rel, "changed since export"),
        "config changed": (lambda b: (b / "members/tfidf_text/config.json").write_text(
            (b / "members/tfidf_text/config.json").read_text().replace("\n", " \n", 1)),
            "members/tfidf_text/config.json", "changed since export"),
        "missing": (lambda b: (b / rel).unlink(), rel, "missing"),
        "added": (lambda b: (b / "members/text_tiny_title/tokenizer/added_tokens.json").write_text("{}"),
                  "members/text_tiny_title/tokenizer/added_tokens.json", "not listed"),
    }
    for i, (case, (change, where, words)) in enumerate(cases.items()):
        b = _copy(bundle, tmp_path / f"b{i}")
        change(b)
        with pytest.raises(ModelFileError) as e:
            Bundle(b)
        msg = str(e.value)
        assert str(b / where) in msg and words in msg and "\n" not in msg, (case, msg)
    Bundle(_copy(bundle, tmp_path / "untouched")).close()   # the unchanged copy loads


def test_bundle_format_1_is_refused_with_a_reason(tmp_path):
    from rakuten.bundle import Bundle, BundleError

    (tmp_path / "manifest.json").write_text(json.dumps({"bundle_format": 1, "members": {}}))
    with pytest.raises(BundleError, match="re-export"):
        Bundle(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps([1, 2]))
    with pytest.raises(BundleError, match="bundle format None"):
        Bundle(tmp_path)
