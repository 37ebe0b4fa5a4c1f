"""The whole pipeline, stage by stage: data -> folds -> unimodal OOF -> fusion -> tuning -> stack ->
submission -> leaderboard. Each stage reads and writes artifacts and skips what is already complete,
so a killed run, rerun, redoes only the unfinished work.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from rakuten import lineage
from rakuten.data.challenge import CD_FILES
from rakuten.paths import Paths

log = logging.getLogger(__name__)


@contextmanager
def stage(name: str, timings: dict):
    print(f"\n===== {name} =====", flush=True)
    lineage.set_stage(name)
    t0 = time.time()
    yield
    timings[name] = round(time.time() - t0, 1)
    print(f"----- {name}: {timings[name]:.1f}s", flush=True)


def ensure_demo_data(paths: Paths, preset) -> None:
    """Generate the demo dataset into ``<workdir>/data/demo`` unless it is there already."""
    from rakuten.data.demo import generate_demo_dataset

    if (paths.demo_data_dir / CD_FILES["x_train"]).exists():
        print(f"demo data present at {paths.demo_data_dir}")
        return
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
    from rakuten.presets import load_preset
    if announce:
        print(f"no training image found: preset {preset.get('name')} -> {twin} (its text-only twin)")
    return load_preset(twin)


def run_all(preset, paths: Paths, progress: bool = True, tune_trials: int | None = None,
            skip_tuning: bool = False, submit_format: str | None = None, force: bool = False) -> dict:
    """``force``: redo the artifacts whose inputs changed (a stale unimodal experiment is otherwise
    an error: retraining it may cost hours); current ones are reused either way."""
    from rakuten.data.prepared import describe, load_dataset
    from rakuten.experiment import load_experiment
    from rakuten.folds import folds_path, make_folds, write_folds
    from rakuten.presets import experiment_overrides
    from rakuten.second_level import api
    from rakuten.training.fold import run_fold

    timings: dict = {}
    t_start = time.time()
    ledger = lineage.begin_run()
    with stage("data", timings):
        if paths.data_dir is None:
            ensure_demo_data(paths, preset)
        ds = load_dataset(paths)
        print(describe(ds))
        preset = text_only_fallback(preset, ds)
    with stage("folds", timings):
        k, seed = int(preset.folds.k), int(preset.folds.seed)
        fp = folds_path(paths.folds_dir, k, seed)
        existed = fp.exists()
        wrote = write_folds(make_folds(ds.train, k, seed), fp, k, seed, force=force,
                            extra={"data_dir": lineage.workdir_relative(paths, ds.data_dir)})
        lineage.note(fp.name, "redone" if wrote and existed else "new" if wrote else "reused",
                     "the training ids or labels changed")
        print(f"{'wrote' if wrote else 'reusing'} {fp}")
    with stage("unimodal", timings):
        from rakuten.training.fold import empty_field
        skipped = []
        for name in preset.experiments:
            cfg = load_experiment(name, experiment_overrides(preset, name))
            why = empty_field(cfg, ds.train)
            if why:
                # a chance-level model would only add noise to the second level: leave it out
                print(f"  {name}: skipped, {why}; the second level runs without it")
                skipped.append(name)
                continue
            for fold in range(int(cfg.folds.k)):
                s = run_fold(cfg, paths, fold, ds=ds, progress=progress, replace_stale=force)
                print(f"  {name:28s} fold {fold}: macro-F1 {s['macro_f1']:.4f}")
        preset["skipped"] = skipped
    with stage("fusion", timings):
        for name in preset.fusion:
            api.fuse(name, paths, preset, progress=progress)
    stacks = list(preset.stack)
    with stage("stack", timings):
        for name in stacks:
            api.stack(name, paths, preset, progress=progress)
    if not skip_tuning:
        with stage("tuning", timings):
            for name, opts in (preset.get("tune") or {}).items():
                n = tune_trials if tune_trials is not None else int(opts.get("trials", 10))
                # total=True: a rerun of a finished pipeline runs no new trial (the study already has n)
                api.tune_and_refit(name, paths, preset, n_trials=n, timeout=opts.get("timeout"), progress=progress,
                                   total=True)
    with stage("submission", timings):
        sub = api.submit_best(paths, preset.get("submit"), fmt=submit_format or ds.fmt,
                              bias=bool(preset.get("submit_bias", False)))
        print(f"submission: {sub}")
    with stage("leaderboard", timings):
        board = api.leaderboard(paths)
    timings["total"] = round(time.time() - t_start, 1)
    redone = lineage.end_run(ledger)
    print(f"\nall stages done in {timings['total']:.0f}s: {timings}")
    return {"timings": timings, "submission": str(sub), "leaderboard": board, "redone": redone}
