"""The pipeline's stages, each written once: data -> folds -> unimodal OOF -> fusion -> stack ->
tuning -> submission -> leaderboard. ``run_all`` runs them in order; the stage scripts (``src/*.py``)
and the Ray launcher (``rakuten.launch``) call the same functions, so changing a stage means changing
it here.

Each stage reads and writes artifacts and skips what is already complete, so a killed run, rerun,
redoes only the unfinished work.

Imports: the light modules at the top. The layers a stage alone needs and that are slow to import
(torch through ``training.fold``, LightGBM and Optuna through ``second_level``, matplotlib through
``reporting.leaderboard``) are imported inside that stage, so ``make_folds.py`` does not load torch
and ``run_fold.py`` does not load Optuna.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from rakuten import lineage
from rakuten.artifacts import Experiment
from rakuten.config import Config, ConfigError
from rakuten.data.challenge import CD_FILES
from rakuten.data.prepared import describe, load_dataset
from rakuten.errors import RakutenError
from rakuten.experiment import REDUCED_PREFIX, load_experiment
from rakuten.folds import folds_path, make_folds, write_folds
from rakuten.models.backbones import reduced_family
from rakuten.paths import Paths
from rakuten.presets import experiment_overrides, load_preset
from rakuten.reporting import tracking
from rakuten.second_level import api
from rakuten.second_level.api import load_fusion, load_stack, tuned_is_stale
from rakuten.training.fold_data import empty_field


@contextmanager
def stage(name: str, timings: dict):
    """Context manager around one pipeline stage: print its banner, set the lineage ledger's stage, and
    when the block succeeds record its seconds in ``timings[name]`` and print them."""
    print(f"\n===== {name} =====", flush=True)
    lineage.set_stage(name)
    t0 = time.time()
    yield
    timings[name] = round(time.time() - t0, 1)
    print(f"----- {name}: {timings[name]:.1f}s", flush=True)


# --------------------------------------------------------------------------------------------- preset
def validate_preset(preset: Config) -> None:
    """Load (and so validate: names, types, ranges) every config the preset runs, with the preset's
    overrides, before the pipeline reads the data or writes anything: a typo in the last stack's
    name is then one line at once, not an error after the unimodal models have trained."""
    for name in preset.experiments:
        cfg = load_experiment(name, experiment_overrides(preset, name), backbones=preset.get("backbones"))
        if cfg.kind in ("text", "image") and str(cfg.model.backbone).startswith(REDUCED_PREFIX):
            reduced_family(str(cfg.model.backbone))   # an unknown family: one line, before any data is read
    for name in preset.get("fusion") or []:
        load_fusion(name, preset)
    for name in preset.get("stack") or []:
        load_stack(name, preset)
    second = set(preset.get("fusion") or []) | set(preset.get("stack") or [])
    for name in (preset.get("tune") or {}):
        if name not in second:
            raise ConfigError(f"preset {preset.get('name')}: tune names {name!r}, which is not among its fusion/stack")
    sub = preset.get("submit")
    for name in ([sub] if isinstance(sub, str) else list(sub or [])):
        if name not in second and name not in set(preset.experiments):
            raise ConfigError(f"preset {preset.get('name')}: submit names {name!r}, which the preset does not run")


# ----------------------------------------------------------------------------------------------- data
def ensure_demo_data(paths: Paths, preset) -> None:
    """Generate the demo dataset into ``<workdir>/data/demo`` unless it is there already."""
    if (paths.demo_data_dir / CD_FILES["x_train"]).exists():
        print(f"demo data present at {paths.demo_data_dir}")
        return
    # PIL and the generator: needed only the first time, on a fresh workdir
    from rakuten.data.demo import generate_demo_dataset

    d = preset.get("demo_data") or {}
    summary = generate_demo_dataset(paths.demo_data_dir, n_train=int(d.get("n_train", 3000)),
                                    n_test=int(d.get("n_test", 600)), seed=int(d.get("seed", 0)),
                                    image_size=int(d.get("image_size", 500)))
    print(f"generated demo data: {summary}")


def text_only_fallback(preset, ds, announce: bool = True):
    """A preset with image models, on data with no training image at all (the text CSVs downloaded
    without the image archive): its ``no_images`` twin, if it names one. Image models would train on
    blank inputs, cost minutes and add nothing."""
    twin = preset.get("no_images")
    if not twin or "has_image" not in ds.train or bool(ds.train["has_image"].any()):
        return preset
    if announce:
        print(f"no training image found: preset {preset.get('name')} -> {twin} (its text-only twin)")
    return load_preset(twin, backbones=preset.get("backbones"))


def data_stage(paths: Paths, preset, announce: bool = True, fallback: bool = True):
    """The dataset (generated first when no data dir is given and the demo data is missing) and the
    preset to run on it (with ``fallback``, its text-only twin on data without images). ``announce``
    false: a helper rank of a data-parallel job, which prints and generates nothing. Returns
    ``(ds, preset)``."""
    if paths.data_dir is None:
        if not announce and not (paths.demo_data_dir / CD_FILES["x_train"]).exists():
            # a helper rank of a data-parallel job: generating beside rank 0 would race on the files
            raise RakutenError(f"no demo data at {paths.demo_data_dir}: run `python src/run_fold.py --fold 0` "
                               "once without a launcher first, or pass --data-dir")
        if announce:
            ensure_demo_data(paths, preset)
    ds = load_dataset(paths)
    if announce:
        print(describe(ds))
    return ds, text_only_fallback(preset, ds, announce) if fallback else preset


# ---------------------------------------------------------------------------------------------- folds
def folds_stage(paths: Paths, ds, k: int, seed: int, force: bool = False) -> tuple[Path, bool, pd.DataFrame]:
    """Write the frozen stratified fold file of (k, seed); an identical one is left alone, a
    different one is refused unless ``force``. Returns (path, whether it was written, the folds)."""
    path = folds_path(paths.folds_dir, k, seed)
    existed = path.exists()
    df = make_folds(ds.train, k, seed)
    wrote = write_folds(df, path, k, seed, force=force, extra={"data_dir": lineage.workdir_relative(paths, ds.data_dir)})
    lineage.note(path.name, "redone" if wrote and existed else "new" if wrote else "reused",
                 "the training ids or labels changed")
    return path, wrote, df


def has_fold_file(paths: Paths) -> bool:
    """Whether the workdir holds any fold file (a fresh one holds none)."""
    return paths.folds_dir.is_dir() and any(paths.folds_dir.glob("folds_k*_seed*.csv"))


def ensure_folds(paths: Paths, ds, cfgs, write: bool = True) -> None:
    """The fold file of every config that has none yet (an existing file is used as it is).
    ``write`` false (a helper rank of a data-parallel job): a missing file is an error, not a race."""
    for k, seed in sorted({(int(c.folds.k), int(c.folds.seed)) for c in cfgs}):
        if not folds_path(paths.folds_dir, k, seed).exists():
            if not write:
                raise RakutenError(f"no fold file {folds_path(paths.folds_dir, k, seed)}: run "
                                   "`python src/make_folds.py` (or this command without a launcher) first")
            path, _, _ = folds_stage(paths, ds, k, seed)
            print(f"wrote {path}")


# ------------------------------------------------------------------------------------------- unimodal
def preset_experiments(preset, overrides: list[str] | None = None) -> list:
    """The configs of a preset's unimodal experiments, with the preset's and then the caller's overrides."""
    return [load_experiment(e, experiment_overrides(preset, e) + list(overrides or []), backbones=preset.get("backbones"))
            for e in preset.experiments]


