"""Presets: which experiments, fusions and stacks make one full run (``configs/presets/<name>.yaml``)."""
from __future__ import annotations

import os

from rakuten.config import Config, ConfigError, load_config

DEFAULT_PRESET = os.environ.get("RAKUTEN_PRESET", "demo")
# Every key a preset may hold (``skipped`` is set by run_all; ``_source_``/``_base_`` by the loader).
PRESET_KEYS = ("name", "demo_data", "folds", "experiments", "overrides", "fusion", "stack", "tune", "submit",
               "submit_bias", "no_images", "backbones", "skipped", "_source_", "_base_")
# ``backbones``: full (the configs' own) | reduced (each hub/timm backbone swapped for a reduced,
# randomly initialised build of the same architecture: models/backbones.py, ``--backbones reduced``)
BACKBONES = ("full", "reduced")


def load_preset(name: str | None = None, backbones: str | None = None) -> Config:
    """The preset ``configs/presets/<name>.yaml`` (or a YAML path); ``backbones`` (full | reduced),
    when given, overrides the preset's own ``backbones`` key (default full)."""
    name = name or DEFAULT_PRESET
    cfg = load_config(f"presets/{name}.yaml") if not name.endswith(".yaml") else load_config(name)
    unknown = [k for k in cfg if k not in PRESET_KEYS]
    if unknown:
        raise ConfigError(f"preset {name}: unknown key {unknown[0]!r} (allowed: {', '.join(PRESET_KEYS[:-3])})")
    for key in ("experiments",):
        if not cfg.get(key):
            raise ConfigError(f"preset {name}: no {key} listed")
    if backbones is not None:
        cfg["backbones"] = backbones
    cfg.setdefault("backbones", "full")
    if cfg.backbones not in BACKBONES:
        raise ConfigError(f"preset {name}: backbones must be {' or '.join(BACKBONES)} (got {cfg.backbones!r})")
    cfg.setdefault("overrides", {})
    cfg.setdefault("fusion", [])
    cfg.setdefault("stack", [])
    return cfg


def add_backbones_arg(parser) -> None:
    """``--backbones full|reduced`` for every script that builds a preset's experiments."""
    parser.add_argument("--backbones", choices=BACKBONES, default=None,
                        help="reduced: every hub/timm backbone becomes a reduced, randomly initialised build of "
                             "the same architecture with its own tokenizer class (a GPU preset's every code path "
                             "on CPU in minutes); default: the preset's (full)")


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
