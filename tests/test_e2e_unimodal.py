"""End-to-end: the real stage scripts on tiny generated data write complete artifacts with a macro-F1
well above chance; a run killed mid-training resumes to the same OOF as an uninterrupted one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rakuten.artifacts import Experiment, Predictions
from rakuten.folds import read_folds
from rakuten.metrics import scores
from synthetic import random_floor

pytestmark = pytest.mark.slow    # the real stage scripts, training tiny networks

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def run(script, *args, check=True, timeout=600):
    r = subprocess.run([sys.executable, str(REPO / "src" / script), *map(str, args)], capture_output=True,
                       text=True, env=ENV, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from rakuten.data.demo import generate_demo_dataset
    wd = tmp_path_factory.mktemp("wd")
    generate_demo_dataset(wd / "data" / "demo", n_train=400, n_test=50, seed=3, image_size=64)
    run("make_folds.py", "--workdir", wd, "--k", "3")
    return wd


def _floor(wd: Path) -> float:
    """The random-guess floor of this data's OOF labels (~0.06 on 400 rows; majority class ~0.01)."""
    return random_floor(read_folds(wd / "folds" / "folds_k3_seed42.csv")["label"].to_numpy())


def _check_experiment(wd: Path, name: str, k: int = 3, has_emb: bool = True) -> float:
    folds = read_folds(wd / "folds" / "folds_k3_seed42.csv")
    exp = Experiment(wd / "oof", name)
    meta = exp.read_meta()
    assert sorted(meta["folds"]) == [str(i) for i in range(k)]
    assert meta["fold_hash"] and meta["config"]["name"] == name
    oof = exp.load_oof(folds)  # asserts every train id exactly once across folds
    assert np.isfinite(oof.logits).all() and oof.logits.shape[1] == 27
    assert (oof.embeddings is not None) == has_emb
    test = exp.load_test(list(range(k)))
    assert len(test.ids) == 50 and np.isfinite(test.logits).all()
    for f in range(k):
        assert exp.summary_path(f).exists() or not has_emb
    s = scores(oof.labels, oof.logits)
    assert abs(s["macro_f1"] - meta["oof"]["macro_f1"]) < 1e-9
    return s["macro_f1"]


def test_tfidf_all_folds(workdir):
    run("run_fold.py", "--workdir", workdir, "--config", "tfidf_text", "--fold", "all", "folds.k=3", "--no-progress")
    f1 = _check_experiment(workdir, "tfidf_text", has_emb=False)
    assert f1 > max(0.25, 3 * _floor(workdir)), (f1, _floor(workdir))


def test_tuned_svm_baseline_chooses_C_on_inner_folds(workdir):
    run("run_fold.py", "--workdir", workdir, "--config", "tfidf_svm_tuned", "--fold", "all", "folds.k=3",
        "tfidf.C=[1.0,10.0]", "--no-progress")
    f1 = _check_experiment(workdir, "tfidf_svm_tuned", has_emb=False)
    assert f1 > max(0.25, 3 * _floor(workdir)), (f1, _floor(workdir))
    meta = Experiment(workdir / "oof", "tfidf_svm_tuned").read_meta()
    for k in range(3):
        fold = meta["folds"][str(k)]
        searched = {r["C"]: r["inner_macro_f1"] for r in fold["inner_search"]}
        assert set(searched) == {1.0, 10.0}
        assert fold["C"] == max(searched, key=lambda c: (searched[c], -c))  # the inner search's choice


