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


@pytest.mark.slow   # runs the real scripts several times (10-40 s on 2 busy cores)
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
    from rakuten.training.fold_data import experiment_data_key, prepare_fold_data
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
    from rakuten.training.features import frozen_feature_key
    from rakuten.training.fold_data import prepare_fold_data
    paths = Paths.make(demo)
    ds = load_dataset(paths)
    keys = set()
    for ov in ([], ["data.cache_size=96"], ["model.pretrained=true"]):
        cfg = load_experiment("image_tiny", ["folds.k=3", "model.freeze_backbone=true", *ov])
        keys.add(frozen_feature_key(cfg, prepare_fold_data(cfg, paths, ds)))
    assert len(keys) == 3


@pytest.mark.slow   # runs the real scripts several times (10-40 s on 2 busy cores)
def test_second_process_on_a_locked_fold_exits_with_one_line(demo):
    from rakuten.training.fold_state import fold_lock
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
    from rakuten.stages import submit_best
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
    from rakuten.second_level.api import load_stack
    from rakuten.stages import submit_best
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


# ------------------------------------------------------------------------- one of each, in one place
def test_one_config_hash_one_fold_lookup_one_class_weights():
    """Each is defined once in src/, and the reports read lineage without importing the second level."""
    import ast
    defs: dict[str, list[str]] = {}
    for f in (REPO / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef):
                defs.setdefault(node.name, []).append(str(f.relative_to(REPO)))
    assert defs["config_hash"] == ["src/rakuten/lineage.py"]
    assert defs["fold_file"] == ["src/rakuten/lineage.py"]
    assert defs["class_weights"] == ["src/rakuten/labels.py"]
    for gone in ("resolve_fold_file", "folds_of_experiment", "fold_file_for", "experiment_folds"):
        assert gone not in defs, defs.get(gone)
    code = ("import sys, rakuten.reporting.leaderboard; "
            "print([m for m in sys.modules if m.startswith('rakuten.second_level')])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**ENV, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-1000:])


def test_second_level_of_an_older_hash_is_redone_with_its_reason(synth, capsys):
    """An artifact whose config hash came from an older version of the code (the two config_hash
    functions were merged, so every hash changed) is redone, saying so in one line: not reused, no crash."""
    import json
    from rakuten.artifacts import Experiment
    from rakuten.second_level.api import load_stack
    from rakuten.second_level.stacker import run_stack
    cfg = load_stack("stack_lgbm", overrides=SMALL_STACK)
    run_stack(cfg, synth, progress=False)
    meta_path = Experiment(synth.oof_dir, "stack_lgbm").meta_path
    meta = json.loads(meta_path.read_text())
    meta["config_hash"] = "0123456789abcdef"
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    res = run_stack(cfg, synth, progress=False)
    out = capsys.readouterr().out
    assert "stack_lgbm: redone because: made by an older version of the code" in out, out
    assert sorted(res["folds"]) == [0, 1, 2, 3, 4] and not res["skipped"]
    # and a changed key is named
    capsys.readouterr()
    run_stack(load_stack("stack_lgbm", overrides=SMALL_STACK + ["lgbm.lambda_l2=2.0"]), synth, progress=False,
              folds=[0])
    assert "stack_lgbm: redone because: config changed (lgbm.lambda_l2)" in capsys.readouterr().out


# --------------------------------------------------------------------------- selection without optimism
def _fake_oof(exp, folds_df, wrong_frac: dict, seed: int):
    """Rewrite ``exp``'s OOF files: one-hot logits of the true label, except ``wrong_frac[k]`` of
    fold k's rows, predicted as the next class."""
    import numpy as np
    from rakuten.artifacts import Predictions
    from rakuten.labels import NUM_CLASSES
    rng = np.random.default_rng(seed)
    for k in sorted(folds_df["fold"].unique()):
        part = folds_df[folds_df["fold"] == k]
        y = part["label"].to_numpy(np.int64)
        pred = y.copy()
        bad = rng.choice(len(y), size=int(round(wrong_frac[int(k)] * len(y))), replace=False)
        pred[bad] = (y[bad] + 1) % NUM_CLASSES
        logits = np.full((len(y), NUM_CLASSES), -5.0, np.float32)
        logits[np.arange(len(y)), pred] = 5.0
        Predictions(part["id"].to_numpy(np.int64), logits, None, y).save(exp.oof_path(int(k)))


def test_tuned_vs_untuned_is_chosen_with_its_nested_score_beside_the_optimistic_one(synth, capsys):
    """A `_tuned` whose edge comes from one fold: it wins on all rows (what is submitted, the
    optimistic score), but the nested choice (for each fold, the better on the other folds) scores
    lower, and both are printed and recorded in the submission's sidecar."""
    import json
    import shutil
    import numpy as np
    from rakuten.artifacts import Experiment
    from rakuten.folds import folds_path, read_folds
    from rakuten.second_level.api import load_stack
    from rakuten.stages import submit_best
    from rakuten.metrics import f1 as _f1
    from rakuten.second_level.stacker import run_stack
    from rakuten.reporting.submission import sidecar_path
    cfg = load_stack("stack_lgbm", overrides=SMALL_STACK)
    run_stack(cfg, synth, progress=False)
    base, tuned = Experiment(synth.oof_dir, "stack_lgbm"), Experiment(synth.oof_dir, "stack_lgbm_tuned")
    shutil.copytree(base.dir, tuned.dir)
    meta = base.read_meta()
    meta["name"] = "stack_lgbm_tuned"
    meta["config"] = {**meta["config"], "name": "stack_lgbm_tuned", "tune": {"base_signature": meta["config_hash"]}}
    tuned.meta_path.write_text(json.dumps(meta))
    folds_df = read_folds(folds_path(synth.folds_dir, 5, 42))
    _fake_oof(base, folds_df, {k: 0.10 for k in range(5)}, seed=1)
    _fake_oof(tuned, folds_df, {0: 0.0, 1: 0.12, 2: 0.12, 3: 0.12, 4: 0.12}, seed=2)
    capsys.readouterr()
    path = submit_best(synth, "stack_lgbm", fmt="challengedata")
    out = capsys.readouterr().out
    assert path.name.startswith("stack_lgbm_tuned_cv"), (path.name, out)
    sel = json.loads(sidecar_path(path).read_text())["selection"]
    y, fold = folds_df["label"].to_numpy(), folds_df["fold"].to_numpy()
    p_base, p_tuned = base.load_oof(folds_df).logits.argmax(1), tuned.load_oof(folds_df).logits.argmax(1)
    # by hand: fold 0 goes to the untuned model (better on folds 1-4), the others to the tuned one
    nested = np.where(fold == 0, p_base, p_tuned)
    assert sel["per_fold"] == {"0": "stack_lgbm", "1": "stack_lgbm_tuned", "2": "stack_lgbm_tuned",
                               "3": "stack_lgbm_tuned", "4": "stack_lgbm_tuned"}
    assert np.isclose(sel["nested"], _f1(y, nested, "weighted_f1"))
    assert np.isclose(sel["optimistic"], _f1(y, p_tuned, "weighted_f1"))
    assert sel["nested"] < sel["optimistic"]
    assert f"{sel['optimistic']:.4f} optimistic" in out and f"{sel['nested']:.4f} nested" in out


# ------------------------------------------------------------------------------ run_all, rerun
# Two fast text members, two stacks, one tuned stack, a chosen submission: ~30 s on 2 cores.
TINY_PRESET = """\
name: lineage_tiny
demo_data: {n_train: 300, n_test: 30, seed: 3, image_size: 32}
folds: {k: 3, seed: 42}
experiments: [tfidf_svm_text, knn_tfidf_text]
overrides:
  all: {tfidf.max_features: 3000}
  stack_cpu_text_lgbm: {stack.inputs: [tfidf_svm_text, knn_tfidf_text], lgbm.num_boost_round: 20,
                        lgbm.early_stopping_rounds: 0, lgbm.num_threads: 1, lgbm.min_data_in_leaf: 10}
  stack_cpu_text_logreg: {stack.inputs: [tfidf_svm_text, knn_tfidf_text]}
fusion: []
stack: [stack_cpu_text_logreg, stack_cpu_text_lgbm]
tune: {stack_cpu_text_lgbm: {trials: 1}}
submit: [stack_cpu_text_logreg, stack_cpu_text_lgbm]
"""


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst, symlinks=True)     # copy2: mtimes kept, as cp -a or rsync -a
    return dst


