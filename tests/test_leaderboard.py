"""Leaderboard: scores recomputed from artifacts, kinds, incomplete experiments left out, reports written."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rakuten.artifacts import Experiment
from rakuten.config import load_config
from rakuten.folds import folds_path, read_folds
from rakuten.metrics import scores
from rakuten.reporting.anchors import ANCHORS, anchors
from rakuten.reporting.leaderboard import build_leaderboard
from rakuten.second_level.fusion import FUSION_DEFAULTS, run_fusion
from rakuten.second_level.stacker import STACK_DEFAULTS, run_stack
from synthetic import K, SEED, make_synthetic

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"experiment", "kind", "macro_f1", "weighted_f1", "accuracy"}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    paths = make_synthetic(tmp_path_factory.mktemp("board"))
    run_fusion(load_config("fusion/fusion_late_weighted.yaml", defaults=copy.deepcopy(FUSION_DEFAULTS)), paths,
               progress=False)
    run_stack(load_config("stack/stack_lgbm.yaml", ["lgbm.num_leaves=7", "lgbm.max_bin=31", "lgbm.num_threads=1",
                                                    "lgbm.num_boost_round=20", "lgbm.early_stopping_rounds=0",
                                                    "stack.meta_features=false"],
                          defaults=copy.deepcopy(STACK_DEFAULTS)), paths, progress=False)
    # an unfinished experiment: one fold file missing
    inc = Experiment(paths.oof_dir, "text_tiny_broken")
    src = Experiment(paths.oof_dir, "text_tiny_title")
    inc.dir.mkdir()
    for k in range(K - 1):
        (inc.dir / f"fold{k}.npz").write_bytes(src.oof_path(k).read_bytes())
        (inc.dir / f"test_fold{k}.npz").write_bytes(src.test_path(k).read_bytes())
    inc.update_meta(**{**src.read_meta(), "name": "text_tiny_broken"})
    # meta.json claims a score the artifacts do not support: the leaderboard must not believe it
    src.update_meta(oof={"macro_f1": 0.999, "weighted_f1": 0.999, "accuracy": 0.999})
    rows = build_leaderboard(paths)
    return paths, rows


def test_rows_have_required_keys_and_all_kinds(board):
    paths, rows = board
    data = json.loads((paths.submissions_dir / "leaderboard.json").read_text())
    assert isinstance(data, list) and len(data) == len(rows) == 7
    assert all(REQUIRED <= set(r) for r in data)
    assert {r["kind"] for r in data} == {"unimodal", "fusion", "stack"}
    assert [r["macro_f1"] for r in data] == sorted((r["macro_f1"] for r in data), reverse=True)


def test_scores_are_recomputed_from_artifacts(board):
    paths, rows = board
    folds = read_folds(folds_path(paths.folds_dir, K, SEED))
    oof = Experiment(paths.oof_dir, "text_tiny_title").load_oof(folds)
    row = next(r for r in rows if r["experiment"] == "text_tiny_title")
    want = scores(folds["label"].to_numpy(), oof.logits)
    assert row["macro_f1"] == pytest.approx(want["macro_f1"]) and row["macro_f1"] < 0.9
    assert row["accuracy"] == pytest.approx(want["accuracy"])


def test_incomplete_experiment_is_left_out_and_said_so(board):
    paths, rows = board
    assert "text_tiny_broken" not in {r["experiment"] for r in rows}
    md = (paths.submissions_dir / "leaderboard.md").read_text()
    assert "text_tiny_broken" in md and "not finished" in md


def test_reports_for_the_best_model(board):
    paths, rows = board
    best = rows[0]["experiment"]
    out = paths.submissions_dir
    for name in ("leaderboard.png", f"confusion_{best}.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / f"per_class_{best}.csv")
    assert list(table.columns) == ["prdtypecode", "category", "precision", "recall", "f1", "support"]
    assert len(table) == 27 and table["support"].sum() == rows[0]["n_rows"]
    assert table.set_index("prdtypecode").loc[2583, "category"] == "2583 - Piscine et accessoires"
    md = (out / "leaderboard.md").read_text()
    assert f"## Per class: {best}" in md and "Weakest recall" in md
    assert "| 2705 | 2705 - Livres neufs |" in md     # the per-class table names its codes
    # no submission in this workdir: the board's best (a second level) beside its best input, per class
    assert rows[0]["kind"] in ("fusion", "stack")
    assert (out / f"per_class_f1_{best}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"](per_class_f1_{best}.png)" in md and f"## Per-class F1: {best} vs {rows[0]['best_input']}" in md
    assert "other data" in md.lower()


def test_anchors_carry_source_metric_split_and_other_data_flag():
    assert len(ANCHORS) > 20
    for a in ANCHORS:
        assert a.source and a.split and a.table
        assert a.metric in {"macro_f1", "weighted_f1", "accuracy"}
        assert 0 < a.value < 1 and a.other_data is True
    best_thesis = max(a.value for a in anchors("macro_f1") if a.table == "Table 6.1")
    assert best_thesis == pytest.approx(0.9267)
    assert any(a.metric == "weighted_f1" and a.value == pytest.approx(0.911) for a in ANCHORS)
    assert anchors("macro_f1", plotted_only=True)


def test_leaderboard_script(board):
    paths, _ = board
    r = subprocess.run([sys.executable, str(REPO / "src" / "leaderboard.py"), "--workdir", str(paths.workdir),
                        "--data-dir", str(paths.data_dir)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "fusion_late_weighted" in r.stdout and "stack_lgbm" in r.stdout


def test_second_level_table_compares_each_model_with_its_best_input(board):
    paths, rows = board
    by = {r["experiment"]: r for r in rows}
    stack = by["stack_lgbm"]
    # the stack's inputs that are on the board (text_tiny_broken is not: it is incomplete)
    meta = Experiment(paths.oof_dir, "stack_lgbm").read_meta()
    assert list(meta["upstream"]) == list(meta["config"]["stack"]["inputs"])
    on_board = [n for n in meta["upstream"] if n in by]
    best = max(on_board, key=lambda n: by[n]["macro_f1"])
    assert stack["best_input"] == best
    assert stack["margin_over_best_input"] == pytest.approx(stack["macro_f1"] - by[best]["macro_f1"])
    assert stack["margin_over_baseline"] is None  # no tfidf_svm_tuned run here
    md = (paths.submissions_dir / "leaderboard.md").read_text()
    assert "## Second level vs its inputs" in md and "| stack_lgbm |" in md.split("## Second level")[1]
    assert "best_input" not in by["text_tiny_title"]  # unimodal rows get no comparison
    fusion_up = Experiment(paths.oof_dir, "fusion_late_weighted").read_meta()["upstream"]
    assert by["fusion_late_weighted"]["best_input"] == max((n for n in fusion_up if n in by),
                                                           key=lambda n: by[n]["macro_f1"])


def test_second_level_checks_against_best_input_and_baseline():
    from rakuten.reporting.leaderboard import second_level_checks
    rows = [{"experiment": "s", "kind": "stack", "macro_f1": 0.80, "fold_hash": "h"},
            {"experiment": "a", "kind": "unimodal", "macro_f1": 0.82, "fold_hash": "h"},
            {"experiment": "b", "kind": "unimodal", "macro_f1": 0.70, "fold_hash": "h"},
            {"experiment": "tfidf_svm_tuned", "kind": "unimodal", "macro_f1": 0.75, "fold_hash": "h"}]
    (c,) = second_level_checks(rows, {"s": ["a", "b", "missing"]})
    assert c["best_input"] == "a" and c["beats_best_input"] is False
    assert c["margin"] == pytest.approx(-0.02) and c["baseline_margin"] == pytest.approx(0.05)
    rows[3]["fold_hash"] = "other"  # a baseline on other folds is not comparable
    (c,) = second_level_checks(rows, {"s": ["a", "b"]})
    assert "baseline_margin" not in c