def test_tiny_text_and_image_all_folds(workdir):
    # ~270 training rows: small batches and a higher learning rate give the tiny model enough steps
    run("run_fold.py", "--workdir", workdir, "--config", "text_tiny_title", "--fold", "all", "folds.k=3",
        "train.epochs=6", "train.batch_size=16", "train.lr=3e-3", "--no-progress")
    run("run_fold.py", "--workdir", workdir, "--config", "image_tiny", "--fold", "0,1,2", "folds.k=3",
        "train.epochs=5", "train.batch_size=32", "--no-progress")
    floor = _floor(workdir)
    f_text = _check_experiment(workdir, "text_tiny_title")
    f_img = _check_experiment(workdir, "image_tiny")
    assert f_text > 1.5 * floor, (f_text, floor)
    assert f_img > 1.5 * floor, (f_img, floor)
    summary = pd.read_csv(Experiment(workdir / "oof", "image_tiny").summary_path(0))
    assert {"epoch", "train_loss", "val_macro_f1", "lr", "seconds"} <= set(summary.columns)
    # a finished fold is skipped, not retrained
    r = run("run_fold.py", "--workdir", workdir, "--config", "image_tiny", "--fold", "0", "folds.k=3",
            "train.epochs=5", "train.batch_size=32", "-v")
    assert "artifacts complete, skipping" in r.stderr


def test_bad_fold_and_override_give_one_line(workdir):
    r = run("run_fold.py", "--workdir", workdir, "--config", "tfidf_text", "--fold", "7", "folds.k=3", check=False)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    r = run("run_fold.py", "--workdir", workdir, "--config", "tfidf_text", "--fold", "0", "train.epoch=1", check=False)
    assert r.returncode == 2 and "no key 'train.epoch'" in r.stderr
    # finished folds made with another config are never reused silently
    r = run("run_fold.py", "--workdir", workdir, "--config", "tfidf_text", "--fold", "0", "folds.k=3", "tfidf.C=1.5",
            check=False)
    assert r.returncode == 2 and "config changed (tfidf.C)" in r.stderr  # names the key that changed
    r = run("run_fold.py", "--workdir", workdir, "--config", "tfidf_text", "--fold", "0", "folds.k=3",
            "train.num_workers=0", "-v")
    assert "artifacts complete, skipping" in r.stderr  # runtime-only keys do not invalidate


def _oof(wd: Path, name: str) -> Predictions:
    return Predictions.load(Experiment(wd / "oof", name).oof_path(0))


def test_sigkill_resume_matches_uninterrupted(workdir, tmp_path):
    """Kill run_fold.py with SIGKILL during its second epoch, rerun it: same OOF as a clean run."""
    data = workdir / "data" / "demo"
    args = ["--config", "text_tiny_title", "--fold", "0", "folds.k=3", "train.epochs=4", "train.patience=10",
            "--data-dir", data, "--no-progress"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for wd in (clean, killed):
        run("make_folds.py", "--workdir", wd, "--data-dir", data, "--k", "3")
    run("run_fold.py", "--workdir", clean, *args)

    ckpt = killed / "oof" / "text_tiny_title" / "checkpoints" / "fold0_last.pt"
    proc = subprocess.Popen([sys.executable, str(REPO / "src" / "run_fold.py"), "--workdir", str(killed),
                             *map(str, args)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed: make it slower"
    time.sleep(0.3)  # inside epoch 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Experiment(killed / "oof", "text_tiny_title").oof_path(0).exists()
    r = run("run_fold.py", "--workdir", killed, *args, "-v")
    assert "resumed after epoch" in r.stderr
    a, b = _oof(clean, "text_tiny_title"), _oof(killed, "text_tiny_title")
    assert np.array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=0, atol=1e-5)
    assert not ckpt.exists()  # checkpoints are removed once the artifacts are written


def test_frozen_features_with_int8_extraction(workdir):
    """Feature-extraction mode (thesis 5.6.2) with int8 CPU extraction: cached features, head-only
    training, same artifact format."""
    run("run_fold.py", "--workdir", workdir, "--config", "text_tiny_title", "--fold", "0", "folds.k=3",
        "name=text_tiny_title_frozen", "model.name=text_mean", "model.freeze_backbone=true", "model.cpu_int8=true",
        "train.epochs=3", "--no-progress")
    feats = list((workdir / "cache" / "features").glob("text_*.npz"))
    assert feats, "features were not cached"
    p = Predictions.load(Experiment(workdir / "oof", "text_tiny_title_frozen").oof_path(0))
    assert p.embeddings is not None and np.isfinite(p.logits).all()
