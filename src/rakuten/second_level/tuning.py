"""Optuna tuning of the fusion models and the stacker on the fixed folds; per-class logit biases.

Tuning: a seeded ``TPESampler`` proposes parameters; each trial runs the real per-fold code
(``fusion.fit_predict_fold`` / ``stacker.fit_predict_oof``) fold by fold, reports the running mean
per-fold macro-F1 (``trial.report``) so a ``MedianPruner`` can stop poor trials early, and returns the
macro-F1 of the full OOF prediction. Studies live in RDB storage (SQLite beside the experiment by
default) and are opened with ``load_if_exists=True``: a second worker process given the same
``--storage`` and ``--study-name`` joins the study. The best parameters are written as a complete
config (``oof/<name>/best_config.yaml``, experiment name ``<name>_tuned``), never pasted by hand.

The OOF score that selects parameters is, by construction, optimistic for the chosen trial (many
trials were compared on the same rows); the tuned experiment's own OOF score is what to report.
Trial 0 of a new study runs the config's own parameters (when they lie inside the search space), so
the best trial is never worse than the untuned config on these rows.

Biases: per-class additive logit biases fitted by coordinate ascent for macro-F1 (a known gain on
imbalanced data). Their gain is reported honestly: fitted on K-1 folds' OOF, scored on the held-out
fold; the biases used for the test predictions are then fitted on all OOF rows.
"""
from __future__ import annotations

import copy
import logging
import os
import random
import socket
import time
from pathlib import Path

import numpy as np
import optuna
import yaml

from rakuten.artifacts import Experiment, atomic_write_json, atomic_write_text, read_json
from rakuten.config import Config, ConfigError
from rakuten.defaults import TUNE_DEFAULTS
from rakuten.errors import RakutenError
from rakuten.labels import NUM_CLASSES
from rakuten.metrics import macro_f1_fast, scores
from rakuten.paths import Paths
from rakuten.lineage import config_hash, finished_oof, note, upstream_signature, workdir_relative

log = logging.getLogger(__name__)


class TuningError(RakutenError, RuntimeError):
    """Tuning cannot run: a bad or unreachable Optuna storage, a named study made on another config or
    upstream, or an experiment not run yet; the message is one line."""
    pass


# A search space entry: {"type": float|int, "low", "high", "log"} or {"type": categorical, "choices"}.
# Keys are dotted config keys, so a trial's parameters apply to the config as overrides.
FUSION_SPACE = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "train.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
    "train.class_weight_power": {"type": "float", "low": 0.0, "high": 1.0},
    "fusion.width": {"type": "categorical", "choices": [0, 64, 128, 256, 512]},
    "fusion.head": {"type": "categorical", "choices": ["linear", "dropout", "mlp"]},
    "fusion.dropout": {"type": "float", "low": 0.0, "high": 0.5},
}
VARIANT_SPACE = {
    "hierarchical": {"fusion.level1_op": {"type": "categorical", "choices": ["add", "concat", "average"]},
                     "fusion.level2_op": {"type": "categorical", "choices": ["add", "concat", "average"]}},
    "baseline": {"fusion.op": {"type": "categorical", "choices": ["add", "concat", "average"]}},
    # late fusion has no width/head; its few weights want a larger step
    "late": {"fusion.space": {"type": "categorical", "choices": ["prob", "logprob"]},
             "train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
             "fusion.width": None, "fusion.head": None, "fusion.dropout": None},
}
STACK_SPACE = {
    "lgbm.num_leaves": {"type": "int", "low": 7, "high": 127, "log": True},
    "lgbm.learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    "lgbm.min_data_in_leaf": {"type": "int", "low": 5, "high": 300, "log": True},
    "lgbm.feature_fraction": {"type": "float", "low": 0.3, "high": 1.0},
    "lgbm.lambda_l2": {"type": "float", "low": 1e-3, "high": 30.0, "log": True},
    "lgbm.class_weight_power": {"type": "float", "low": 0.0, "high": 1.0},
}


