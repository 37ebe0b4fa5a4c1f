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
    assert "other data" in line
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
