"""Presets: which experiments, fusions and stacks make one full run (``configs/presets/<name>.yaml``)."""
from __future__ import annotations

import os

from rakuten.config import Config, ConfigError, load_config

DEFAULT_PRESET = os.environ.get("RAKUTEN_PRESET", "demo")
# Every key a preset may hold (``skipped`` is set by run_all; ``_source_``/``_base_`` by the loader).
PRESET_KEYS = ("name", "demo_data", "folds", "experiments", "overrides", "fusion", "stack", "tune", "submit",
               "submit_bias", "no_images", "skipped", "_source_", "_base_")


def load_preset(name: str | None = None) -> Config:
    name = name or DEFAULT_PRESET
    cfg = load_config(f"presets/{name}.yaml") if not name.endswith(".yaml") else load_config(name)
    unknown = [k for k in cfg if k not in PRESET_KEYS]
    if unknown:
        raise ConfigError(f"preset {name}: unknown key {unknown[0]!r} (allowed: {', '.join(PRESET_KEYS[:-3])})")
    for key in ("experiments",):
        if not cfg.get(key):
            raise ConfigError(f"preset {name}: no {key} listed")
    cfg.setdefault("overrides", {})
    cfg.setdefault("fusion", [])
    cfg.setdefault("stack", [])
    return cfg


def experiment_overrides(preset: Config, exp_name: str) -> list[str]:
    """``key=value`` strings the preset applies to one experiment: its fold file, then ``all``, then
    the experiment's own entry."""
    out = []
    if preset.get("folds"):
        out += [f"folds.k={int(preset.folds.k)}", f"folds.seed={int(preset.folds.seed)}"]
    for scope in ("all", exp_name):
        for k, v in (preset.overrides.get(scope) or {}).items():
            out.append(f"{k}={v}")
    return out


def validate_preset(preset: Config) -> None:
    """Load (and so validate: names, types, ranges) every config the preset runs, with the preset's
    overrides, before the pipeline reads the data or writes anything: a typo in the last stack's
    name is then one line at once, not an error after the unimodal models have trained."""
    from rakuten.experiment import load_experiment
    from rakuten.second_level.api import load_fusion, load_stack
    for name in preset.experiments:
        load_experiment(name, experiment_overrides(preset, name))
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
