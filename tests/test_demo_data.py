"""Tests of the demo data generator (rakuten.data.demo, src/make_demo_data.py).

Small datasets at 64 px keep the whole file fast; the complementarity test is the slowest (~5 s).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rakuten.data import demo
from rakuten.data.demo import generate_demo_dataset, image_name, make_tables
from rakuten.labels import CODE_COUNTS, CODES

N_TRAIN, N_TEST, SEED, SIZE = 240, 60, 7, 64
IMAGE_RE = re.compile(r"^image_(\d+)_product_(\d+)\.jpg$")


def _gen(out, n_train=N_TRAIN, n_test=N_TEST, seed=SEED, size=SIZE, **kw):
    return generate_demo_dataset(out, n_train, n_test, seed, image_size=size, progress=False, n_jobs=1, **kw)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    _gen(out)
    return out


def _read(ds: Path):
    x_train = pd.read_csv(ds / "X_train_update.csv", index_col=0)
    y_train = pd.read_csv(ds / "Y_train_CVw08PX.csv", index_col=0)
    x_test = pd.read_csv(ds / "X_test_update.csv", index_col=0)
    return x_train, y_train, x_test


# ------------------------------------------------------------------------------------------ format
def test_files_and_headers_match_the_challenge(ds):
    names = {p.name for p in ds.iterdir()}
    assert {"X_train_update.csv", "Y_train_CVw08PX.csv", "X_test_update.csv", "image_train", "image_test",
            "README.md"} <= names
    assert not [n for n in names if n.startswith(".")], "no temp files left behind"

    def header(name):
        return (ds / name).read_text(encoding="utf-8").splitlines()[0]

    assert header("X_train_update.csv") == ",designation,description,productid,imageid"
    assert header("X_test_update.csv") == ",designation,description,productid,imageid"
    assert header("Y_train_CVw08PX.csv") == ",prdtypecode"
    readme = (ds / "README.md").read_text(encoding="utf-8")
    assert "generated" in readme.lower() and f"seed {SEED}" in readme
    assert f"version {demo.GENERATOR_VERSION}" in readme


def test_index_continuity_and_unique_ids(ds):
    x_train, y_train, x_test = _read(ds)
    assert x_train.index.tolist() == list(range(N_TRAIN))
    assert y_train.index.tolist() == list(range(N_TRAIN))
    assert x_test.index.tolist() == list(range(N_TRAIN, N_TRAIN + N_TEST))  # test continues after train
    for col in ("productid", "imageid"):
        ids = pd.concat([x_train[col], x_test[col]])
        assert ids.dtype == np.int64
        assert ids.is_unique, f"{col} repeats (across train+test)"
        assert ids.min() >= 10**8 and ids.max() < 10**10, f"{col} must have 9-10 digits"
    assert x_train["designation"].notna().all() and (x_train["designation"].str.len() > 3).all()


def test_every_row_has_its_image(ds):
    x_train, _, x_test = _read(ds)
    for split, x in (("train", x_train), ("test", x_test)):
        folder = ds / f"image_{split}"
        files = sorted(p.name for p in folder.iterdir())
        assert all(IMAGE_RE.match(f) for f in files)
        expected = sorted(image_name(i, p) for i, p in zip(x["imageid"], x["productid"]))
        assert files == expected
        for f in files[:10]:
            with Image.open(folder / f) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)


def test_codes_follow_the_real_prior():
    # Tables only (no images): fast enough to look at a large sample.
    _, y, _, _ = make_tables(8000, 0, seed=11)
    counts = y["prdtypecode"].value_counts()
    assert set(counts.index) == set(CODES)
    assert counts.idxmax() == 2583
    prior = pd.Series(CODE_COUNTS, dtype=float) / sum(CODE_COUNTS.values())
    observed = counts.reindex(prior.index).fillna(0) / counts.sum()
    assert 0.5 * (observed - prior).abs().sum() < 0.05  # total variation distance (3% label noise included)
    assert counts[60] < counts[2583] / 6  # weak classes stay rare


def test_missing_descriptions_and_dirty_html(ds):
    x, _, _, _ = make_tables(4000, 0, seed=12)
    missing = x["description"].isna().mean()
    assert 0.31 < missing < 0.39
    x_train, _, _ = _read(ds)
    assert x_train["description"].isna().any()  # empty field -> NaN on read
    desc = " ".join(x_train["description"].dropna())
    for token in ("<p>", "<br />", "<b>", "<li>", "&eacute;", "&amp;", "é"):
        assert token in desc, f"descriptions never contain {token!r}"


def test_label_noise_is_about_three_percent():
    _, y, _, info = make_tables(6000, 0, seed=13)
    noisy = info["label_noise"][:6000]
    assert 0.015 < noisy.mean() < 0.045
    labels = y["prdtypecode"].to_numpy()
    assert (labels[noisy] != info["content_code"][:6000][noisy]).all()
    assert (labels[~noisy] == info["content_code"][:6000][~noisy]).all()


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 5), (b, 5), (c, 6)):
        _gen(out, n_train=40, n_test=10, seed=seed)
    for name in ("X_train_update.csv", "Y_train_CVw08PX.csv", "X_test_update.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert (a / name).read_bytes() != (c / name).read_bytes(), name
    imgs = sorted((a / "image_train").iterdir())[:5]
    for p in imgs:
        assert p.read_bytes() == (b / "image_train" / p.name).read_bytes()
    assert {p.name for p in (a / "image_train").iterdir()} != {p.name for p in (c / "image_train").iterdir()}


def test_image_rendering_depends_only_on_seed_and_row():
    # Workers render rows independently, so the bytes cannot depend on how rows are split among them.
    one = demo.render_image("pool", np.random.default_rng([1, 2, 3]), 48)
    two = demo.render_image("pool", np.random.default_rng([1, 2, 3]), 48)
    assert np.array_equal(np.asarray(one), np.asarray(two))


# --------------------------------------------------------------------------- idempotence and safety
def test_rerun_is_a_noop_and_other_parameters_are_refused(tmp_path):
    out = tmp_path / "demo"
    first = _gen(out, n_train=30, n_test=5)
    assert first["skipped"] is False
    stamp = (out / "X_train_update.csv").stat().st_mtime_ns
    again = _gen(out, n_train=30, n_test=5)
    assert again["skipped"] is True and again["n_train"] == 30
    assert (out / "X_train_update.csv").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        _gen(out, n_train=31, n_test=5)
    replaced = _gen(out, n_train=31, n_test=5, overwrite=True)
    assert replaced["skipped"] is False
    assert len(pd.read_csv(out / "Y_train_CVw08PX.csv", index_col=0)) == 31
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp or backup folder left


def test_refuses_a_folder_that_is_not_demo_data(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not empty"):
            _gen(out, n_train=10, n_test=2, overwrite=overwrite)
    assert (out / "precious.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _gen(empty, n_train=10, n_test=2)["skipped"] is False  # an empty folder is fine


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = demo._render_rows

    def broken(tasks):  # the first chunk of images is written, then the run dies
        calls.append(len(tasks))
        if len(calls) > 1:
            raise RuntimeError("killed")
        return real(tasks)

    monkeypatch.setattr(demo, "_render_rows", broken)
    with pytest.raises(RuntimeError, match="killed"):
        _gen(tmp_path / "demo", n_train=100, n_test=10)
    assert list(tmp_path.iterdir()) == []


def test_temp_folders_of_dead_runs_are_cleaned(tmp_path):
    import socket

    host = socket.gethostname().replace("-", "_")
    stale = tmp_path / f".demo.partial-{host}-999999999-abc"  # no such pid: that run was killed
    (stale / "image_train").mkdir(parents=True)
    _gen(tmp_path / "demo", n_train=10, n_test=2)
    assert not stale.exists()


def test_cli_writes_and_summarises(tmp_path, capsys):
    import make_demo_data

    out = tmp_path / "cli"
    rc = make_demo_data.main(["--out", str(out), "--n-train", "20", "--n-test", "4", "--seed", "1",
                              "--image-size", "32", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "20 train" in text and "missing descriptions" in text and "seconds" in text
    assert len(list((out / "image_test").iterdir())) == 4
    rc = make_demo_data.main(["--out", str(out), "--n-train", "21", "--n-test", "4", "--seed", "1",
                              "--image-size", "32", "--no-progress"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


# ------------------------------------------------------------------------------- complementarity
def test_text_and_image_are_complementary(tmp_path):
    """Text alone and image alone each beat chance, and stacking both beats either alone.

    The designed ambiguities show up per class: garden vs indoor furniture share their text
    vocabulary (the image decides), bedding vs decoration share their picture (the text decides).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from threadpoolctl import threadpool_limits

    from rakuten.data.text import clean_text

    out = tmp_path / "demo"
    _gen(out, n_train=1500, n_test=1, seed=3)
    x, y, _ = _read(out)
    y = y["prdtypecode"].to_numpy()
    text = [f"{clean_text(t)} {clean_text(d)}" for t, d in zip(x["designation"], x["description"])]
    # 8x8 colour thumbnails: enough for the big shapes and colours of the patterns, and small enough
    # for a linear model to fit in well under a second.
    pix = np.stack([np.asarray(Image.open(out / "image_train" / image_name(i, p)).resize((8, 8), Image.Resampling.BOX),
                               dtype=np.float32).ravel() / 255 for i, p in zip(x["imageid"], x["productid"])])
    pix = (pix - pix.mean(0)) / (pix.std(0) + 1e-3)

    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    classes = np.unique(y)
    # One BLAS thread: on a busy 2-core machine, thread contention makes lbfgs 10x slower.
    with threadpool_limits(1):
        p_text = cross_val_predict(make_pipeline(TfidfVectorizer(sublinear_tf=True),
                                                 LogisticRegression(C=5, max_iter=200)),
                                   text, y, cv=cv, method="predict_proba")
        p_img = cross_val_predict(LogisticRegression(C=0.05, max_iter=200), pix, y, cv=cv, method="predict_proba")
        # Stack the out-of-fold probabilities; cross-validated again so the score stays honest.
        p_both = cross_val_predict(LogisticRegression(C=10, max_iter=300), np.hstack([p_text, p_img]), y, cv=cv,
                                   method="predict_proba")

    def macro(p):
        return f1_score(y, classes[p.argmax(1)], average="macro")

    def per_class(p, code):
        return f1_score(y, classes[p.argmax(1)], labels=[code], average=None)[0]

    f_text, f_img, f_both = macro(p_text), macro(p_img), macro(p_both)
    print(f"macro-F1 text {f_text:.3f} image {f_img:.3f} both {f_both:.3f}")
    chance = 1 / len(CODES)
    assert f_text > 0.5 and f_text > 10 * chance
    assert f_img > 0.2 and f_img > 5 * chance
    assert f_both > max(f_text, f_img) + 0.05
    assert per_class(p_img, 2582) > per_class(p_text, 2582) + 0.3   # same words, different pictures
    assert per_class(p_text, 1920) > per_class(p_img, 1920) + 0.3   # same picture, different words
