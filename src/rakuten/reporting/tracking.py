"""Optional MLflow tracking of a pipeline run (``run_all.py --track``); off by default, a no-op when off.

One MLflow run per ``run_all`` (the parent, named after the preset) and, nested under it, one run per
experiment, fusion and stack (and each ``*_tuned`` refit), read from that experiment's artifacts once
it is complete, so tracking never changes what a stage computes:

- params: the resolved config of ``meta.json``, flattened (``train.lr``, ``lgbm.num_leaves``...);
- metrics: ``fold_<metric>`` (step = fold), ``fold<k>/<column>`` per epoch (step = epoch, from
  ``summary_fold<k>.csv``: ``train_loss``, ``val_macro_f1``...) and ``oof_<metric>`` recomputed from
  the OOF files as the leaderboard does;
- artifacts: ``meta.json``, the per-class table, its confusion matrix and learning curves.

The parent run gets the leaderboard (``leaderboard.md/json/png`` and every figure; metrics
``board/<experiment>/<metric>``), the nested choice of the submitted model (from the submission's
sidecar: params ``chosen``, ``chosen_per_fold``; metrics ``nested_<metric>``, ``optimistic_<metric>``;
``selection.json`` and ``submitted.json`` as files), the submission file with its sidecar, and the
stage timings (``seconds/<stage>``).

The store is ``sqlite:///<workdir>/mlruns/mlflow.db`` (artifacts in ``<workdir>/mlruns/artifacts``)
unless a tracking URI is given (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``). MLflow 3 refuses
its plain-file store, hence SQLite. Browse with ``mlflow ui --backend-store-uri <that URI>`` (the
``mlflow`` package; ``requirements-tracking.txt`` installs the lighter client, ``mlflow-skinny``).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from rakuten.artifacts import ArtifactError, Experiment, read_json
from rakuten.errors import RakutenError
from rakuten.labels import CODES
from rakuten.paths import Paths

log = logging.getLogger(__name__)

MLFLOW_EXPERIMENT = "rakuten"
METRICS = ("macro_f1", "weighted_f1", "accuracy")
_ACTIVE: "Session | None" = None     # the session of the run in progress; None: tracking is off


class TrackingError(RakutenError):
    """Tracking was asked for but cannot be done (MLflow missing, store unreachable)."""


def default_uri(paths: Paths) -> str:
    """The local store inside the workdir (SQLite file)."""
    return f"sqlite:///{paths.workdir / 'mlruns' / 'mlflow.db'}"


def flatten(d, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` (lists as their repr), the form MLflow params take."""
    out: dict[str, str] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]     # MLflow's limit on one param value
    return out


class Session:
    """An open parent run and the client writing to it."""

    def __init__(self, client, experiment_id: str, run_id: str, paths: Paths):
        self.client, self.experiment_id, self.run_id, self.paths = client, experiment_id, run_id, paths

    def child(self, name: str, tags: dict) -> str:
        """Create a run ``name`` nested under the parent run, with ``tags`` (values as strings); returns its id."""
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": self.run_id, **{k: str(v) for k, v in tags.items()}})
        return run.info.run_id

    def log(self, run_id: str, params: dict | None = None, metrics: list[tuple[str, float, int]] | None = None) -> None:
        """Params and (name, value, step) metrics in batches (MLflow takes at most 100 params / 1000
        metrics per call)."""
        # mlflow is optional (requirements-tracking.txt); a Session exists only once it imported
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        items = [Param(k, v) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])
        ms = [Metric(k, float(v), now, int(s)) for k, v, s in (metrics or []) if pd.notna(v)]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i:i + 1000])

    def artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        """Upload the file ``path`` to run ``run_id`` (into ``folder``); a path that is not a file is skipped."""
        if Path(path).is_file():
            self.client.log_artifact(run_id, str(path), folder)


def active() -> Session | None:
    """The tracking session of the run in progress, or None when tracking is off."""
    return _ACTIVE