def search_space(cfg) -> dict:
    """Default space for the config's kind (and fusion variant), then ``tune.space`` over it.

    A ``tune.space`` entry set to null removes that parameter from the search.
    """
    if cfg["kind"] == "stack":
        space = copy.deepcopy(STACK_SPACE)
    else:
        space = copy.deepcopy(FUSION_SPACE)
        space.update(copy.deepcopy(VARIANT_SPACE.get(cfg["fusion"]["variant"], {})))
    user = (cfg.get("tune") or {}).get("space") or {}
    space.update(copy.deepcopy(dict(user)))
    return {k: v for k, v in space.items() if v is not None}


def _unused(key: str, params: dict, cfg) -> bool:
    """``fusion.dropout`` means nothing for a linear head (the trial's, else the config's)."""
    return key == "fusion.dropout" and params.get("fusion.head", cfg["fusion"]["head"]) == "linear"


def suggest(trial: optuna.Trial, space: dict, cfg) -> dict:
    """One trial's parameters; ``fusion.dropout`` is only asked for when the head uses it."""
    params = {}
    for key, spec in space.items():
        if _unused(key, params, cfg):
            continue
        t = spec.get("type", "float")
        if t == "categorical":
            params[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif t == "int":
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        elif t == "float":
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        else:
            raise ConfigError(f"tune.space.{key}: type must be float, int or categorical (got {t!r})")
    return params


def base_params(cfg, space: dict) -> dict | None:
    """The config's own values for the searched keys, when every one lies inside the space (what
    trial 0 of a new study runs, so the tuned model never scores below the untuned one on these
    rows); ``None`` when a value is outside it (then the study starts from the sampler alone)."""
    d = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    params = {}
    for key, spec in space.items():
        node = d
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if _unused(key, params, d):
            continue
        t = spec.get("type", "float")
        if t == "categorical":
            if node not in list(spec["choices"]):
                return None
        elif node is None or isinstance(node, bool) or not float(spec["low"]) <= float(node) <= float(spec["high"]):
            return None
        elif t == "int" and float(node) != int(node):
            return None
        params[key] = int(node) if t == "int" else (float(node) if t == "float" else node)
    return params


def apply_params(cfg, params: dict) -> Config:
    """A copy of ``cfg`` with dotted-key parameters set (keys must exist in the resolved config)."""
    d = cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(dict(cfg))
    for key, value in params.items():
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"tuned parameter {key!r}: config has no section {p!r}")
            node = node[p]
        node[parts[-1]] = value
    return Config(d)


def _resolve(cfg) -> Config:
    kind = cfg.get("kind")
    # by kind, here and below: fusion brings torch, the stacker LightGBM; a study needs only its own
    if kind == "fusion":
        # heavy: torch
        from rakuten.second_level.fusion import fusion_config
        c = fusion_config(cfg)
    elif kind == "stack":
        # heavy: LightGBM
        from rakuten.second_level.stacker import stack_config
        c = stack_config(cfg)
    else:
        raise ConfigError(f"{cfg.get('name', '?')}: tuning needs a fusion or stack config (kind {kind!r})")
    tune_cfg = copy.deepcopy(TUNE_DEFAULTS)
    tune_cfg.update(dict(c.get("tune") or {}))
    c["tune"] = Config(tune_cfg)
    return c


def default_storage(paths: Paths, name: str) -> str:
    """``sqlite:///<workdir>/oof/<name>/study.db``: the study sits beside the experiment it tunes."""
    d = paths.experiment_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(d / 'study.db').resolve()}"


# pg_advisory_lock key that serialises Optuna's table creation among workers ("RAKUTEN" in ASCII)
_PG_LOCK_KEY = 0x52414B5554454E


