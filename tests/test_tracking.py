"""MLflow tracking (``run_all.py --track``): a tiny pipeline (a TF-IDF model, a torch model, a fusion
and a stack) tracked into a local store inside its workdir, then read back through MLflow's client:
one parent run, a nested run per experiment with its resolved config, per-fold and per-epoch metrics,
OOF scores and plots; the leaderboard, the nested choice and the submission on the parent."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from test_bundle import ENV, REPO

mlflow = pytest.importorskip("mlflow")   # requirements-tracking.txt; CI installs it (.ci/run)

pytestmark = pytest.mark.slow    # a whole (tiny) pipeline run, ~40 s on 2 busy cores

PRESET = """\
name: track_tiny
demo_data: {n_train: 270, n_test: 27, seed: 7, image_size: 32}
folds: {k: 2, seed: 42}
experiments: [tfidf_text, text_tiny_title]
overrides:
  all: {train.epochs: 3, train.batch_size: 16, train.lr: 3.0e-3}
  fusion_late_weighted: {fusion.inputs: [tfidf_text, text_tiny_title], train.epochs: 10}
  stack_lgbm: {stack.inputs: [tfidf_text, text_tiny_title], stack.meta_features: false, lgbm.num_boost_round: 20,
               lgbm.early_stopping_rounds: 0, lgbm.num_threads: 1, lgbm.num_leaves: 7, lgbm.max_bin: 31}
fusion: [fusion_late_weighted]
stack: [stack_lgbm]
tune: {}
submit: [fusion_late_weighted, stack_lgbm]
"""
EXPERIMENTS = ["tfidf_text", "text_tiny_title", "fusion_late_weighted", "stack_lgbm"]


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "src" / "run_all.py"), *map(str, args)], capture_output=True,
                          text=True, env={k: v for k, v in ENV.items() if k != "MLFLOW_TRACKING_URI"}, timeout=600)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    preset = root / "track_tiny.yaml"
    preset.write_text(PRESET)
    wd = root / "wd"
    r = _run("--preset", preset, "--workdir", wd, "--no-progress", "--track")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{wd / 'mlruns' / 'mlflow.db'}")   # the default store: inside the workdir
    exp = client.get_experiment_by_name("rakuten")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    return wd, client, runs


def test_one_parent_run_and_a_nested_run_per_experiment(tracked):
    wd, _, runs = tracked
    assert set(runs) == {"track_tiny", *EXPERIMENTS}
    parent = runs["track_tiny"]
    assert parent.info.status == "FINISHED" and parent.data.tags["workdir"] == str(wd)
    for name in EXPERIMENTS:
        r = runs[name]
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        meta = json.loads((wd / "oof" / name / "meta.json").read_text())
        assert r.data.tags["kind"] == meta["kind"]


def test_config_fold_epoch_and_oof_metrics_read_back(tracked):
    wd, client, runs = tracked
    board = {r["experiment"]: r for r in json.loads((wd / "submissions" / "leaderboard.json").read_text())}
    for name in EXPERIMENTS:
        r = runs[name]
        meta = json.loads((wd / "oof" / name / "meta.json").read_text())
        assert r.data.metrics["oof_macro_f1"] == pytest.approx(board[name]["macro_f1"])
        folds = client.get_metric_history(r.info.run_id, "fold_macro_f1")
        assert {m.step: m.value for m in folds} == pytest.approx({int(k): v["macro_f1"] for k, v in meta["folds"].items()})
    # the resolved config, with the preset's overrides applied
    assert runs["text_tiny_title"].data.params["train.epochs"] == "3"
    assert runs["fusion_late_weighted"].data.params["fusion.inputs"] == str(["tfidf_text", "text_tiny_title"])
    assert runs["stack_lgbm"].data.params["upstream"] == "tfidf_text,text_tiny_title"
    # per-epoch metrics of the torch model: its summary_fold<k>.csv, epoch by epoch
    for k in (0, 1):
        summary = pd.read_csv(wd / "oof" / "text_tiny_title" / f"summary_fold{k}.csv")
        hist = client.get_metric_history(runs["text_tiny_title"].info.run_id, f"fold{k}/val_macro_f1")
        hist = sorted(hist, key=lambda m: m.step)
        assert [m.step for m in hist] == summary["epoch"].tolist()
        assert [m.value for m in hist] == pytest.approx(summary["val_macro_f1"].tolist())
        assert len(client.get_metric_history(runs["text_tiny_title"].info.run_id, f"fold{k}/train_loss")) == len(summary)
    assert not any(m.startswith("fold0/") for m in runs["tfidf_text"].data.metrics)   # no epochs: none logged


def _artifacts(client, run_id, path=None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def test_plots_leaderboard_choice_and_submission_are_artifacts(tracked):
    wd, client, runs = tracked
    title = _artifacts(client, runs["text_tiny_title"].info.run_id)
    assert {"meta.json", "per_class_text_tiny_title.csv", "plots/confusion_text_tiny_title.png",
            "plots/learning_curves_text_tiny_title.png"} <= title
    assert "plots/confusion_stack_lgbm.png" in _artifacts(client, runs["stack_lgbm"].info.run_id)
    parent = runs["track_tiny"]
    files = _artifacts(client, parent.info.run_id)
    submitted = json.loads((wd / "submissions" / "submitted.json").read_text())
    sub = submitted["submission"]
    assert {"leaderboard/leaderboard.md", "leaderboard/leaderboard.json", "leaderboard/learning_curves.png",
            f"submission/{sub}", f"submission/{sub}.json", "selection/selection.json"} <= files
    side = json.loads((wd / "submissions" / f"{sub}.json").read_text())["selection"]
    assert parent.data.params["chosen"] == side["chosen"] and parent.data.params["submitted"] == submitted["experiment"]
    assert parent.data.metrics[f"nested_{side['metric']}"] == pytest.approx(side["nested"])
    local = client.download_artifacts(parent.info.run_id, f"submission/{sub}")
    assert open(local).read() == (wd / "submissions" / sub).read_text()


def test_tracking_is_off_by_default_and_the_uri_needs_track(tmp_path):
    from rakuten.reporting import tracking
    assert tracking.active() is None and tracking.log_experiment(None, "x") is None   # no session: a no-op
    r = _run("--preset", "smoke", "--workdir", tmp_path / "wd", "--tracking-uri", "sqlite:///x.db")
    assert r.returncode != 0 and "--tracking-uri is used only with --track" in r.stderr
    assert not (tmp_path / "wd").exists()
