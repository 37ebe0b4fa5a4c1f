"""Distributed tuning: two tune.py worker processes share one Optuna study on a real PostgreSQL server.

Runs only where ``RAKUTEN_TEST_PG_URL`` names a reachable server (``.ci/run`` starts one with
``scripts/start_postgres.sh``) and psycopg2 is installed (``requirements-distributed.txt``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("RAKUTEN_TEST_PG_URL")
STACK_FAST = ["lgbm.num_leaves=7", "lgbm.max_bin=31", "lgbm.num_threads=1", "lgbm.early_stopping_rounds=0",
              "lgbm.num_boost_round=10", "stack.meta_features=false",
              "stack.inputs=[text_tiny_title,image_tiny]"]
TRIALS_PER_WORKER = 4

pytestmark = [pytest.mark.slow,     # two tune.py worker processes
              pytest.mark.skipif(not PG_URL, reason="RAKUTEN_TEST_PG_URL not set (scripts/start_postgres.sh)")]


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg2")
    import sqlalchemy
    try:
        engine = sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # server down, wrong password, ...
        msg = f"PostgreSQL at RAKUTEN_TEST_PG_URL unreachable ({type(e).__name__}: {str(e).strip()[:200]})"
        # CI sets the URL only once scripts/start_postgres.sh started a server: then it must answer
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(msg)
        pytest.skip(msg)
    return PG_URL


@pytest.fixture()
def empty_schema_url(pg_url):
    """The server's URL pointed at a new, empty schema: a database without Optuna's tables, as a
    first run meets it (the workers then race to create them)."""
    import sqlalchemy
    schema = f"rakuten_race_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in pg_url else "?"
    yield f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


def test_two_worker_processes_share_one_postgres_study(empty_schema_url, tmp_path):
    import optuna

    pg_url = empty_schema_url
    paths = make_synthetic(tmp_path / "wd")
    study_name = f"rakuten_test_{uuid.uuid4().hex[:12]}"
    cmd = [sys.executable, str(REPO / "src" / "tune.py"), "--config", "stack_lgbm",
           "--trials", str(TRIALS_PER_WORKER), "--storage", pg_url, "--study-name", study_name,
           "--workdir", str(paths.workdir), "--data-dir", str(paths.data_dir), "--no-progress", *STACK_FAST]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    # Nothing is created beforehand: both workers find an empty schema, race to create Optuna's
    # tables (serialised by tuning._storage's advisory lock) and then the study
    # (create_study(load_if_exists=True) lets the loser join).
    try:
        workers = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env) for _ in range(2)]
        outs = [w.communicate(timeout=300) for w in workers]
        for w, (out, err) in zip(workers, outs):
            assert w.returncode == 0, err[-3000:]
            assert f"study {study_name}" in out and "trials in study" in out

        study = optuna.load_study(study_name=study_name, storage=pg_url)
        trials = study.get_trials(deepcopy=False)
        # none lost, none duplicated: exactly both workers' trials, numbered 0..n-1 by the database
        assert len(trials) == 2 * TRIALS_PER_WORKER
        assert sorted(t.number for t in trials) == list(range(2 * TRIALS_PER_WORKER))
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        assert all(t.state in finished for t in trials), [t.state for t in trials]
        # each trial records the worker (host:pid) that ran it: both processes contributed their share
        host = socket.gethostname()
        by_worker = {f"{host}:{w.pid}": [t for t in trials if t.user_attrs.get("worker") == f"{host}:{w.pid}"]
                     for w in workers}
        assert {k: len(v) for k, v in by_worker.items()} == {k: TRIALS_PER_WORKER for k in by_worker}
        # ... at the same time: each worker's span of trials overlaps the other's
        spans = [(min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts))
                 for ts in by_worker.values()]
        assert max(s for s, _ in spans) < min(e for _, e in spans), spans
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert complete and study.best_value == max(t.value for t in complete)
        assert (paths.oof_dir / "stack_lgbm" / "best_config.yaml").exists()
    finally:
        for w in locals().get("workers", []):
            if w.poll() is None:
                w.kill()
        try:
            optuna.delete_study(study_name=study_name, storage=pg_url)
        except KeyError:
            pass
    assert study_name not in optuna.get_all_study_names(storage=pg_url)