@contextmanager
def session(paths: Paths, enabled: bool, uri: str | None = None, run_name: str | None = None,
            tags: dict | None = None, experiment: str = MLFLOW_EXPERIMENT):
    """Open the parent run for the duration of the block (status FINISHED, or FAILED on an error);
    with ``enabled`` false, nothing is imported or written and the block runs as it is."""
    global _ACTIVE
    if not enabled:
        yield None
        return
    try:
        # optional: only a tracked run needs MLflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("tracking needs MLflow: pip install -r requirements-tracking.txt") from None
    local = not (uri or os.environ.get("MLFLOW_TRACKING_URI"))
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(paths)
    if local:
        (paths.workdir / "mlruns").mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            art = (paths.workdir / "mlruns" / "artifacts").as_uri() if local else None
            exp_id = client.create_experiment(experiment, artifact_location=art)
        else:
            exp_id = exp.experiment_id
        run = client.create_run(exp_id, run_name=run_name,
                                tags={"workdir": str(paths.workdir), **{k: str(v) for k, v in (tags or {}).items()}})
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds; the user needs one line
        raise TrackingError(f"MLflow store {uri}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    _ACTIVE = Session(client, exp_id, run.info.run_id, paths)
    print(f"tracking to {uri} (MLflow experiment {experiment!r}, run {run.info.run_id})")
    status = "FAILED"
    try:
        yield _ACTIVE
        status = "FINISHED"
    finally:
        _ACTIVE = None
        client.set_terminated(run.info.run_id, status)


def epoch_metrics(exp: Experiment) -> list[tuple[str, float, int]]:
    """``fold<k>/<column>`` per epoch from every ``summary_fold<k>.csv`` of the experiment."""
    out = []
    for f in sorted(exp.dir.glob("summary_fold*.csv")):
        k = f.stem[len("summary_fold"):]
        df = pd.read_csv(f)
        for col in df.columns:
            if col in ("epoch", "best") or not pd.api.types.is_numeric_dtype(df[col]):
                continue
            out += [(f"fold{k}/{col}", v, int(e)) for e, v in zip(df["epoch"], df[col])]
    return out


def log_experiment(paths: Paths, name: str) -> str | None:
    """A child run for the finished experiment ``name`` (unimodal, fusion, stack or tuned refit);
    a no-op when tracking is off. Returns the run id (None when off or the experiment is unfinished)."""
    s = _ACTIVE
    if s is None:
        return None
    # matplotlib and scikit-learn: loaded only when a run is tracked
    from rakuten.reporting.leaderboard import learning_curves, per_class_table, score_experiment
    from rakuten.reporting.plots import plot_confusion, plot_learning_curves

    exp = Experiment(paths.oof_dir, name)
    try:
        meta = exp.read_meta()
        row, y, pred = score_experiment(paths, exp, meta)
    except (RakutenError, ArtifactError, OSError, ValueError) as e:
        log.warning("tracking: %s not logged (%s)", name, e)
        return None
    run_id = s.child(name, {"experiment": name, "kind": meta.get("kind", "?"), "fold_file": row["fold_file"]})
    metrics = [(f"oof_{m}", row[m], 0) for m in METRICS]
    for k, sc in sorted((meta.get("folds") or {}).items(), key=lambda kv: int(kv[0])):
        metrics += [(f"fold_{m}", sc[m], int(k)) for m in METRICS if m in sc]
    metrics += epoch_metrics(exp)
    params = flatten(meta.get("config"))
    if meta.get("upstream"):
        params["upstream"] = ",".join(meta["upstream"])[:6000]
    s.log(run_id, params, metrics)
    s.artifact(run_id, exp.meta_path)
    with tempfile.TemporaryDirectory(prefix="rakuten_track_") as tmp:
        t = Path(tmp)
        per_class_table(y, pred).to_csv(t / f"per_class_{name}.csv", index=False)
        plot_confusion(y, pred, list(CODES), t / f"confusion_{name}.png", f"{name}: row-normalised OOF confusion")
        curves = learning_curves(paths, [name])
        if curves:
            plot_learning_curves(curves, t / f"learning_curves_{name}.png")
        for f in sorted(t.iterdir()):
            s.artifact(run_id, f, "plots" if f.suffix == ".png" else None)
    s.client.set_terminated(run_id, "FINISHED")
    return run_id


def log_pipeline(paths: Paths, submission: str | Path | None, board: list[dict], timings: dict | None = None) -> None:
    """On the parent run: the leaderboard (one metric per experiment and its files), the nested choice
    of the submitted model, the submission file and the stage timings; a no-op when tracking is off."""
    s = _ACTIVE
    if s is None:
        return
    # scikit-learn (through rakuten.metrics): stages imports this module, make_folds.py must stay light
    from rakuten.reporting.submission import sidecar_path

    out = paths.submissions_dir
    metrics = [(f"board/{r['experiment']}/{m}", r[m], 0) for r in board for m in METRICS]
    metrics += [(f"seconds/{k}", v, 0) for k, v in (timings or {}).items()]
    params = {}
    try:
        sub_meta = read_json(out / "submitted.json")
        params.update({"submitted": sub_meta.get("experiment"), "submitted_bias": sub_meta.get("bias"),
                       "submission_format": sub_meta.get("format")})
    except (ArtifactError, OSError, ValueError, AttributeError):
        pass
    sel = None
    if submission:
        try:   # the submission's sidecar records the nested choice that picked its model
            sel = read_json(sidecar_path(Path(submission))).get("selection")
        except (ArtifactError, OSError, ValueError, AttributeError):
            sel = None
    if sel:
        metric = sel.get("metric", "macro_f1")
        params.update({"chosen": sel.get("chosen"), "choice_metric": metric,
                       "chosen_per_fold": sel.get("per_fold")})   # the model each outer fold's choice picked
        metrics += [(f"nested_{metric}", sel.get("nested"), 0), (f"optimistic_{metric}", sel.get("optimistic"), 0)]
    for fname in ("selection.json", "submitted.json"):
        s.artifact(s.run_id, out / fname, "selection")
    s.log(s.run_id, {k: str(v) for k, v in params.items() if v is not None}, metrics)
    for f in sorted(out.glob("leaderboard.*")) + sorted(out.glob("*.png")) + sorted(out.glob("per_class_*.csv")):
        s.artifact(s.run_id, f, "leaderboard")
    if submission:
        sub = Path(submission)
        s.artifact(s.run_id, sub, "submission")
        s.artifact(s.run_id, sidecar_path(sub), "submission")   # the sidecar tying it to its artifacts
