"""Parallel folds: the meta.json lock, and a local Ray launch whose artifacts equal the serial path's."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rakuten.artifacts import Experiment

REPO = Path(__file__).resolve().parents[1]
UNIMODAL = ["tfidf_text", "text_tiny_title"]
BROKEN = "text_tiny_description"
OVERRIDES = ["folds.k=2", "train.epochs=1"]
STACK_FAST = ["lgbm.num_leaves=7", "lgbm.max_bin=31", "lgbm.num_threads=1", "lgbm.early_stopping_rounds=0",
              "lgbm.num_boost_round=10", "stack.meta_features=false"]


# ------------------------------------------------------------------------------------ meta.json lock
def _update_many(root: str, fold: int, n: int, barrier) -> None:
    exp = Experiment(root, "shared")
    barrier.wait()          # every process starts its read-modify-writes at the same moment
    for i in range(n):
        exp.update_meta(folds={fold: {"macro_f1": fold / 10, "i": i}}, **{f"writer{fold}": i})


def test_concurrent_fold_updates_of_one_meta_all_land(tmp_path):
    """N processes update different folds of one experiment at once: no entry is lost."""
    n_proc, n_updates = 8, 30
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    barrier = ctx.Barrier(n_proc)
    procs = [ctx.Process(target=_update_many, args=(str(tmp_path), k, n_updates, barrier)) for k in range(n_proc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    meta = Experiment(tmp_path, "shared").read_meta()
    assert sorted(meta["folds"], key=int) == [str(k) for k in range(n_proc)]
    assert all(meta["folds"][str(k)] == {"macro_f1": k / 10, "i": n_updates - 1} for k in range(n_proc))
    assert all(meta[f"writer{k}"] == n_updates - 1 for k in range(n_proc))
    # only the artifact, its lock and no temporary file are left
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["meta.json", "meta.json.lock"]


def test_update_meta_serial_semantics_unchanged(tmp_path):
    exp = Experiment(tmp_path, "e")
    exp.update_meta(name="e", folds={0: {"a": 1}})
    exp.update_meta(folds={1: {"a": 2}}, oof={"macro_f1": 0.5})
    exp.update_meta(folds={0: {"a": 3}})
    assert exp.read_meta() == {"name": "e", "folds": {"0": {"a": 3}, "1": {"a": 2}}, "oof": {"macro_f1": 0.5}}


# ----------------------------------------------------------------------------------- launch.py, no Ray
def _env(**extra) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0", **extra)
    env.pop("RAKUTEN_WORKDIR", None)
    return env


def _run(args: list[str], timeout: int = 240, rc: int = 0, **env) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                       env=_env(**env))
    assert r.returncode == rc, f"{args[0]} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Tiny demo data shared by two workdirs, each with its own 2-fold file; a preset of two tiny
    experiments, a late fusion of both and a stack of all three (the stack depends on the fusion),
    plus an experiment that fails (unknown backbone) and a fusion that needs it."""
    from rakuten.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("launch")
    data = root / "wd" / "data" / "demo"
    generate_demo_dataset(data, n_train=240, n_test=30, seed=0, image_size=64, progress=False)
    for wd in ("ray", "serial"):
        _run(["src/make_folds.py", "--workdir", str(root / wd), "--data-dir", str(data), "--k", "2"])
    preset = root / "launch_test.yaml"
    preset.write_text(yaml.safe_dump({
        "name": "launch_test", "folds": {"k": 2, "seed": 42}, "experiments": UNIMODAL + [BROKEN],
        "fusion": ["fusion_late_average", "fusion_late_weighted"], "stack": ["stack_lgbm"],
        "overrides": {BROKEN: {"model.backbone": "tiny:nonexistent"},
                      "fusion_late_average": {"fusion.inputs": UNIMODAL},
                      "fusion_late_weighted": {"fusion.inputs": ["tfidf_text", BROKEN]},
                      "stack_lgbm": {"stack.inputs": UNIMODAL + ["fusion_late_average"]}}}))
    return root, data, preset


@pytest.mark.slow     # the demo fixture: demo data and two make_folds.py runs (~10 s)
def test_missing_ray_is_one_line_naming_the_requirements(demo, tmp_path):
    """Without ray, launch.py exits 2 with one line that names requirements-distributed.txt."""
    root, data, preset = demo
    shadow = tmp_path / "noray"
    shadow.mkdir()
    (shadow / "ray.py").write_text("raise ImportError('no ray here')\n")
    r = subprocess.run([sys.executable, "src/launch.py", "--preset", str(preset), "--workdir", str(tmp_path / "wd"),
                        "--data-dir", str(data), *OVERRIDES], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=_env(PYTHONPATH=str(shadow)))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: ray is not installed; pip install -r requirements-distributed.txt"]


@pytest.mark.slow
def test_dry_run_plans_stages_without_ray(demo):
    root, data, preset = demo
    r = _run(["src/launch.py", "--preset", "demo", "--workdir", str(root / "ray"), "--data-dir", str(data),
              "--experiments", ",".join(UNIMODAL), "--folds", "1", "--dry-run", *OVERRIDES])
    assert "unimodal fold tasks: 2 over 2 experiment(s)" in r.stdout
    # a second level needs every fold of its inputs, and experiments neither launched nor on disk
    assert "not run: fusion fusion_hier_avg_avg: input text_tiny_title: fold(s) 0 neither complete" in r.stdout
    assert "not run: fusion fusion_baseline_concat: input text_tiny_text is not in this launch" in r.stdout
    assert not (root / "ray" / "oof" / "tfidf_text").exists()


