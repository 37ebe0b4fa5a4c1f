"""Lineage: an artifact is reused only while what it was made from is unchanged.

Unimodal folds key on the fold file, the config and a data fingerprint (ids, labels, the text of the
field read, the image files); a fold is locked while it trains; second-level artifacts, tuned models
and submissions record and check their upstream artifacts' content hashes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rakuten.paths import Paths

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(script, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "src" / script), *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def one_line_error(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr[-2000:]
    return lines[0]


@pytest.fixture
def demo(tmp_path):
    from rakuten.data.demo import generate_demo_dataset
    wd = tmp_path / "wd"
    generate_demo_dataset(wd / "data" / "demo", n_train=300, n_test=30, seed=3, image_size=32)
    r = run("make_folds.py", "--workdir", wd, "--k", "3")
    assert r.returncode == 0, r.stderr
    return wd


TFIDF = ("--config", "tfidf_text", "folds.k=3", "tfidf.max_features=2000", "--no-progress")


def test_changed_text_with_same_ids_and_labels_is_not_reused(demo):
    r = run("run_fold.py", "--workdir", demo, "--fold", "0", *TFIDF)
    assert r.returncode == 0, r.stderr[-2000:]
    x = demo / "data" / "demo" / "X_train_update.csv"
    df = pd.read_csv(x, index_col=0)
    df["designation"] = df["designation"].str.upper()      # same ids, same labels, other text
    df.to_csv(x)
    line = one_line_error(run("run_fold.py", "--workdir", demo, "--fold", "0", *TFIDF))
    assert "data changed" in line and "--force" in line
    # with --force it retrains on the new text
    r = run("run_fold.py", "--workdir", demo, "--fold", "0", "--force", *TFIDF)
    assert r.returncode == 0, r.stderr[-2000:]


def test_changed_image_keeps_text_models_and_changes_image_key(demo):
    from rakuten.data.prepared import load_dataset
    from rakuten.experiment import load_experiment
    from rakuten.training.fold import experiment_data_key, prepare_fold_data
    paths = Paths.make(demo)
    text_cfg, image_cfg = load_experiment("tfidf_text", ["folds.k=3"]), load_experiment("image_tiny", ["folds.k=3"])
    ds = load_dataset(paths)
    before = {c.name: prepare_fold_data(c, paths, ds).content_key for c in (text_cfg, image_cfg)}
    img = Path(next(p for p in ds.train["image_path"] if p))
    st = img.stat()
    img.write_bytes(img.read_bytes() + b"\0")                # repaired in place: same folder, same count
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2 = load_dataset(paths)
    after = {c.name: experiment_data_key(c, ds2.train.copy(), ds2.test.copy()) for c in (text_cfg, image_cfg)}
    assert after["tfidf_text"] == before["tfidf_text"]
    assert after["image_tiny"] != before["image_tiny"]


def test_frozen_feature_key_covers_cache_size_and_pretrained(demo):
    from rakuten.data.prepared import load_dataset
    from rakuten.experiment import load_experiment
    from rakuten.training.fold import frozen_feature_key, prepare_fold_data
    paths = Paths.make(demo)
    ds = load_dataset(paths)
    keys = set()
    for ov in ([], ["data.cache_size=96"], ["model.pretrained=true"]):
        cfg = load_experiment("image_tiny", ["folds.k=3", "model.freeze_backbone=true", *ov])
        keys.add(frozen_feature_key(cfg, prepare_fold_data(cfg, paths, ds)))
    assert len(keys) == 3


def test_second_process_on_a_locked_fold_exits_with_one_line(demo):
    from rakuten.training.fold import fold_lock
    with fold_lock(Paths.make(demo), "tfidf_text", 0):
        line = one_line_error(run("run_fold.py", "--workdir", demo, "--fold", "0", *TFIDF))
    assert "being trained" in line
    assert not (demo / "oof" / "tfidf_text" / "fold0.npz").exists()
    r = run("run_fold.py", "--workdir", demo, "--fold", "0", *TFIDF)   # lock released: it trains
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------------------ second level
SMALL_STACK = ["lgbm.num_leaves=7", "lgbm.max_bin=31", "lgbm.num_threads=1", "lgbm.learning_rate=0.1",
               "lgbm.min_data_in_leaf=10", "lgbm.early_stopping_rounds=0", "lgbm.num_boost_round=10"]


@pytest.fixture
def synth(tmp_path):
    import sys as _sys
    _sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import make_synthetic
    return make_synthetic(tmp_path / "synth")


def _retrain_upstream(paths, name="text_tiny_title", fold=0):
    """An upstream rerun whose outputs changed: fold ``fold``'s OOF and test logits move."""
    import numpy as np
    from rakuten.artifacts import Experiment, Predictions
    exp = Experiment(paths.oof_dir, name)
    for p in (exp.oof_path(fold), exp.test_path(fold)):
        pr = Predictions.load(p)
        pr.logits = pr.logits + np.random.default_rng(1).normal(0, 0.5, pr.logits.shape).astype(np.float32)
        pr.save(p)