def _storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``; safe for several workers that start together.

    Opening the storage creates Optuna's tables when the database has none. Two workers that both
    find it empty both run ``CREATE TYPE``/``CREATE TABLE`` and one dies on a unique violation
    (seen on PostgreSQL). On PostgreSQL the creation runs under an advisory lock, so the second
    worker waits and then finds the tables; on other servers a failed creation is retried.
    """
    import sqlalchemy   # optuna's own dependency, needed only once a study opens its storage
    try:
        sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise TuningError(f"--storage {url!r} is not an SQLAlchemy URL (e.g. sqlite:////abs/path/study.db)") from None
    kwargs = {}
    if url.startswith("sqlite"):
        # Several worker processes share one SQLite file: wait for the write lock instead of failing.
        kwargs = {"connect_args": {"timeout": 60}}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    if url.startswith("postgresql"):
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
        finally:
            engine.dispose()
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                sqlalchemy.exc.OperationalError) as e:
            if attempt == 5:
                raise TuningError(f"could not open the Optuna storage at {url}: {e}") from e
            time.sleep(0.2 + random.random() * (attempt + 1))  # another worker is creating the tables


def _count_trials(storage, study_name: str) -> int:
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


class _Objective:
    """Runs one trial fold by fold through the stage's real per-fold code."""

    def __init__(self, cfg: Config, paths: Paths, space: dict, progress: bool):
        self.cfg, self.paths, self.space, self.progress = cfg, paths, space, progress
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        if cfg.kind == "fusion":
            # heavy: torch
            from rakuten.second_level.fusion import load_fusion_data
            self.data = load_fusion_data(cfg, paths)
        else:
            # heavy: LightGBM
            from rakuten.second_level.stacker import load_stack_data, stack_features
            self.data = load_stack_data(cfg, paths)
            self.X, self.Xt, _ = stack_features(cfg, self.data, paths)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", self.worker)
        params = suggest(trial, self.space, self.cfg)
        tcfg = apply_params(self.cfg, params)
        data = self.data
        y = data.y
        oof = np.zeros((len(y), NUM_CLASSES), dtype=np.float32)
        fold_scores = []

        def report(k, rows, proba):
            oof[rows] = proba
            fold_scores.append(scores(y[rows], proba)["macro_f1"])
            trial.report(float(np.mean(fold_scores)), step=len(fold_scores) - 1)
            if trial.should_prune():
                trial.set_user_attr("fold_macro_f1", fold_scores)
                raise optuna.TrialPruned()

        if tcfg.kind == "fusion":
            # heavy: torch, for a fusion study only
            import torch
            from rakuten.second_level.fusion import fit_predict_fold
            torch.set_num_threads(int(tcfg.train.num_threads))
            for k in data.fold_ids:
                out = fit_predict_fold(tcfg, data, k)
                report(k, out.info["pred_idx"], out.oof.logits)
        else:
            # heavy: LightGBM, for a stack study only
            from rakuten.second_level.stacker import fit_predict_oof, stacker_factory
            fit_predict_oof(stacker_factory(tcfg), self.X, y, data.fold, None, fold_ids=data.fold_ids,
                            num_classes=NUM_CLASSES, on_fold=lambda k, rows, p, t, m: report(k, rows, p))
        trial.set_user_attr("fold_macro_f1", fold_scores)
        return scores(y, oof)["macro_f1"]


def write_best_config(cfg: Config, params: dict, path: Path, header: str, base_signature: str | None = None) -> Path:
    """The tuned config as a full YAML (``<name>_tuned``), loadable by fuse.py / stack.py.

    ``tune.base_signature`` records the study's signature (left out of the config hash with the rest
    of ``tune``): ``submit_best`` uses the tuned model only while it matches the untuned one's."""
    best = apply_params(cfg, params).to_dict()
    best.pop("_source_", None)
    best["name"] = f"{cfg.name}_tuned"
    if base_signature is not None:
        best.setdefault("tune", {})["base_signature"] = base_signature
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(best, sort_keys=False)
    atomic_write_text(path, text)
    return path