# ------------------------------------------------------------------------------- launch.py on Ray
@pytest.mark.slow
def test_ray_launch_equals_serial_run(demo):
    """2 folds x 2 experiments + a fusion + a stack as Ray tasks; the same stages one by one through
    run_fold.py / fuse.py / stack.py in another workdir on the same data: identical artifacts. A
    failing experiment fails alone: what needs it does not run, everything else completes."""
    pytest.importorskip("ray")
    root, data, preset = demo
    ray_wd, ser_wd = root / "ray", root / "serial"
    fusion_args = [f"fusion.inputs=[{','.join(UNIMODAL)}]"]
    stack_args = STACK_FAST
    r = _run(["src/launch.py", "--preset", str(preset), "--workdir", str(ray_wd), "--data-dir", str(data),
              "--num-cpus", "2", "--cpus-per-task", "1",
              *[f"--stack-override={o}" for o in stack_args], *OVERRIDES], timeout=300, rc=1)
    out = r.stdout
    assert r.stderr.strip().splitlines()[-1] == (f"error: 1 task(s) failed ({BROKEN}/prepare); 3 more not run "
                                                 "because an upstream task failed")
    assert re.search(rf"failed  {BROKEN}/prepare: BackboneError: unknown tiny backbone 'tiny:nonexistent'", out)
    table = out[out.index("***** Results *****"):]
    for name in UNIMODAL:
        for k in (0, 1):
            assert f"done    {name}/fold{k} macro-F1" in out
    assert "done    text_tiny_title/prepare" in out          # the shared token cache, built once
    assert "done    fusion_late_average" in out and "done    stack_lgbm" in out
    # the stack waited for the fusion, the fusion for the four folds (Ray's dependency passing)
    order = re.findall(r"^\[\s*[\d.]+s\] done\s+(\S+)", out, flags=re.M)
    assert order.index("fusion_late_average") > max(order.index(f"{n}/fold{k}") for n in UNIMODAL for k in (0, 1))
    assert order.index("stack_lgbm") > order.index("fusion_late_average")
    assert all(f"unimodal  {n}" in table for n in UNIMODAL) and "stack     stack_lgbm" in table
    assert re.search(rf"unimodal  {BROKEN}\s+0\s+upstream failed\s+prepare: BackboneError", table)
    assert re.search(r"fusion    fusion_late_weighted\s+-\s+upstream failed\s+needs " + BROKEN, table)
    assert not (ray_wd / "oof" / "fusion_late_weighted").exists()

    # The serial path, stage by stage. Ray sets a task's OMP_NUM_THREADS to its CPUs (1 here); with
    # the same thread count the float reductions, and so the files, are bit for bit the same.
    common = ["--workdir", str(ser_wd), "--data-dir", str(data), "--no-progress"]
    for name in UNIMODAL:
        _run(["src/run_fold.py", "--config", name, "--fold", "all", *common, *OVERRIDES], OMP_NUM_THREADS="1")
    _run(["src/fuse.py", "--config", "fusion_late_average", *common, "folds.k=2", *fusion_args])
    _run(["src/stack.py", "--config", "stack_lgbm", *common, "folds.k=2",
          f"stack.inputs=[{','.join(UNIMODAL + ['fusion_late_average'])}]", *stack_args])

    for name in UNIMODAL + ["fusion_late_average", "stack_lgbm"]:
        a, b = Experiment(ray_wd / "oof", name), Experiment(ser_wd / "oof", name)
        for k in (0, 1):
            for pa, pb in ((a.oof_path(k), b.oof_path(k)), (a.test_path(k), b.test_path(k))):
                with np.load(pa) as za, np.load(pb) as zb:
                    assert sorted(za.files) == sorted(zb.files), pa
                    assert np.array_equal(za["ids"], zb["ids"]), pa
                    if "labels" in za.files:
                        assert np.array_equal(za["labels"], zb["labels"]), pa
                    for key in ("logits", "embeddings"):
                        if key in za.files:
                            assert np.allclose(za[key], zb[key], rtol=0, atol=1e-6), (pa, key)
        ma, mb = a.read_meta(), b.read_meta()
        assert sorted(ma["folds"]) == sorted(mb["folds"]) == ["0", "1"], name
        assert ma["fold_hash"] == mb["fold_hash"]
        assert ma["oof"]["macro_f1"] == pytest.approx(mb["oof"]["macro_f1"], abs=1e-9)
        if "config" in ma and name in UNIMODAL:
            assert json.dumps(ma["config"], sort_keys=True) == json.dumps(mb["config"], sort_keys=True)

    # Rerun: every fold and stage is complete, nothing is retrained.
    r2 = _run(["src/launch.py", "--preset", str(preset), "--workdir", str(ray_wd), "--data-dir", str(data),
               "--dry-run", *[f"--stack-override={o}" for o in stack_args], *OVERRIDES])
    assert "unimodal fold tasks: 2 over 3 experiment(s)" in r2.stdout   # only the broken one's folds
    assert f"{BROKEN:32s} kind text   folds to run: 0,1" in r2.stdout