def train_folds(cfg, paths: Paths, folds: list[int], ds, progress: bool = True, force: bool = False,
                announce: bool = True, replace_stale: bool = False) -> dict[int, dict]:
    """Train (or skip, when complete) the given folds of one experiment; returns their scores.
    ``replace_stale``: retrain an experiment whose config, data or fold file changed (else an error)."""
    from rakuten.training.fold import run_fold   # torch: only the stages that train load it

    out = {}
    for fold in folds:
        if announce:
            print(f"***** {cfg.name} fold {fold} *****")
        s = run_fold(cfg, paths, fold, ds=ds, progress=progress, force=force, replace_stale=replace_stale)
        if announce:
            print(f"{cfg.name} fold {fold}: macro-F1 {s['macro_f1']:.4f}  "
                  f"weighted-F1 {s['weighted_f1']:.4f}  accuracy {s['accuracy']:.4f}")
        out[fold] = s
    return out


def unimodal_stage(preset, paths: Paths, ds, progress: bool = True, force: bool = False) -> list[str]:
    """Every fold of every unimodal experiment of the preset. An experiment whose input is empty on
    this data is skipped (a chance-level model would only add noise to the second level); the
    skipped names are recorded in ``preset["skipped"]`` for the later stages and returned."""
    skipped = []
    for cfg in preset_experiments(preset):
        why = empty_field(cfg, ds.train)
        if why:
            print(f"  {cfg.name}: skipped, {why}; the second level runs without it")
            skipped.append(cfg.name)
            continue
        train_folds(cfg, paths, list(range(int(cfg.folds.k))), ds, progress=progress, replace_stale=force)
        tracking.log_experiment(paths, cfg.name)   # a no-op unless run_all.py --track
    preset["skipped"] = skipped
    return skipped


