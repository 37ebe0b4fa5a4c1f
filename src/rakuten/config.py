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
from typing import Any, Callable

import yaml

from rakuten.paths import CONFIG_DIR
from rakuten.artifacts import atomic_write_text


class ConfigError(RakutenError, ValueError):
    """A config that cannot be used (unknown key, bad type or value); the message is one line."""
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
        """A plain, deep-copied dict of the config."""
        return {k: (v.to_dict() if isinstance(v, Config) else copy.deepcopy(v)) for k, v in self.items()}

    def get_path(self, dotted: str, default: Any = None) -> Any:
        """The value at a dotted path (``train.lr``), or ``default`` when a part is missing."""
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def deep_merge(base: dict, child: dict) -> dict:
    """``child`` over ``base`` (both deep-copied): mappings merge key by key, other values replace."""
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
    """(dotted key, YAML-parsed value, whether ``+key`` adds a new key) of one ``key=value`` override."""
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


# Keys that moved (old dotted path -> new): a config or override naming the old one is refused with a
# one-line error naming the new one, never silently ignored or silently added.
MOVED_KEYS = {"train.early_stopping": "train.early_stop",   # fusion's, now the one key unimodal models use
              # a stack's, before fusion and stack shared one (a bundle exported before then says so too)
              "stack.test_input": "test_input (top level, as in fusion configs)"}


def refuse_moved_keys(d: dict, source: str) -> None:
    """Raise ConfigError when ``d`` holds a key of ``MOVED_KEYS`` (its old path)."""
    for old, new in MOVED_KEYS.items():
        node = d
        for part in old.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            raise ConfigError(f"{source}: {old} is now {new}; rename it")


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """``cfg`` (deep-copied) with each ``key=value`` override applied; a key that does not exist is an
    error unless written ``+key=value``."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        key, value, add = parse_override(item)
        if key in MOVED_KEYS:
            raise ConfigError(f"override {item!r}: {key} is now {MOVED_KEYS[key]}")
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


def load_config(source, overrides: list[str] | None = None, defaults: dict | None = None,
                check: Callable[[Config], None] | None = None) -> Config:
    """The one config loader of every kind: ``source`` (a YAML path or a name under configs/, or a
    recorded config: a dict or Config from meta.json or a bundle) over ``defaults`` (deep-copied), then
    ``overrides``; with ``defaults``, types and ranges are checked (``validate_config``), then the
    kind's own rules (``check``: ``experiment.check_experiment``, ``fusion.check_fusion``,
    ``stacker.check_stack``). The named loaders (``load_experiment``, ``load_fusion``, ``load_stack``)
    and the recorded-config readers (``fusion_config``, ``stack_config``) are this call with their
    kind's defaults and check; merging again a config that went through it changes nothing."""
    if isinstance(source, dict):
        data = source.to_dict() if isinstance(source, Config) else copy.deepcopy(dict(source))
        where, path = str(data.get("_source_") or data.get("name") or "config"), None
    else:
        path = resolve_config_path(source)
        data, where = _load_yaml(path), str(path)
    refuse_moved_keys(data, where)
    if defaults:
        data = deep_merge(defaults, data)   # deep-copies both
    data = apply_overrides(data, overrides)
    if path is not None:
        data.setdefault("name", path.stem)
        data["_source_"] = str(path)
    cfg = Config(data)
    if defaults:
        validate_config(cfg, defaults, where)
    if check is not None:
        check(cfg)
    return cfg


def save_config(cfg: dict, path: str | Path) -> None:
    """Write ``cfg`` as YAML (atomically)."""
    d = cfg.to_dict() if isinstance(cfg, Config) else cfg
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))