def tune(cfg, paths: Paths, n_trials: int, timeout: float | None = None, storage: str | None = None,
         study_name: str | None = None, seed: int | None = None, progress: bool = True,
         total: bool = False) -> dict:
    """Run ``n_trials`` more trials of the config's study and write ``oof/<name>/best_config.yaml``.

    ``total=True``: ``n_trials`` is the study's target size instead, so only the missing trials run
    (the pipeline's rerun of a finished study runs none; ``tune.py`` keeps adding trials).

    A worker's sampler seed is ``tune.seed`` (or ``seed``) plus the number of trials already in the
    study: a lone worker is reproducible, and a joining worker does not replay the first one's draws.
    """
    cfg = _resolve(cfg)
    space = search_space(cfg)
    if not space:
        raise ConfigError(f"{cfg.name}: empty search space")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or default_storage(paths, cfg.name)
    name = study_name or cfg.name
    store = _storage(url)
    objective = _Objective(cfg, paths, space, progress)
    # The study's signature: the config (less its tuning space) over these upstream artifacts and
    # fold file, the same hash the untuned experiment records as its config_hash. Trials scored on
    # other inputs say nothing about these.
    signature = config_hash(cfg, extra={"upstream": upstream_signature(paths, list(objective.data.inputs)),
                                  "fold_hash": objective.data.fold_hash})
    existing = _count_trials(store, name)
    if existing:
        old_sig = optuna.load_study(study_name=name, storage=store).user_attrs.get("signature")
        if old_sig != signature:
            if study_name is not None:
                raise TuningError(f"study {name!r} in {url} was run on another config or other upstream "
                                  "artifacts; give a new --study-name")
            note(f"study {name}", "redone", "made on another config or other upstream artifacts; started afresh")
            optuna.delete_study(study_name=name, storage=store)
            existing = 0
    worker_seed = int(seed if seed is not None else cfg.tune.seed) + existing
    study = optuna.create_study(
        study_name=name, storage=store, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=worker_seed, n_startup_trials=int(cfg.tune.n_startup_trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=int(cfg.tune.n_startup_trials),
                                           n_warmup_steps=int(cfg.tune.n_warmup_steps)))
    if study.user_attrs.get("signature") != signature:
        study.set_user_attr("signature", signature)
    if existing == 0:
        start = base_params(cfg, space)
        if start is not None:
            study.enqueue_trial(start, user_attrs={"origin": "config"}, skip_if_exists=True)
    if total:
        done = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                   for t in study.get_trials(deepcopy=False))
        n_trials = max(0, n_trials - done)
    note(f"study {name}", "new" if n_trials > 0 else "reused")
    if n_trials > 0:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, show_progress_bar=progress,
                       gc_after_trial=False)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    mine = [t for t in trials if t.user_attrs.get("worker") == objective.worker]
    result = {"study_name": name, "storage": url, "n_trials": len(trials), "n_complete": len(complete),
              "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
              "this_worker_trials": len(mine), "worker_seed": worker_seed}
    if not complete:
        result.update(best_value=None, best_params=None, best_config=None)
        return result
    best = study.best_trial
    out = paths.experiment_dir(cfg.name) / "best_config.yaml"
    header = (f"Generated by tune.py from study {name!r} ({len(complete)} complete trials); best trial "
              f"#{best.number}: OOF macro-F1 {best.value:.4f} (selected on these OOF rows, so optimistic).\n"
              "Do not edit by hand: rerun tune.py.")
    write_best_config(cfg, best.params, out, header, base_signature=signature)
    result.update(best_value=float(best.value), best_params=dict(best.params), best_trial=best.number,
                  best_config=str(out))
    return result