# ------------------------------------------------------------------------------------- second level
def fusion_stage(preset, paths: Paths, progress: bool = True) -> None:
    """Run each of the preset's fusion experiments (``api.fuse``) and log the ones that ran to tracking;
    one whose inputs this run skipped is not run."""
    for name in preset.fusion:
        if api.fuse(name, paths, preset, progress=progress) is not None:   # None: skipped, inputs missing
            tracking.log_experiment(paths, name)


def stack_stage(preset, paths: Paths, progress: bool = True) -> None:
    """Run each of the preset's stack experiments (``api.stack``) and log the ones that ran to tracking;
    one whose inputs this run skipped is not run."""
    for name in preset.stack:
        if api.stack(name, paths, preset, progress=progress) is not None:   # None: skipped, inputs missing
            tracking.log_experiment(paths, name)


def tune_and_refit(name: str, paths: Paths, preset=None, n_trials: int = 10, timeout: float | None = None,
                   progress: bool = True, total: bool = False) -> dict | None:
    """Optuna study for ``name`` (SQLite beside it), then the best config refitted as ``<name>_tuned``.
    ``total``: ``n_trials`` is the study's target size, so a rerun of a finished study adds no trial.

    The tuned model's OOF score is optimistic: its parameters were chosen on those OOF rows. The
    leaderboard marks it; per-class bias tuning (below) reports its gain on held-out folds instead.
    """
    from rakuten.second_level.tuning import tune    # Optuna

    cfg = api.load_second_level(name, preset)
    why = api.drop_skipped_inputs(cfg, preset)
    if why:
        print(f"  {cfg.name}: not tuned, {why}")
        return None
    res = tune(cfg, paths, n_trials=n_trials, timeout=timeout, progress=progress, total=total)
    print(f"  study {res['study_name']}: {res['n_trials']} trials ({res['n_complete']} complete, "
          f"{res['n_pruned']} pruned); best OOF macro-F1 {res['best_value'] if res['best_value'] is None else round(res['best_value'], 4)}")
    if not res.get("best_config"):
        return None
    tuned = api.load_second_level(res["best_config"], preset)
    api.drop_skipped_inputs(tuned, preset)
    return api.run_and_report(tuned, paths, progress)


def tuning_stage(preset, paths: Paths, trials: int | None = None, progress: bool = True) -> None:
    """Tune and refit every entry of the preset's ``tune`` (``tune_and_refit``; ``trials`` overrides each
    entry's count, default 10) and log each refitted ``<name>_tuned`` to tracking."""
    for name, opts in (preset.get("tune") or {}).items():
        n = trials if trials is not None else int(opts.get("trials", 10))
        # total=True: a rerun of a finished pipeline runs no new trial (the study already has n)
        res = tune_and_refit(name, paths, preset, n_trials=n, timeout=opts.get("timeout"), progress=progress, total=True)
        if res is not None:
            tracking.log_experiment(paths, f"{name}_tuned")


# ----------------------------------------------------------------------------------------- submission
def make_submission(paths: Paths, exp: str, fmt: str | None = None, bias: bool = False,
                    force: bool = False, reuse: bool = False, selection: dict | None = None) -> Path:
    """``reporting.submission.write_experiment_submission`` with the per-class biases of ``exp``
    when ``bias``: those in its ``biases.json`` when still current, else fitted now."""
    # heavy: scikit-learn
    from rakuten.reporting.submission import SubmissionError, write_experiment_submission
    from rakuten.second_level.tuning import load_biases, tune_biases   # Optuna

    biases = None
    if bias:
        e = Experiment(paths.oof_dir, exp)
        if not e.meta_path.exists():
            raise SubmissionError(f"{exp}: no {e.meta_path}; run the experiment first")
        _, _, fhash = lineage.fold_file(paths, e)
        biases = load_biases(paths, exp, fhash) or tune_biases(paths, exp)
    return write_experiment_submission(paths, exp, fmt, biases=biases, force=force, reuse=reuse,
                                       selection=selection)


