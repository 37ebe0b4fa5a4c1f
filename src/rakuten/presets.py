"""Presets: which experiments, fusions and stacks make one full run (``configs/presets/<name>.yaml``)."""
from __future__ import annotations

import os

from rakuten.config import Config, ConfigError, load_config

DEFAULT_PRESET = os.environ.get("RAKUTEN_PRESET", "demo")


def load_preset(name: str | None = None) -> Config:
    name = name or DEFAULT_PRESET
    cfg = load_config(f"presets/{name}.yaml") if not name.endswith(".yaml") else load_config(name)
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