# ------------------------------------------------------------------------------------------ validation
# Ranges of numeric keys, by dotted key, whatever the config's kind (fusion, stack and unimodal configs
# share the names where they mean the same thing): (low, high, low inclusive, high inclusive).
# A value outside its range would only fail at training time, after artifacts were touched.
_INF = float("inf")
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "folds.k": (2, _INF, True, True),
    "train.epochs": (1, _INF, True, True),
    "train.batch_size": (1, _INF, True, True),
    "train.eval_batch_size": (1, _INF, True, True),
    "train.lr": (0, _INF, False, True),
    "train.head_lr": (0, _INF, False, True),
    "train.weight_decay": (0, _INF, True, True),
    "train.warmup_ratio": (0, 1, True, True),
    "train.patience": (1, _INF, True, True),
    "train.inner_frac": (0, 1, True, False),
    "train.inner_trials": (0, _INF, True, True),     # fusion: Optuna trials per fold on the inner split
    "train.late_lr": (0, _INF, False, True),         # fusion: step of the residual path's late weights
    "fusion.modality_dropout": (0, 1, True, False),
    "train.grad_accum": (1, _INF, True, True),
    "train.clip_grad": (0, _INF, True, True),
    "train.balanced_power": (0, _INF, True, True),
    "train.num_workers": (0, _INF, True, True),
    "train.num_threads": (1, _INF, True, True),
    "train.class_weight_power": (0, _INF, True, True),
    "data.max_len": (1, _INF, True, True),
    "data.image_size": (1, _INF, True, True),
    "data.cache_size": (1, _INF, True, True),
    "data.pad_to_multiple_of": (0, _INF, True, True),
    "data.packing": (0, _INF, True, True),
    "model.dropout": (0, 1, True, False),
    "model.head_hidden": (0, _INF, True, True),
    "model.freeze_layers": (0, _INF, True, True),
    "model.tokenizer_vocab": (1, _INF, True, True),
    "model.head_C": (0, _INF, False, True),
    "loss.class_weight_power": (0, _INF, True, True),
    "loss.label_smoothing": (0, 1, True, False),
    "loss.focal_gamma": (0, _INF, True, True),
    "tfidf.max_features": (1, _INF, True, True),
    "knn.k": (1, _INF, True, True),
    "knn.temperature": (0, _INF, False, True),
    "fusion.dropout": (0, 1, True, False),
    "fusion.hidden": (1, _INF, True, True),
    "fusion.width": (0, _INF, True, True),
    "logreg.C": (0, _INF, False, True),
    "lgbm.num_leaves": (2, _INF, True, True),
    "lgbm.learning_rate": (0, _INF, False, True),
    "lgbm.min_data_in_leaf": (1, _INF, True, True),
    "lgbm.feature_fraction": (0, 1, False, True),
    "lgbm.bagging_fraction": (0, 1, False, True),
    "lgbm.bagging_freq": (0, _INF, True, True),
    "lgbm.lambda_l2": (0, _INF, True, True),
    "lgbm.max_bin": (2, _INF, True, True),
    "lgbm.num_boost_round": (1, _INF, True, True),
    "lgbm.early_stopping_rounds": (0, _INF, True, True),
    "lgbm.inner_frac": (0, 1, True, False),
    "lgbm.class_weight_power": (0, _INF, True, True),
    "lgbm.num_threads": (1, _INF, True, True),
    "blend.max_steps": (1, _INF, True, True),
    "blend.l2_bias": (0, _INF, True, True),
}
# Keys whose default's type is not the only one allowed (train.compile: false, true or a mode name;
# tfidf.C: one value, or a list the inner search chooses from).
EXTRA_TYPES: dict[str, tuple[type, ...]] = {"train.compile": (bool, str), "tfidf.C": (int, float, list),
                                            "data.packing": (bool, int),   # on/off, or the packed row length
                                            "train.clip_grad": (int, float, type(None)),
                                            "train.device": (str, int),
                                            # null switches that n-gram part off (a char-only member)
                                            "tfidf.word_ngrams": (list, type(None)),
                                            "tfidf.char_ngrams": (list, type(None))}


def _type_name(t: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(t, t.__name__)


def _matches(value, types: tuple[type, ...]) -> bool:
    for t in types:
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t not in (bool, int, float) and isinstance(value, t):
            return True
    return False


def validate_config(cfg: dict, defaults: dict, source: str) -> None:
    """Types (each value has its default's type) and ranges (``RANGES``) of a resolved config.

    Called when a config is loaded, before any artifact is touched: ``train.epochs=abc`` or
    ``train.lr=-1`` is a one-line error at once, not a traceback when training starts, and
    ``train.epochs=0`` cannot write an untrained fold marked complete. Keys without a default (added
    with ``+key=value``) and keys whose default is null are not type-checked.
    """
    def walk(node: dict, dflt: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if key.startswith("_") or key not in dflt:
                continue
            d = dflt[key]
            if isinstance(d, dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: {dotted} must be a mapping (got {value!r})")
                walk(value, d, dotted + ".")
                continue
            types = EXTRA_TYPES.get(dotted) or (None if d is None else (type(d),))
            if types is not None and not _matches(value, types):
                want = " or ".join(_type_name(t) for t in types)
                raise ConfigError(f"{source}: {dotted} must be {want} (got {value!r})")
            check_range(dotted, value, source)

    walk(cfg, defaults, "")


def check_range(dotted: str, value, source: str) -> None:
    """Raise ConfigError when ``value`` is outside ``RANGES[dotted]`` (keys without a range pass)."""
    r = RANGES.get(dotted)
    if r is None or value is None or isinstance(value, (bool, list, str)):
        if r is not None and isinstance(value, str):
            raise ConfigError(f"{source}: {dotted} must be a number (got {value!r})")
        return
    lo, hi, lo_in, hi_in = r
    v = float(value)
    ok = v == v and (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)
    if not ok:
        left, right = "[" if lo_in else "(", "]" if hi_in else ")"
        hi_s = "inf" if hi == _INF else f"{hi:g}"
        raise ConfigError(f"{source}: {dotted}={value!r} is out of range {left}{lo:g}, {hi_s}{right}")