def submit_best(paths: Paths, exp, fmt: str | None = None, bias: bool = False) -> Path:
    """Submission of ``exp`` (its tuned version when one exists), or of the best experiment on the
    leaderboard; a file with the same name and content from an earlier run is reused.

    ``exp`` may be a list of candidates: the model is then chosen on held-out folds by the target's
    metric (``selection.select_submission``), and only among models that beat their best input."""
    from rakuten.reporting.leaderboard import build_leaderboard   # matplotlib
    from rakuten.reporting.submission import SubmissionError
    from rakuten.second_level.selection import choose_tuned, select_submission
    from rakuten.second_level.tuning import load_biases, tune_biases   # Optuna

    selection = None
    chosen_among_candidates = isinstance(exp, (list, tuple))   # select_submission already guards
    if chosen_among_candidates:
        metric = _target_metric(paths, fmt)
        sel = select_submission(paths, list(exp), metric)
        for r in sel["table"]:
            b = r[f"best_input_{metric}"]
            print(f"  {r['experiment']:32s} OOF {metric} {r[metric]:.4f}  best input {r['best_input']} "
                  f"{'-' if b is None else f'{b:.4f}'}")
        note = " (no second level beats its best input: the best input itself)" if sel["fallback_to_input"] else ""
        print(f"  chosen: {sel['chosen']}{note}; {metric} {sel['optimistic']:.4f} on the rows it was chosen "
              f"on, {sel['nested']:.4f} nested (chosen on the other folds, per fold {sel['per_fold']})")
        exp = sel["chosen"]
        selection = {k: sel[k] for k in ("chosen", "metric", "optimistic", "nested", "per_fold")}
    elif exp is None:
        board = build_leaderboard(paths, write=False)
        if not board:
            raise SubmissionError("no complete experiment to submit")
        exp = board[0]["experiment"]
    elif not str(exp).endswith("_tuned") and Experiment(paths.oof_dir, f"{exp}_tuned").meta_path.exists():
        # the tuned version only when current and better; its score on the rows its parameters were
        # picked on is optimistic, so the nested score of the choice is reported beside it
        stale = tuned_is_stale(paths, exp)
        if stale:
            print(f"  {exp}_tuned not used: {stale}; submitting {exp}")
        else:
            metric = _target_metric(paths, fmt)
            sel = choose_tuned(paths, exp, metric)
            others = ", ".join(f"{n} {s:.4f}" for n, s in sel["scores"].items())
            print(f"  {exp} vs {exp}_tuned (OOF {metric}: {others}): chosen {sel['chosen']}; {metric} "
                  f"{sel['optimistic']:.4f} optimistic (chosen on the rows it is scored on), {sel['nested']:.4f} "
                  f"nested (chosen on the other folds, per fold {sel['per_fold']})")
            exp = sel["chosen"]
            selection = sel
    if not chosen_among_candidates:
        exp, selection = _never_below_best_input(paths, exp, fmt, selection)
    if bias:
        # Per-class biases are used only when they raised macro-F1 on held-out folds (fitted on the
        # other folds): on small or well-calibrated data they can hurt, and the check says so.
        gain = (load_biases(paths, exp) or tune_biases(paths, exp))["heldout"]["mean_gain"]
        print(f"  per-class logit biases: {gain:+.4f} macro-F1 on held-out folds -> "
              f"{'applied' if gain > 0 else 'not applied'}")
        bias = gain > 0
    # A file of that name from an earlier run is reused only when its sidecar matches the current
    # predictions and artifacts; otherwise it is rewritten (and says so). The writer records the
    # submitted model in submissions/submitted.json (what export.py bundles).
    return make_submission(paths, exp, fmt, bias=bias, reuse=True, selection=selection)


def _target_metric(paths: Paths, fmt: str | None) -> str:
    """The metric the submission is chosen by: that of the target format (the data's when not given)."""
    # heavy: scikit-learn
    from rakuten.second_level.selection import METRIC_OF_FORMAT
    return METRIC_OF_FORMAT.get(fmt or load_dataset(paths).fmt, "macro_f1")


