"""One YAML config per experiment, ``key=value`` overrides on the command line.

A config may name ``_base_: other.yaml`` (relative to itself); the base is deep-copied, never aliased,
and the child's keys win. Overrides use dotted keys (``train.lr=3e-5``); values are parsed as YAML so
``train.epochs=3`` is an int and ``model.pretrained=false`` a bool. Overriding a key the config does
not have is an error (typos fail loudly); prefix ``+`` to add a new key on purpose.
"""
from __future__ import annotations

from rakuten.errors import RakutenError

import copy
from pathlib import Path
from typing import Any

import yaml

from rakuten.paths import CONFIG_DIR


class ConfigError(RakutenError, ValueError):
    pass


class Config(dict):
    """A dict with attribute access (``cfg.train.lr``); nested dicts become Configs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for k, v in list(self.items()):
            if isinstance(v, dict) and not isinstance(v, Config):
                super().__setitem__(k, Config(v))

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = Config(value) if isinstance(value, dict) and not isinstance(value, Config) else value

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(dict(self), memo))

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, Config) else copy.deepcopy(v)) for k, v in self.items()}

    def get_path(self, dotted: str, default: Any = None) -> Any:
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def deep_merge(base: dict, child: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config_path(path: str | Path) -> Path:
    """Accept a path, a path relative to ``configs/``, or a bare experiment name."""
    p = Path(path)
    candidates = [p, CONFIG_DIR / p]
    if p.suffix not in (".yaml", ".yml"):
        candidates += [CONFIG_DIR / sub / f"{p}.yaml" for sub in ("experiments", "fusion", "stack", "presets")]
        candidates += [p.with_suffix(".yaml")]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ConfigError(f"config not found: {path} (looked in {', '.join(str(c) for c in candidates[:2])} ...)")


def _load_yaml(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("_base_", None)
    if base:
        bases = base if isinstance(base, list) else [base]
        merged: dict = {}
        for b in bases:
            merged = deep_merge(merged, _load_yaml((path.parent / b).resolve(), seen + (path,)))
        data = deep_merge(merged, data)
    return data


def parse_override(item: str) -> tuple[str, Any, bool]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    add = key.startswith("+")
    key = key.lstrip("+").strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads "3e-5" (no dot) as a string; on the command line it always means a number
        try:
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            pass
    return key, value, add


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        key, value, add = parse_override(item)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node:
                if not add:
                    raise ConfigError(f"override {item!r}: no key {part!r} in config (use +{key}=... to add)")
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        if parts[-1] not in node and not add:
            raise ConfigError(f"override {item!r}: no key {key!r} in config (use +{key}=... to add)")
        node[parts[-1]] = value
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, defaults: dict | None = None) -> Config:
    """Load ``path`` over ``defaults`` (deep-copied), then apply ``overrides``; record the source."""
    p = resolve_config_path(path)
    data = _load_yaml(p)
    if defaults:
        data = deep_merge(defaults, data)
    data = apply_overrides(data, overrides)
    data.setdefault("name", p.stem)
    data["_source_"] = str(p)
    return Config(data)


def save_config(cfg: dict, path: str | Path) -> None:
    from rakuten.artifacts import atomic_write_text
    d = cfg.to_dict() if isinstance(cfg, Config) else cfg
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))