@pytest.mark.slow   # runs the real scripts several times (10-40 s on 2 busy cores)
def test_run_all_rerun_reuses_all_and_one_change_redoes_exactly_downstream(finished, tmp_path):
    preset, src = finished
    wd = _copy(src, tmp_path / "wd")
    r = run("run_all.py", "--preset", preset, "--workdir", wd, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "redone because" not in r.stdout and "nothing redone: every artifact reused" in r.stdout, r.stdout[-3000:]
    # one input changes: the SVM's C. Without --force a stale unimodal model is one line naming it
    changed = tmp_path / "changed.yaml"
    changed.write_text(TINY_PRESET.replace("  all: {tfidf.max_features: 3000}\n",
                                           "  all: {tfidf.max_features: 3000}\n  tfidf_svm_text: {tfidf.C: 2.0}\n"))
    line = one_line_error(run("run_all.py", "--preset", changed, "--workdir", wd, "--no-progress"))
    assert "config changed (tfidf.C)" in line and "--force" in line
    r = run("run_all.py", "--preset", changed, "--workdir", wd, "--no-progress", "--force")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    redone = sorted(ln.strip() for ln in r.stdout.splitlines() if "redone because:" in ln)
    assert redone == sorted([
        "tfidf_svm_text: redone because: config changed (tfidf.C) (the old artifacts are deleted once the new "
        "fold is written)",
        "stack_cpu_text_logreg: redone because: upstream tfidf_svm_text changed",
        "stack_cpu_text_lgbm: redone because: upstream tfidf_svm_text changed",
        "study stack_cpu_text_lgbm: redone because: made on another config or other upstream artifacts; started afresh",
        "stack_cpu_text_lgbm_tuned: redone because: upstream tfidf_svm_text changed"]), r.stdout[-4000:]
    assert "  unimodal     1 reused, 1 redone (tfidf_svm_text)" in r.stdout        # knn_tfidf_text kept
    assert "  folds        1 reused" in r.stdout


@pytest.mark.slow   # runs the real scripts several times (10-40 s on 2 busy cores)
def test_copied_workdir_is_self_contained(finished, tmp_path):
    """Artifacts record paths relative to the workdir: a copy (the original gone) reuses everything."""
    import shutil
    preset, src = finished
    first = _copy(src, tmp_path / "first")
    for sub in ("folds", "oof", "submissions"):     # the artifacts (caches and the data are not)
        for f in list((first / sub).rglob("*.json")) + list((first / sub).rglob("*.yaml")):
            assert str(src) not in f.read_text(), f"{f.relative_to(first)} names the original workdir"
    moved = _copy(first, tmp_path / "elsewhere" / "wd")
    shutil.rmtree(first)
    r = run("run_all.py", "--preset", preset, "--workdir", moved, "--no-progress")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "redone because" not in r.stdout and "nothing redone: every artifact reused" in r.stdout, r.stdout[-3000:]


@pytest.mark.slow   # runs the real scripts several times (10-40 s on 2 busy cores)
def test_unimodal_of_an_older_hash_is_redone_with_its_reason(finished, tmp_path):
    import json
    preset, src = finished
    wd = _copy(src, tmp_path / "wd")
    meta_path = wd / "oof" / "knn_tfidf_text" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config_hash"] = "0123456789ab"      # 12 hex digits: what the unimodal config_hash wrote before
    meta_path.write_text(json.dumps(meta))
    line = one_line_error(run("run_all.py", "--preset", preset, "--workdir", wd, "--no-progress"))
    assert "made by an older version of the code" in line and "--force" in line
    r = run("run_all.py", "--preset", preset, "--workdir", wd, "--no-progress", "--force")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "knn_tfidf_text: redone because: made by an older version of the code" in r.stdout
    assert "  unimodal     1 reused, 1 redone (knn_tfidf_text)" in r.stdout


def test_a_key_added_at_its_old_behaviour_keeps_earlier_hashes():
    """``loss.class_weights`` came after many runs: at ``frequency`` (the rule before it existed) a
    config hashes as it did without the key, so finished artifacts stay valid; ``difficulty`` is
    another model and another hash."""
    from rakuten.experiment import load_experiment
    from rakuten.lineage import config_hash
    cfg = load_experiment("image_tiny")
    assert cfg.loss.class_weights == "frequency"
    old = cfg.to_dict()
    del old["loss"]["class_weights"]                    # a meta.json written before the key
    assert config_hash(cfg) == config_hash(old)
    assert config_hash(load_experiment("image_tiny", ["loss.class_weights=difficulty"])) != config_hash(cfg)