# -------------------------------------------------------------------------------------- logit biases
def fit_class_biases(logits: np.ndarray, y: np.ndarray, grid=None, rounds: int = 2) -> np.ndarray:
    """Per-class additive biases maximising macro-F1 of ``argmax(logits + b)``, by coordinate ascent.

    For class c, every grid value of b_c is scored in one vectorised pass: a row predicts c iff its
    biased c score beats the best other class, else that other class. A change is kept only when it
    improves the score, so the result never scores below zero biases on these rows.
    """
    grid = np.arange(-3.0, 3.0001, 0.25) if grid is None else np.asarray(grid, dtype=np.float64)
    z = logits - logits.max(1, keepdims=True)
    z = z - np.log(np.exp(z).sum(1, keepdims=True))          # log-probabilities: one scale for any model
    n, c = z.shape
    b = np.zeros(c)
    best = macro_f1_fast(y, (z + b).argmax(1), c)
    for _ in range(int(rounds)):
        improved = False
        for j in range(c):
            s = z + b
            s[:, j] = -np.inf
            other = s.argmax(1)
            other_max = s[np.arange(n), other]
            zj = z[:, j]
            for v in grid:
                pred = np.where(zj + v > other_max, j, other)
                f = macro_f1_fast(y, pred, c)
                if f > best + 1e-12:
                    best, b[j], improved = f, v, True
        if not improved:
            break
    return b


def tune_biases(paths: Paths, exp_name: str, grid=None, rounds: int = 2) -> dict:
    """Fit biases on K-1 folds' OOF, score the held-out fold; then fit on all OOF for the test.

    Writes ``oof/<exp>/biases.json`` and returns it: per-fold held-out macro-F1 before/after, the mean
    gain, the OOF macro-F1 of the held-out-biased predictions, and the all-OOF biases (by class index).
    """
    exp = Experiment(paths.oof_dir, exp_name)
    if not exp.meta_path.exists():
        raise TuningError(f"{exp_name}: no {exp.meta_path}; run the experiment first")
    fpath, folds_df, fhash, oof = finished_oof(paths, exp)
    fold_ids = sorted(int(k) for k in folds_df["fold"].unique())
    y = folds_df["label"].to_numpy(np.int64)
    fold = folds_df["fold"].to_numpy(np.int64)
    logits = oof.logits.astype(np.float64)
    heldout_pred = np.empty(len(y), dtype=np.int64)
    per_fold = []
    for k in fold_ids:
        tr, te = fold != k, fold == k
        b = fit_class_biases(logits[tr], y[tr], grid, rounds)
        before = macro_f1_fast(y[te], logits[te].argmax(1))
        heldout_pred[te] = (logits[te] + b).argmax(1)
        after = macro_f1_fast(y[te], heldout_pred[te])
        per_fold.append({"fold": k, "before": before, "after": after, "gain": after - before})
    b_all = fit_class_biases(logits, y, grid, rounds)
    before_all = scores(y, logits.argmax(1))
    after_all = scores(y, heldout_pred)
    out = {
        "experiment": exp_name, "fold_file": workdir_relative(paths, fpath), "fold_hash": fhash,
        "artifacts": upstream_signature(paths, [exp_name])[exp_name],
        "heldout": {"per_fold": per_fold, "mean_gain": float(np.mean([p["gain"] for p in per_fold])),
                    "oof_before": before_all, "oof_after": after_all},
        "biases": [float(v) for v in b_all],
        "in_sample_oof_macro_f1": scores(y, (logits + b_all).argmax(1))["macro_f1"],
        "grid": [float(v) for v in (np.arange(-3.0, 3.0001, 0.25) if grid is None else grid)],
        "rounds": int(rounds),
        "note": "held-out: biases fitted on the other folds' OOF; 'biases' are fitted on all OOF (for test)",
    }
    atomic_write_json(exp.dir / "biases.json", out)
    return out


def load_biases(paths: Paths, exp_name: str, fold_hash: str | None = None) -> dict | None:
    """biases.json of an experiment if present, made on ``fold_hash`` and on its current artifacts."""
    p = paths.experiment_dir(exp_name) / "biases.json"
    if not p.exists():
        return None
    b = read_json(p)
    if fold_hash is not None and b.get("fold_hash") != fold_hash:
        return None
    if b.get("artifacts") != upstream_signature(paths, [exp_name])[exp_name]:
        return None          # the experiment was rerun since: its OOF logits are not those fitted
    return b