def _stack_and_tuned(paths):
    from rakuten.second_level.api import load_second_level, load_stack
    from rakuten.second_level.stacker import run_stack
    from rakuten.second_level.tuning import tune
    cfg = load_stack("stack_lgbm", overrides=SMALL_STACK)
    run_stack(cfg, paths, progress=False)
    res = tune(cfg, paths, n_trials=1, progress=False, total=True)
    run_stack(load_second_level(res["best_config"]), paths, progress=False)
    return cfg, res


def test_stale_tuned_is_not_submitted_and_stale_stack_not_listed(synth):
    from rakuten.reporting.leaderboard import build_leaderboard
    from rakuten.second_level.api import submit_best
    from rakuten.second_level.stacker import run_stack
    from rakuten.second_level.selection import choose_tuned
    cfg, _ = _stack_and_tuned(synth)
    assert set(choose_tuned(synth, "stack_lgbm", "macro_f1")["scores"]) == {"stack_lgbm", "stack_lgbm_tuned"}
    _retrain_upstream(synth)
    listed = {r["experiment"] for r in build_leaderboard(synth, write=False)}
    assert "stack_lgbm" not in listed and "stack_lgbm_tuned" not in listed   # both built on old inputs
    run_stack(cfg, synth, progress=False)         # the untuned stack is refitted; tuning is skipped
    assert "stack_lgbm" in {r["experiment"] for r in build_leaderboard(synth, write=False)}
    assert set(choose_tuned(synth, "stack_lgbm", "macro_f1")["scores"]) == {"stack_lgbm"}   # stale: no candidate
    path = submit_best(synth, "stack_lgbm")
    assert path.name.startswith("stack_lgbm_cv"), path.name


def test_study_of_old_upstreams_is_not_reused(synth):
    import optuna
    from rakuten.second_level.tuning import TuningError, tune
    cfg, first = _stack_and_tuned(synth)
    old_sig = optuna.load_study(study_name=first["study_name"], storage=first["storage"]).user_attrs["signature"]
    _retrain_upstream(synth)
    again = tune(cfg, synth, n_trials=1, progress=False, total=True)
    study = optuna.load_study(study_name=again["study_name"], storage=again["storage"])
    assert study.user_attrs["signature"] != old_sig
    assert again["n_complete"] == 1 and again["this_worker_trials"] == 1   # a trial on the new inputs
    url = f"sqlite:///{synth.workdir / 'shared.db'}"
    tune(cfg, synth, n_trials=1, storage=url, study_name="shared", progress=False)
    _retrain_upstream(synth, fold=1)
    with pytest.raises(TuningError, match="another config or other upstream"):
        tune(cfg, synth, n_trials=1, storage=url, study_name="shared", progress=False)


def test_submission_with_changed_test_predictions_is_rewritten(synth):
    import numpy as np
    from rakuten.artifacts import Experiment, Predictions
    from rakuten.second_level.api import load_stack, submit_best
    from rakuten.second_level.stacker import run_stack
    run_stack(load_stack("stack_lgbm", overrides=SMALL_STACK), synth, progress=False)
    first = submit_best(synth, "stack_lgbm")
    before = first.read_text()
    exp = Experiment(synth.oof_dir, "stack_lgbm")
    for k in range(5):       # test predictions change, the OOF (and so the file name) does not
        t = Predictions.load(exp.test_path(k))
        t.logits = np.roll(t.logits, 1, axis=1)
        t.save(exp.test_path(k))
    second = submit_best(synth, "stack_lgbm")
    assert second == first
    assert second.read_text() != before


def test_force_run_that_fails_keeps_the_finished_folds(demo):
    r = run("run_fold.py", "--workdir", demo, "--fold", "0,1", *TFIDF)
    assert r.returncode == 0, r.stderr[-2000:]
    exp = demo / "oof" / "tfidf_text"
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file() and p.suffix in (".npz", ".json")}
    # valid for the config schema, but the vectoriser rejects it once training starts
    r = run("run_fold.py", "--workdir", demo, "--fold", "0", "--force", *TFIDF, "tfidf.word_ngrams=[3,1]")
    assert r.returncode != 0
    after = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file() and p.suffix in (".npz", ".json")}
    assert after == before
