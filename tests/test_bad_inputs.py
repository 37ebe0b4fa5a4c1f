"""Bad inputs through the real stage scripts: one line on stderr, exit 2, and nothing on disk touched.

The workdir is the synthetic one of ``synthetic.py`` (finished upstream experiments, a fold file and
a ChallengeData-format dataset), so "nothing touched" is checked against finished work.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.fixture
def synth(tmp_path):
    """A fresh finished synthetic workdir (each test may damage its own)."""
    return make_synthetic(tmp_path / "wd")


def script(name: str, paths, *args, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "src" / name), "--workdir", str(paths.workdir),
           "--data-dir", str(paths.data_dir), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its size and mtime: what "nothing touched" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-2000:]
    for w in words:
        assert w in errors[0], errors[0]


BAD_OVERRIDES = [
    ("run_fold.py", ["--config", "text_tiny_title", "--fold", "0"], "train.epochs=abc", "train.epochs"),
    ("run_fold.py", ["--config", "text_tiny_title", "--fold", "0"], "train.lr=-1", "train.lr"),
    ("run_fold.py", ["--config", "text_tiny_title", "--fold", "0"], "train.batch_size=0", "train.batch_size"),
    ("run_fold.py", ["--config", "text_tiny_title", "--fold", "0"], "train.epochs=0", "train.epochs"),
    ("run_fold.py", ["--config", "image_tiny", "--fold", "0", "--force"], "train.epochs=abc", "train.epochs"),
    ("stack.py", ["--config", "stack_lgbm"], "lgbm.num_leaves=abc", "lgbm.num_leaves"),
    ("stack.py", ["--config", "stack_lgbm"], "lgbm.feature_fraction=0", "lgbm.feature_fraction"),
    ("fuse.py", ["--config", "fusion_late_weighted"], "train.epochs=abc", "train.epochs"),
    ("tune.py", ["--config", "stack_lgbm", "--trials", "1"], "lgbm.learning_rate=-0.1", "lgbm.learning_rate"),
]


@pytest.mark.parametrize("name,args,override,key", BAD_OVERRIDES,
                         ids=[f"{n}:{o}" for n, _, o, _ in BAD_OVERRIDES])
def test_bad_config_value_is_one_line_before_any_work(synth, name, args, override, key):
    before = snapshot(synth.workdir)
    r = script(name, synth, *args, override)
    assert_one_line_error(r, key)
    assert snapshot(synth.workdir) == before


def _small_stack(paths, *extra):
    return script("stack.py", paths, "--config", "stack_lgbm", "--no-progress", "lgbm.num_threads=1",
                  "lgbm.num_leaves=7", "lgbm.max_bin=31", "lgbm.num_boost_round=10",
                  "lgbm.early_stopping_rounds=0", *extra)


def test_failed_stack_with_changed_config_keeps_the_finished_experiment(synth):
    r = _small_stack(synth)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = synth.oof_dir / "stack_lgbm" / "meta.json"
    before = meta.read_text()
    # a changed config that then fails (fold 9 does not exist): the finished stack must survive
    r = _small_stack(synth, "lgbm.min_data_in_leaf=5", "--fold", "9")
    assert_one_line_error(r, "fold 9")
    assert meta.read_text() == before
    assert len(json.loads(before)["folds"]) == 5


def test_leaderboard_is_not_replaced_by_an_empty_one(synth):
    r = script("leaderboard.py", synth)
    assert r.returncode == 0, r.stderr[-2000:]
    board = synth.submissions_dir / "leaderboard.json"
    good = board.read_text()
    assert json.loads(good)
    # the fold file changes under the finished experiments: none of them is listed any more
    fold_file = next(synth.folds_dir.glob("folds_*.csv"))
    lines = fold_file.read_text().splitlines()
    fold_file.write_text("\n".join(lines[:1] + lines[2:] + lines[1:2]) + "\n")
    r = script("leaderboard.py", synth)
    assert_one_line_error(r, "leaderboard")
    assert board.read_text() == good


def test_failed_fuse_with_changed_config_keeps_the_finished_experiment(synth):
    small = ["--config", "fusion_late_weighted", "--no-progress", "train.epochs=3", "train.early_stopping=fixed"]
    r = script("fuse.py", synth, *small)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = synth.oof_dir / "fusion_late_weighted" / "meta.json"
    before = meta.read_text()
    r = script("fuse.py", synth, *small, "train.lr=0.01", "--fold", "9")
    assert_one_line_error(r, "fold 9")
    assert meta.read_text() == before
