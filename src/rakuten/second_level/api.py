"""The second level as ``run_all`` (and ``launch``) call it: by config name, with the preset's folds.

Each function is idempotent: folds already done on the same fold file, config and upstream
artifacts are skipped by the functions it calls.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from rakuten.artifacts import Experiment
from rakuten.config import load_config
from rakuten.paths import Paths

log = logging.getLogger(__name__)


def preset_overrides(preset, name: str | None = None) -> list[str]:
    """Every second-level config follows the preset's fold file, then the preset's entry for it
    (``overrides: {<name>: {key: value}}``; the ``all`` entry is for unimodal experiments only)."""
    if preset is None:
        return []
    out = []
    if preset.get("folds"):
        out += [f"folds.k={int(preset.folds.k)}", f"folds.seed={int(preset.folds.seed)}"]
    base = name[:-len("_tuned")] if name and name.endswith("_tuned") else name
    for k, v in ((preset.get("overrides") or {}).get(base) or {}).items():
        out.append(f"{k}={v}")
    return out


def _name_of(name: str) -> str:
    return Path(str(name)).stem if str(name).endswith((".yaml", ".yml")) else str(name)


def load_fusion(name: str, preset=None, overrides: list[str] | None = None):
    from rakuten.second_level.fusion import FUSION_DEFAULTS, fusion_config
    ov = preset_overrides(preset, None if str(name).endswith(".yaml") else _name_of(name))
    cfg = load_config(name, ov + list(overrides or []), defaults=copy.deepcopy(FUSION_DEFAULTS))
    fusion_config(cfg)  # types, ranges and allowed values now, before any artifact is touched
    return cfg


def load_stack(name: str, preset=None, overrides: list[str] | None = None):
    from rakuten.second_level.stacker import STACK_DEFAULTS, stack_config
    ov = preset_overrides(preset, None if str(name).endswith(".yaml") else _name_of(name))
    cfg = load_config(name, ov + list(overrides or []), defaults=copy.deepcopy(STACK_DEFAULTS))
    stack_config(cfg)  # types, ranges and allowed values now, before any artifact is touched
    return cfg


def load_second_level(name: str, preset=None, overrides: list[str] | None = None):
    """A fusion or stack config by name or path (its ``kind`` decides the defaults)."""
    from rakuten.config import ConfigError
    kind = load_config(name, overrides).get("kind")
    if kind not in ("fusion", "stack"):
        raise ConfigError(f"{name}: kind must be fusion or stack (got {kind!r})")
    return (load_stack if kind == "stack" else load_fusion)(name, preset, overrides)


def run_second_level(cfg, paths: Paths, progress: bool = True) -> dict:
    if cfg.get("kind") == "stack":
        from rakuten.second_level.stacker import run_stack
        return run_stack(cfg, paths, progress=progress)
    from rakuten.second_level.fusion import run_fusion
    return run_fusion(cfg, paths, progress=progress)


def _report(res: dict) -> None:
    o = res.get("oof") or {}
    skipped = f" (skipped folds {res['skipped']})" if res.get("skipped") else ""
    if o:
        print(f"  {res['name']:32s} OOF macro-F1 {o['macro_f1']:.4f}  weighted-F1 {o['weighted_f1']:.4f}  "
              f"acc {o['accuracy']:.4f}{skipped}")


def drop_skipped_inputs(cfg, preset) -> str | None:
    """Remove the inputs a preset run skipped (``preset.skipped``: experiments whose field was empty
    or that need images the data lacks) from a second-level config, in place. Returns why the
    config cannot run at all (a structured fusion missing a member, or nothing left), else None."""
    skipped = set((preset or {}).get("skipped") or [])
    if not skipped:
        return None
    sec = cfg.stack if cfg.get("kind") == "stack" else cfg.fusion
    if cfg.get("kind") == "fusion" and sec.get("variant") != "late":
        from rakuten.second_level.fusion import fusion_inputs
        missing = sorted(set(fusion_inputs(cfg)[0]) & skipped)
        return f"its inputs {', '.join(missing)} were skipped" if missing else None
    gone = [n for n in sec.inputs if n in skipped]
    if gone:
        sec["inputs"] = [n for n in sec.inputs if n not in skipped]
        print(f"  {cfg.name}: without {', '.join(gone)} (skipped on this data)")
    return None if len(sec.inputs) >= 1 else "all its inputs were skipped"


def _run_named(loader, name: str, paths: Paths, preset, progress: bool) -> dict | None:
    cfg = loader(name, preset)
    why = drop_skipped_inputs(cfg, preset)
    if why:
        print(f"  {cfg.name}: skipped, {why}")
        return None
    res = run_second_level(cfg, paths, progress)
    _report(res)
    return res


def fuse(name: str, paths: Paths, preset=None, progress: bool = True) -> dict | None:
    return _run_named(load_fusion, name, paths, preset, progress)


def stack(name: str, paths: Paths, preset=None, progress: bool = True) -> dict | None:
    return _run_named(load_stack, name, paths, preset, progress)


def tune_and_refit(name: str, paths: Paths, preset=None, n_trials: int = 10, timeout: float | None = None,
                   progress: bool = True, total: bool = False) -> dict | None:
    """Optuna study for ``name`` (SQLite beside it), then the best config refitted as ``<name>_tuned``.
    ``total``: ``n_trials`` is the study's target size, so a rerun of a finished study adds no trial.

    The tuned model's OOF score is optimistic: its parameters were chosen on those OOF rows. The
    leaderboard marks it; per-class bias tuning (below) reports its gain on held-out folds instead.
    """
    from rakuten.second_level.tuning import tune

    cfg = load_second_level(name, preset)
    why = drop_skipped_inputs(cfg, preset)
    if why:
        print(f"  {cfg.name}: not tuned, {why}")
        return None
    res = tune(cfg, paths, n_trials=n_trials, timeout=timeout, progress=progress, total=total)
    print(f"  study {res['study_name']}: {res['n_trials']} trials ({res['n_complete']} complete, "
          f"{res['n_pruned']} pruned); best OOF macro-F1 {res['best_value'] if res['best_value'] is None else round(res['best_value'], 4)}")
    if not res.get("best_config"):
        return None
    tuned = load_second_level(res["best_config"], preset)
    drop_skipped_inputs(tuned, preset)
    out = run_second_level(tuned, paths, progress)
    _report(out)
    return out


def tuned_is_stale(paths: Paths, name: str) -> str | None:
    """Why ``<name>_tuned`` may not stand in for ``name``, or None: its own inputs changed since it
    was fitted, or its parameters come from a study of another version of ``name`` (another config,
    or upstream artifacts that were since retrained; ``tune.base_signature`` in its config is the
    study's signature, which is ``name``'s own ``config_hash``)."""
    from rakuten.lineage import lineage_problem
    tuned = f"{name}_tuned"
    why = lineage_problem(paths, tuned)
    if why:
        return why
    try:
        base_meta = Experiment(paths.oof_dir, name).read_meta()
        tuned_meta = Experiment(paths.oof_dir, tuned).read_meta()
    except Exception as e:  # noqa: BLE001 - a missing or corrupt meta.json is a reason, not a crash
        return str(e)
    made_from = ((tuned_meta.get("config") or {}).get("tune") or {}).get("base_signature")
    if made_from != base_meta.get("config_hash"):
        return f"its parameters were tuned on another version of {name} (config or inputs changed since)"
    return None


def submit_best(paths: Paths, exp, fmt: str | None = None, bias: bool = False) -> Path:
    """Submission of ``exp`` (its tuned version when one exists), or of the best experiment on the
    leaderboard; a file with the same name and content from an earlier run is reused.

    ``exp`` may be a list of candidates: the model is then chosen on held-out folds by the target's
    metric (``selection.select_submission``), and only among models that beat their best input."""
    from rakuten.data.prepared import load_dataset
    from rakuten.reporting.submission import SubmissionError, make_submission
    from rakuten.second_level.selection import METRIC_OF_FORMAT

    selection = None
    if isinstance(exp, (list, tuple)):
        from rakuten.second_level.selection import select_submission
        metric = METRIC_OF_FORMAT.get(fmt or load_dataset(paths).fmt, "macro_f1")
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
        from rakuten.reporting.leaderboard import build_leaderboard
        board = build_leaderboard(paths, write=False)
        if not board:
            raise SubmissionError("no complete experiment to submit")
        exp = board[0]["experiment"]
    elif not str(exp).endswith("_tuned") and Experiment(paths.oof_dir, f"{exp}_tuned").meta_path.exists():
        # the tuned version only when current and better; its score on the rows its parameters were
        # picked on is optimistic, so the nested score of the choice is reported beside it
        from rakuten.second_level.selection import choose_tuned
        stale = tuned_is_stale(paths, exp)
        if stale:
            print(f"  {exp}_tuned not used: {stale}; submitting {exp}")
        else:
            metric = METRIC_OF_FORMAT.get(fmt or load_dataset(paths).fmt, "macro_f1")
            sel = choose_tuned(paths, exp, metric)
            others = ", ".join(f"{n} {s:.4f}" for n, s in sel["scores"].items())
            print(f"  {exp} vs {exp}_tuned (OOF {metric}: {others}): chosen {sel['chosen']}; {metric} "
                  f"{sel['optimistic']:.4f} optimistic (chosen on the rows it is scored on), {sel['nested']:.4f} "
                  f"nested (chosen on the other folds, per fold {sel['per_fold']})")
            exp = sel["chosen"]
            selection = sel
    if bias:
        # Per-class biases are used only when they raised macro-F1 on held-out folds (fitted on the
        # other folds): on small or well-calibrated data they can hurt, and the check says so.
        from rakuten.second_level.tuning import load_biases, tune_biases
        gain = (load_biases(paths, exp) or tune_biases(paths, exp))["heldout"]["mean_gain"]
        print(f"  per-class logit biases: {gain:+.4f} macro-F1 on held-out folds -> "
              f"{'applied' if gain > 0 else 'not applied'}")
        bias = gain > 0
    # A file of that name from an earlier run is reused only when its sidecar matches the current
    # predictions and artifacts; otherwise it is rewritten (and says so). make_submission records
    # the submitted model in submissions/submitted.json (what export.py bundles).
    return make_submission(paths, exp, fmt, bias=bias, reuse=True, selection=selection)


def leaderboard(paths: Paths) -> list[dict]:
    from rakuten.reporting.leaderboard import build_leaderboard
    board = build_leaderboard(paths, write=True)
    print(f"{'rank':>4}  {'experiment':<36} {'kind':<9} {'macro-F1':>8} {'wF1':>7} {'acc':>7}")
    for r in board:
        print(f"{r['rank']:>4}  {r['experiment']:<36} {r['kind']:<9} {r['macro_f1']:>8.4f} "
              f"{r['weighted_f1']:>7.4f} {r['accuracy']:>7.4f}")
    print(f"wrote {paths.submissions_dir / 'leaderboard.md'} (+ .json, .png)")
    return board
