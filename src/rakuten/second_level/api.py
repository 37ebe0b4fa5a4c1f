"""The second level as the stages (``rakuten.stages``) and ``launch`` call it: by config name, with the
preset's folds.

Each function is idempotent: folds already done on the same fold file, config and upstream
artifacts are skipped by the functions it calls.

Imports by kind, inside the functions: fusion brings torch and the stacker LightGBM, and a process
that handles one kind loads only what that kind needs.
"""
from __future__ import annotations

import logging
from pathlib import Path

from rakuten.artifacts import Experiment
from rakuten.config import ConfigError, load_config
from rakuten.lineage import lineage_problem
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
    """A fusion config by name or path over FUSION_DEFAULTS, with the preset's fold file and entry, then
    ``overrides``; checked at once."""
    # heavy: fusion loads torch
    from rakuten.second_level.fusion import FUSION_DEFAULTS, check_fusion
    ov = preset_overrides(preset, None if str(name).endswith(".yaml") else _name_of(name))
    # types, ranges and allowed values checked now, before any artifact is touched
    return load_config(name, ov + list(overrides or []), defaults=FUSION_DEFAULTS, check=check_fusion)


def load_stack(name: str, preset=None, overrides: list[str] | None = None):
    """A stack config by name or path over STACK_DEFAULTS, with the preset's fold file and entry, then
    ``overrides``; checked at once."""
    # heavy: the stacker loads scikit-learn and LightGBM
    from rakuten.second_level.stacker import STACK_DEFAULTS, check_stack
    ov = preset_overrides(preset, None if str(name).endswith(".yaml") else _name_of(name))
    # types, ranges and allowed values checked now, before any artifact is touched
    return load_config(name, ov + list(overrides or []), defaults=STACK_DEFAULTS, check=check_stack)


def load_second_level(name: str, preset=None, overrides: list[str] | None = None):
    """A fusion or stack config by name or path (its ``kind`` decides the defaults)."""
    kind = load_config(name, overrides).get("kind")
    if kind not in ("fusion", "stack"):
        raise ConfigError(f"{name}: kind must be fusion or stack (got {kind!r})")
    return (load_stack if kind == "stack" else load_fusion)(name, preset, overrides)


def run_second_level(cfg, paths: Paths, progress: bool = True) -> dict:
    """Run a loaded fusion or stack config (folds already done are skipped); returns its result dict."""
    if cfg.get("kind") == "stack":
        # heavy: scikit-learn and LightGBM
        from rakuten.second_level.stacker import run_stack
        return run_stack(cfg, paths, progress=progress)
    # heavy: torch
    from rakuten.second_level.fusion import run_fusion
    return run_fusion(cfg, paths, progress=progress)


def report(res: dict) -> None:
    """Print one OOF line of a second-level result (nothing when it has no OOF yet)."""
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
        # heavy: torch
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
    return run_and_report(cfg, paths, progress)


def run_and_report(cfg, paths: Paths, progress: bool = True) -> dict:
    """Run a loaded second-level config and print its OOF line."""
    res = run_second_level(cfg, paths, progress)
    report(res)
    return res


def fuse(name: str, paths: Paths, preset=None, progress: bool = True) -> dict | None:
    """Load fusion ``name`` for the preset and run it (None when the preset run skipped its inputs)."""
    return _run_named(load_fusion, name, paths, preset, progress)


def stack(name: str, paths: Paths, preset=None, progress: bool = True) -> dict | None:
    """Load stack ``name`` for the preset and run it (None when the preset run skipped its inputs)."""
    return _run_named(load_stack, name, paths, preset, progress)


def tuned_is_stale(paths: Paths, name: str) -> str | None:
    """Why ``<name>_tuned`` may not stand in for ``name``, or None: its own inputs changed since it
    was fitted, or its parameters come from a study of another version of ``name`` (another config,
    or upstream artifacts that were since retrained; ``tune.base_signature`` in its config is the
    study's signature, which is ``name``'s own ``config_hash``)."""
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
