"""Configs: _base_ inheritance is a deep copy, overrides are typed, unknown keys fail loudly."""
from __future__ import annotations

import pytest

from rakuten.config import ConfigError, apply_overrides, load_config
from rakuten.experiment import EXPERIMENT_DEFAULTS, load_experiment


def test_overrides_are_typed_and_strict():
    cfg = {"train": {"lr": 1e-3, "epochs": 3, "flag": True}}
    out = apply_overrides(cfg, ["train.lr=3e-5", "train.epochs=7", "train.flag=false", "+train.new=[1, 2]"])
    assert out["train"] == {"lr": 3e-5, "epochs": 7, "flag": False, "new": [1, 2]}
    assert cfg["train"]["epochs"] == 3  # input untouched
    with pytest.raises(ConfigError, match="no key 'train.lrr'"):
        apply_overrides(cfg, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        apply_overrides(cfg, ["train.lr"])


def test_base_inheritance_copies(tmp_path):
    (tmp_path / "base.yaml").write_text("a: {b: 1, c: [1]}\nname: base\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nname: child\na: {b: 2}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.a.b == 2 and cfg.a.c == [1] and cfg.name == "child"
    cfg.a.c.append(5)
    assert load_config(tmp_path / "child.yaml").a.c == [1]


def test_defaults_never_aliased():
    cfg = load_experiment("text_tiny_title", ["train.epochs=1"])
    cfg.train.lr = 123.0
    cfg.data.field = "description"
    assert EXPERIMENT_DEFAULTS["train"]["lr"] != 123.0
    assert EXPERIMENT_DEFAULTS["data"]["field"] == "title"
    assert load_experiment("text_tiny_description").data.field == "description"


def test_bad_kind_and_missing_config():
    with pytest.raises(ConfigError, match="kind must be"):
        load_experiment("text_tiny_title", ["kind=audio"])
    with pytest.raises(ConfigError, match="config not found"):
        load_experiment("no_such_experiment")


def test_every_shipped_experiment_config_loads():
    from rakuten.paths import CONFIG_DIR
    names = sorted(p.stem for p in (CONFIG_DIR / "experiments").glob("*.yaml"))
    assert len(names) >= 10
    for n in names:
        cfg = load_experiment(n)
        assert cfg.name == n


def test_one_fold_argument_parser_for_every_script():
    """``cli.parse_fold_arg`` reads run_fold/fuse/stack's ``--fold`` and launch.py's ``--folds``: one
    parser, the flag named in its one-line errors, the range checked when the fold count is known."""
    from rakuten.cli import parse_fold_arg
    from rakuten.errors import RakutenError

    assert parse_fold_arg("all") is None and parse_fold_arg(None) is None
    assert parse_fold_arg("all", k=3) == [0, 1, 2] and parse_fold_arg("2,0", k=3) == [2, 0]
    assert parse_fold_arg("7") == [7]                      # no k: the caller checks against its fold file
    with pytest.raises(RakutenError, match=r"^--folds must be an integer"):
        parse_fold_arg("x", flag="--folds")
    with pytest.raises(RakutenError, match=r"^--fold 3 is outside 0\.\.2"):
        parse_fold_arg("1,3", k=3)