def _never_below_best_input(paths: Paths, exp: str, fmt: str | None, selection: dict | None):
    """A second level named alone (a preset's ``submit: stack_x``) is submitted only when it beats
    its best input on the OOF rows by the target's metric; otherwise that input is, as a list of
    candidates would choose (``select_submission``'s fall-back). Unimodal experiments pass as they are."""
    # heavy: scikit-learn
    from rakuten.second_level.selection import select_submission

    base = exp[:-len("_tuned")] if exp.endswith("_tuned") else exp
    try:
        upstream = Experiment(paths.oof_dir, base).read_meta().get("upstream")
    except Exception:  # noqa: BLE001 - no readable meta.json: make_submission reports it in one line
        return exp, selection
    if not upstream:
        return exp, selection
    metric = _target_metric(paths, fmt)
    sel = select_submission(paths, [base], metric, write=False)
    if not sel["fallback_to_input"]:
        return exp, selection
    print(f"  {exp} does not beat its best input on the OOF rows ({metric}): submitting {sel['chosen']}; "
          f"{metric} {sel['optimistic']:.4f} on the rows it was chosen on, {sel['nested']:.4f} nested")
    return sel["chosen"], {k: sel[k] for k in ("chosen", "metric", "optimistic", "nested", "per_fold")}


def leaderboard(paths: Paths) -> list[dict]:
    """Build and write the leaderboard (``submissions/leaderboard.md``, .json, .png) and print its ranking;
    returns its rows."""
    from rakuten.reporting.leaderboard import build_leaderboard   # matplotlib

    board = build_leaderboard(paths, write=True)
    print(f"{'rank':>4}  {'experiment':<36} {'kind':<9} {'macro-F1':>8} {'wF1':>7} {'acc':>7}")
    for r in board:
        print(f"{r['rank']:>4}  {r['experiment']:<36} {r['kind']:<9} {r['macro_f1']:>8.4f} "
              f"{r['weighted_f1']:>7.4f} {r['accuracy']:>7.4f}")
    print(f"wrote {paths.submissions_dir / 'leaderboard.md'} (+ .json, .png)")
    return board


# ------------------------------------------------------------------------------------------ run_all
def run_all(preset, paths: Paths, progress: bool = True, tune_trials: int | None = None,
            skip_tuning: bool = False, submit_format: str | None = None, force: bool = False) -> dict:
    """Every stage in order. ``force``: redo the artifacts whose inputs changed (a stale unimodal
    experiment is otherwise an error: retraining it may cost hours); current ones are reused either way."""
    timings: dict = {}
    t_start = time.time()
    ledger = lineage.begin_run()
    with stage("data", timings):
        ds, preset = data_stage(paths, preset)
    with stage("folds", timings):
        fp, wrote, _ = folds_stage(paths, ds, int(preset.folds.k), int(preset.folds.seed), force=force)
        print(f"{'wrote' if wrote else 'reusing'} {fp}")
    with stage("unimodal", timings):
        unimodal_stage(preset, paths, ds, progress=progress, force=force)
    with stage("fusion", timings):
        fusion_stage(preset, paths, progress=progress)
    with stage("stack", timings):
        stack_stage(preset, paths, progress=progress)
    if not skip_tuning:
        with stage("tuning", timings):
            tuning_stage(preset, paths, trials=tune_trials, progress=progress)
    with stage("submission", timings):
        sub = submit_best(paths, preset.get("submit"), fmt=submit_format or ds.fmt,
                          bias=bool(preset.get("submit_bias", False)))
        print(f"submission: {sub}")
    with stage("leaderboard", timings):
        board = leaderboard(paths)
    timings["total"] = round(time.time() - t_start, 1)
    tracking.log_pipeline(paths, sub, board, timings)   # a no-op unless run_all.py --track
    redone = lineage.end_run(ledger)
    print(f"\nall stages done in {timings['total']:.0f}s: {timings}")
    return {"timings": timings, "submission": str(sub), "leaderboard": board, "redone": redone}


def is_main_rank() -> bool:
    """Under ``accelerate launch`` / ``torchrun`` every rank runs a stage script; rank 0 alone reports
    and writes."""
    return os.environ.get("RANK", "0") == "0"
