"""Data-parallel training inside a fold: `accelerate launch` with 2 CPU processes (gloo) writes the
same kind of artifacts as one process, only rank 0 writes, and the macro-F1 is close."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rakuten.artifacts import Experiment
from rakuten.folds import read_folds
from rakuten.reporting.metrics import scores

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
       "OMP_NUM_THREADS": "1"}
ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate not installed")
def test_two_process_fold_matches_one_process(tmp_path):
    from rakuten.data.demo import generate_demo_dataset
    data = tmp_path / "data"
    generate_demo_dataset(data, n_train=600, n_test=40, seed=11, image_size=32, progress=False)
    args = ["--data-dir", str(data), "--config", "text_tiny_title", "--fold", "0", "folds.k=3",
            "train.epochs=10", "train.batch_size=16", "train.lr=3e-3", "train.patience=10", "--no-progress"]
    results = {}
    for name, launcher in (("single", [sys.executable]),
                           ("ddp", [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2",
                                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                    "--main_process_port", "29517"])):
        wd = tmp_path / name
        subprocess.run([sys.executable, str(REPO / "src" / "make_folds.py"), "--workdir", str(wd), "--data-dir",
                        str(data), "--k", "3"], check=True, env=ENV, capture_output=True)
        r = subprocess.run([*launcher, str(REPO / "src" / "run_fold.py"), "--workdir", str(wd), *args],
                           env=ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        exp = Experiment(wd / "oof", "text_tiny_title")
        folds = read_folds(wd / "folds" / "folds_k3_seed42.csv")
        p = exp.load_test([0])
        assert len(p.ids) == 40
        oof_rows = folds[folds.fold == 0]
        from rakuten.artifacts import Predictions
        va = Predictions.load(exp.oof_path(0))
        assert set(va.ids) == set(oof_rows.id)
        assert r.stdout.count("***** text_tiny_title fold 0 *****") == 1  # only rank 0 reports
        assert not list((exp.dir).glob(".*.tmp")) and not (exp.dir / "checkpoints" / "fold0_last.pt").exists()
        results[name] = scores(va.labels, va.logits)["macro_f1"]
    assert results["single"] > 0.2 and results["ddp"] > 0.2, results
    # Two ranks see half the batches each (double effective batch): close, not identical.
    assert abs(results["single"] - results["ddp"]) < 0.15, results
