"""Fusion: every variant on complementary synthetic OOF data, leakage, idempotence, refusals, the script."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rakuten.artifacts import ArtifactError, Experiment, Predictions
from rakuten.config import CONFIG_DIR, ConfigError, load_config
from rakuten.labels import NUM_CLASSES
from rakuten.models.fusion_nets import FUSION_MODELS
from rakuten.models.registry import create_model, model_class
from rakuten.second_level.fusion import (FUSION_DEFAULTS, FUSION_VARIANTS,
                                         fit_predict_fold, fusion_config, fusion_inputs, load_fusion_data,
                                         run_fusion)
from synthetic import assert_test_close_to_oof, make_synthetic, single_scores

REPO = Path(__file__).resolve().parents[1]
FAST = ["train.lr=0.01", "train.epochs=60"]
DEMO_UPSTREAMS = {"text_tiny_title", "text_tiny_description", "text_tiny_text", "image_tiny", "tfidf_text"}


def _demo_configs() -> list[str]:
    """Every shipped fusion config over the demo upstream names (the cpu/gpu ones name real models)."""
    out = []
    for p in sorted((CONFIG_DIR / "fusion").glob("*.yaml")):
        names, _ = fusion_inputs(load_config(p, defaults=copy.deepcopy(FUSION_DEFAULTS)))
        if set(names) <= DEMO_UPSTREAMS:
            out.append(p.stem)
    return out


FUSION_CONFIGS = _demo_configs()


def cfg_of(name: str, *overrides: str):
    return load_config(f"fusion/{name}.yaml", [*FAST, *overrides], defaults=copy.deepcopy(FUSION_DEFAULTS))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("fusion"))


@pytest.fixture()
def synth_copy(synth, tmp_path):
    """A private copy for tests that alter upstream artifacts."""
    shutil.copytree(synth.workdir, tmp_path / "w")
    from rakuten.paths import Paths
    return Paths.make(tmp_path / "w", tmp_path / "w" / "data" / "synthetic")


# ---------------------------------------------------------------------------------- networks alone
@pytest.mark.parametrize("op", ["concat", "average"])
def test_image_projection_is_the_thesis_conv1d(op):
    """The network's forward pass (its fast matmul for the image) gives the fused features that the
    thesis's nn.Conv1d(kernel 1) on [B, D_img, 1] gives, combined with the text embeddings by hand."""
    fcfg = fusion_config({"name": "t", "fusion": {"text_groups": [["a", "b"]], "image": "img", "level1_op": op,
                                                  "level2_op": op, "head": "linear"}}).fusion
    net = create_model("fusion_hierarchical", cfg=fcfg, in_dims={"a": 8, "b": 8, "img": 20}).eval()
    assert isinstance(net.image_proj, torch.nn.Conv1d) and net.image_proj.kernel_size == (1,)
    batch = {"a": torch.randn(5, 8), "b": torch.randn(5, 8), "img": torch.randn(5, 20)}
    with torch.no_grad():
        out = net(batch)
        img = net.image_proj(batch["img"].unsqueeze(-1)).squeeze(-1)        # the real Conv1d
        ref = (torch.cat([batch["a"], batch["b"], img], dim=1) if op == "concat"
               else ((batch["a"] + batch["b"]) / 2 + img) / 2)
        torch.testing.assert_close(out["features"], ref)
        torch.testing.assert_close(out["logits"], ref @ net.head.weight.T + net.head.bias)


@pytest.mark.parametrize("op1", ["add", "concat", "average"])
@pytest.mark.parametrize("op2", ["add", "concat", "average"])
@pytest.mark.parametrize("head", ["linear", "dropout", "mlp"])
def test_hierarchical_forward_every_op_and_head(op1, op2, head):
    """Unequal widths (title 8, description 6, second backbone 10, image 20) are projected as needed."""
    fcfg = fusion_config({"name": "t", "fusion": {
        "text_groups": [["t1", "d1"], ["t2", "d2"]], "image": "img", "level1_op": op1, "level2_op": op2,
        "head": head, "dropout": 0.2, "hidden": 16}}).fusion
    dims = {"t1": 8, "d1": 6, "t2": 10, "d2": 10, "img": 20}
    net = create_model("fusion_hierarchical", cfg=fcfg, in_dims=dims)
    batch = {k: torch.randn(4, d) for k, d in dims.items()}
    batch["labels"] = torch.tensor([0, 1, 2, 26])
    out = net(batch)
    assert out["logits"].shape == (4, NUM_CLASSES)
    assert out["features"].shape == (4, net.out_width)
    loss = torch.nn.functional.cross_entropy(out["logits"], batch["labels"], weight=net.class_weight)
    assert torch.isfinite(loss) and "loss" not in out      # the training loop owns the loss
    loss.backward()


@pytest.mark.parametrize("variant", sorted(FUSION_VARIANTS))
def test_registry_forward_smoke(variant):
    fusion = {"hierarchical": {"text_groups": [["a", "b"]], "image": "img"},
              "baseline": {"text": ["a"], "image": "img"},
              "late": {"inputs": ["a", "b", "img"], "op": "weighted"}}[variant]
    cfg = fusion_config({"name": "t", "fusion": {"variant": variant, **fusion}})
    cls = model_class(FUSION_MODELS[variant])
    assert cls.variant == variant
    specs = cls.inputs(cfg.fusion)
    dims = {n: (NUM_CLASSES if f == "logits" else 12) for n, f in specs}
    net = create_model(FUSION_MODELS[variant], cfg=cfg.fusion, in_dims=dims)
    out = net({n: torch.randn(3, d) for n, d in dims.items()})
    assert out["logits"].shape == (3, NUM_CLASSES) and torch.isfinite(out["logits"]).all()


def test_bad_config_fails_loudly():
    with pytest.raises(ConfigError, match="level1_op"):
        fusion_config({"name": "t", "fusion": {"text_groups": [["a"]], "level1_op": "max"}})
    with pytest.raises(ConfigError, match="variant"):
        fusion_config({"name": "t", "fusion": {"variant": "attention"}})
    with pytest.raises(ConfigError, match="text_groups"):
        fusion_config({"name": "t", "fusion": {"variant": "hierarchical"}})


def test_the_old_early_stopping_key_is_refused_naming_the_new_one(tmp_path):
    """train.early_stopping (fusion's old key) is now train.early_stop, as for unimodal models: in a
    file, an override or a dict, a one-line error names the new key instead of adding or ignoring it."""
    from rakuten.second_level.api import load_fusion

    with pytest.raises(ConfigError, match="train.early_stopping is now train.early_stop"):
        load_fusion("fusion_late_weighted", overrides=["train.early_stopping=fixed"])
    with pytest.raises(ConfigError, match="train.early_stopping is now train.early_stop"):
        fusion_config({"name": "t", "fusion": {"variant": "late", "inputs": ["a"]},
                       "train": {"early_stopping": "fixed"}})
    old = tmp_path / "old.yaml"
    old.write_text("kind: fusion\nfusion: {variant: late, inputs: [a]}\ntrain: {early_stopping: inner}\n")
    with pytest.raises(ConfigError, match="is now train.early_stop"):
        load_fusion(str(old))
    assert load_fusion("fusion_late_weighted", overrides=["train.early_stop=fixed"]).train.early_stop == "fixed"


# ------------------------------------------------------------------------------ on synthetic OOF data
def test_demo_configs_cover_every_variant():
    assert {"fusion_hier_avg_avg", "fusion_hier_concat_concat", "fusion_baseline_concat",
            "fusion_late_weighted"} <= set(FUSION_CONFIGS)
    variants = {load_config(f"fusion/{n}.yaml", defaults=copy.deepcopy(FUSION_DEFAULTS)).fusion.variant
                for n in FUSION_CONFIGS}
    assert variants == set(FUSION_VARIANTS)


@pytest.mark.parametrize("name", FUSION_CONFIGS)
def test_every_fusion_config_beats_its_best_input(synth, name):
    """The shipped configs, on complementary data: text knows classes 0-13, the image 14-26."""
    cfg = cfg_of(name)
    res = run_fusion(cfg, synth, progress=False)
    names, _ = fusion_inputs(cfg)
    best_single = max(single_scores(synth, names).values())
    assert res["oof"]["macro_f1"] > best_single + 0.2, (res["oof"], best_single)
    exp = Experiment(synth.oof_dir, cfg.name)
    meta = exp.read_meta()
    assert meta["kind"] == "fusion" and set(meta["upstream"]) == set(names)
    assert all(u["fold_hash"] == meta["fold_hash"] for u in meta["upstream"].values())
    assert sorted(meta["folds"]) == ["0", "1", "2", "3", "4"]
    t = Predictions.load(exp.test_path(0))
    assert t.logits.shape == (270, NUM_CLASSES) and np.isfinite(t.logits).all()
    assert_test_close_to_oof(synth, cfg.name)     # the test rows, scored on the held-out labels


def test_fold_k_model_is_fitted_only_on_other_folds(synth):
    cfg = cfg_of("fusion_hier_avg_avg")
    data = load_fusion_data(cfg, synth)
    for k in (0, 3):
        out = fit_predict_fold(cfg, data, k)
        fit, val, pred = out.info["fit_idx"], out.info["val_idx"], out.info["pred_idx"]
        assert (data.fold[fit] != k).all() and (data.fold[val] != k).all()
        assert np.array_equal(pred, np.flatnonzero(data.fold == k))
        assert len(np.intersect1d(fit, val)) == 0
        assert len(fit) + len(val) == (data.fold != k).sum()     # inner split = the training folds
        assert np.array_equal(out.oof.ids, data.ids[pred])


def _altered(data, rows, rng, labels=True, inputs=True):
    """A copy of ``data`` with random labels and random upstream inputs (embeddings and logits: late
    fusion reads the logits) on ``rows``."""
    d = copy.copy(data)
    d.folds_df = data.folds_df.copy()
    if labels:
        lab = d.folds_df["label"].to_numpy().copy()
        lab[rows] = rng.integers(0, NUM_CLASSES, size=len(rows))
        d.folds_df["label"] = lab
    d.inputs = {}
    for n, u in data.inputs.items():
        u2 = copy.copy(u)
        if inputs:
            emb = None if u.oof.embeddings is None else u.oof.embeddings.copy()
            if emb is not None:
                emb[rows] = rng.normal(0, 50, size=(len(rows), emb.shape[1]))
            logits = u.oof.logits.copy()
            logits[rows] = rng.normal(0, 20, size=(len(rows), logits.shape[1]))
            u2.oof = Predictions(u.oof.ids, logits, emb, u.oof.labels)
        d.inputs[n] = u2
    return d


@pytest.mark.parametrize("name,overrides", [
    ("fusion_hier_avg_avg", ()), ("fusion_late_weighted", ()), ("fusion_baseline_concat", ()),
    ("fusion_baseline_concat", ("test_input=averaged",)), ("fusion_late_weighted", ("test_input=averaged",))])
def test_fold_k_rows_do_not_reach_fold_k_model(synth, name, overrides):
    """Noise in fold k's labels, embeddings and logits leaves fold k's model (its test output)
    bit-identical; the same noise in another fold changes it (so the check has power)."""
    cfg = cfg_of(name, *overrides)
    data = load_fusion_data(cfg, synth)
    rng = np.random.default_rng(1)
    k = 2
    ref = fit_predict_fold(cfg, data, k)
    same = fit_predict_fold(cfg, _altered(data, np.flatnonzero(data.fold == k), rng), k)
    np.testing.assert_array_equal(ref.test.logits, same.test.logits)
    labels_only = fit_predict_fold(cfg, _altered(data, np.flatnonzero(data.fold == k), rng, inputs=False), k)
    np.testing.assert_array_equal(ref.oof.logits, labels_only.oof.logits)
    other = fit_predict_fold(cfg, _altered(data, np.flatnonzero(data.fold == 0), rng), k)
    assert not np.array_equal(ref.test.logits, other.test.logits)


def test_test_predictions_use_the_matching_upstream_fold(synth):
    """Fold k's fusion reads each upstream's test_fold<k>: changing test_fold2 changes only fold 2
    (without alignment; aligning fits maps on every fold model's test rows)."""
    cfg = cfg_of("fusion_baseline_concat", "fusion.align=none")
    data = load_fusion_data(cfg, synth)
    ref = {k: fit_predict_fold(cfg, data, k).test.logits for k in (1, 2)}
    for u in data.inputs.values():
        t = u.test[2]
        u.test[2] = Predictions(t.ids, t.logits, t.embeddings[::-1].copy())
    assert np.array_equal(fit_predict_fold(cfg, data, 1).test.logits, ref[1])
    assert not np.array_equal(fit_predict_fold(cfg, data, 2).test.logits, ref[2])


def test_idempotent_and_recomputes_on_change(synth_copy):
    cfg = cfg_of("fusion_late_average", "name=late_idem")
    first = run_fusion(cfg, synth_copy, progress=False)
    assert sorted(first["folds"]) == [0, 1, 2, 3, 4]
    again = run_fusion(cfg, synth_copy, progress=False)
    assert again["folds"] == {} and again["skipped"] == [0, 1, 2, 3, 4]
    changed = run_fusion(cfg_of("fusion_late_average", "name=late_idem", "fusion.op=weighted"), synth_copy,
                         progress=False)
    assert sorted(changed["folds"]) == [0, 1, 2, 3, 4]
    forced = run_fusion(cfg_of("fusion_late_average", "name=late_idem", "fusion.op=weighted"), synth_copy,
                        folds=[1], force=True, progress=False)
    assert list(forced["folds"]) == [1]


def test_refuses_experiments_on_different_fold_files(synth_copy):
    exp = Experiment(synth_copy.oof_dir, "image_tiny")
    exp.update_meta(fold_hash="0123456789abcdef")
    with pytest.raises(ArtifactError, match="different fold files"):
        run_fusion(cfg_of("fusion_hier_avg_avg"), synth_copy, progress=False)


def test_tfidf_cannot_be_embedding_fused_but_can_be_late_fused(synth):
    with pytest.raises(ArtifactError, match="no embeddings"):
        run_fusion(cfg_of("fusion_baseline_concat", "fusion.text=[tfidf_text]", "name=bad"), synth, progress=False)
    res = run_fusion(cfg_of("fusion_late_weighted", "fusion.inputs=[tfidf_text,image_tiny]", "name=late_tfidf"),
                     synth, progress=False)
    assert res["oof"]["macro_f1"] > 0.9


def test_class_weight_power_runs(synth):
    res = run_fusion(cfg_of("fusion_hier_concat_concat", "train.class_weight_power=0.5", "name=cw"), synth,
                     progress=False)
    assert res["oof"]["macro_f1"] > 0.8


def test_fuse_script(synth):
    cmd = [sys.executable, str(REPO / "src" / "fuse.py"), "--config", "fusion_late_average", "--workdir",
           str(synth.workdir), "--data-dir", str(synth.data_dir), "--no-progress", "name=late_script"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "OOF: macro-F1" in r.stdout
    meta = json.loads((synth.oof_dir / "late_script" / "meta.json").read_text())
    assert meta["kind"] == "fusion" and meta["oof"]["macro_f1"] > 0.9
    bad = subprocess.run(cmd[:-1] + ["fusion.nope=1"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "fusion.nope" in bad.stderr


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("rotated"), rotate_spaces=True)


@pytest.mark.parametrize("name", ["fusion_hier_concat_concat", "fusion_baseline_concat"])
def test_alignment_rescues_unaligned_fold_spaces(synth, rotated, name):
    """Each upstream fold model with its own rotated embedding space (as random-init models have):
    raw OOF embeddings train a fusion that fails on the held-out fold; test-anchored maps recover the
    score of the shared-space data."""
    shared = run_fusion(cfg_of(name, "name=shared_space"), synth, progress=False)["oof"]["macro_f1"]
    raw = run_fusion(cfg_of(name, "name=raw", "fusion.align=none"), rotated, progress=False)["oof"]["macro_f1"]
    aligned = run_fusion(cfg_of(name, "name=aligned"), rotated, progress=False)["oof"]["macro_f1"]
    assert raw < 0.5 * shared
    assert aligned > shared - 0.05, (raw, aligned, shared)


def test_alignment_map_is_identity_on_shared_spaces_and_exact_on_rotations():
    from rakuten.second_level.fusion import fit_alignment
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    assert fit_alignment(x, x.copy(), 1e-3) is None
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    a, b = fit_alignment(x, x @ q + 1.0, 1e-6)
    np.testing.assert_allclose(x @ a + b, x @ q + 1.0, atol=1e-3)


@pytest.mark.parametrize("overrides", [("test_input=averaged",), ("test_input=averaged", "fusion.align=none"),
                                       ("train.early_stop=fixed", "train.epochs=20")])
def test_other_modes_run(rotated, overrides):
    res = run_fusion(cfg_of("fusion_baseline_concat", "name=modes", *overrides), rotated, progress=False)
    meta = Experiment(rotated.oof_dir, "modes").read_meta()
    assert all(np.isfinite(Predictions.load(Experiment(rotated.oof_dir, "modes").test_path(k)).logits).all()
               for k in range(5))
    if "train.early_stop=fixed" in overrides:
        assert all(meta["folds"][str(k)]["n_inner_val"] == 0 and meta["folds"][str(k)]["epochs_run"] == 20
                   for k in range(5))
    else:
        assert res["oof"]["macro_f1"] > 0.5 or "fusion.align=none" in overrides


# ------------------------------------------------------------------ issue 27: what makes it hold on real data
def _net(**fusion):
    fcfg = fusion_config({"name": "t", "fusion": {"text_groups": [["a", "b"]], "image": "img", **fusion}}).fusion
    return create_model("fusion_hierarchical", cfg=fcfg, in_dims={"a": 8, "b": 6, "img": 20})


def _batch(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = {k: torch.randn(n, d, generator=g) for k, d in {"a": 8, "b": 6, "img": 20}.items()}
    b.update({f"{k}:logits": torch.randn(n, NUM_CLASSES, generator=g) * 3 for k in ("a", "b", "img")})
    return b


@pytest.mark.parametrize("op", ["add", "concat", "average"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_residual_network_starts_as_the_late_fusion_of_its_inputs(op, head):
    """Untrained, the residual network's logits are the mean of its inputs' log-probabilities (the
    correction head starts at zero), whatever the embeddings say; it reads every input's logits."""
    net = _net(residual=True, level1_op=op, level2_op=op, head=head).eval()
    assert ("img", "logits") in net.inputs(net_cfg := fusion_config(
        {"name": "t", "fusion": {"text_groups": [["a", "b"]], "image": "img", "residual": True}}).fusion)
    assert net.key("img", "logits") == "img:logits" and net.key("img", "embeddings") == "img"
    b = _batch()
    late = torch.stack([torch.log_softmax(b[f"{k}:logits"], 1) for k in ("a", "b", "img")]).mean(0)
    with torch.no_grad():
        out = net(b)["logits"]
        torch.testing.assert_close(out, late)
        b2 = {**b, "img": b["img"] * 100}
        torch.testing.assert_close(net(b2)["logits"], late)
    assert net_cfg.residual


@pytest.mark.parametrize("op", ["add", "concat", "average"])
def test_masks_leave_a_missing_input_out(op):
    """A missing description: whatever its embedding holds, the fused vector is the same; with
    average, it is the present inputs' mean (not diluted by a zero)."""
    net = _net(masks=True, level1_op=op, level2_op="concat", head="linear").eval()
    b = _batch()
    b["b:present"] = torch.tensor([1, 0, 1, 0, 1, 1, 0], dtype=torch.float32)
    with torch.no_grad():
        f1 = net(b)["features"]
        f2 = net({**b, "b": b["b"] + 50})["features"]
        miss = b["b:present"] == 0
        torch.testing.assert_close(f1[miss], f2[miss])
        assert not torch.allclose(f1[~miss], f2[~miss])
        if op == "average":
            a = net.l1_proj[0][0](b["a"])
            torch.testing.assert_close(f1[miss][:, :a.shape[1]], a[miss])


def test_modality_dropout_only_in_training_and_never_drops_every_input():
    net = _net(modality_dropout=0.9, masks=True)
    b = _batch(n=400)
    b["a:present"] = torch.zeros(400)        # title missing everywhere: dropout must not empty a row
    torch.manual_seed(0)
    p = net.train()._presence(b, 400, "cpu")
    assert (p.sum(1) > 0).all() and (p[:, 0] == 0).all()
    assert 0.05 < float((p[:, 1:] == 0).float().mean()) < 0.95
    assert torch.equal(net.eval()._presence(b, 400, "cpu")[:, 1:], torch.ones(400, 2))


def test_input_present_reads_the_products():
    from rakuten.second_level.fusion import input_present
    df = pd.DataFrame({"title": ["a", "", " ", "b"], "description": ["", "x", "", None],
                       "has_image": [True, False, True, True]})
    assert input_present(df, "image", None).tolist() == [True, False, True, True]
    assert input_present(df, "text", "title").tolist() == [True, False, False, True]
    assert input_present(df, "text", "description").tolist() == [False, True, False, False]
    assert input_present(df, "text", "text").tolist() == [True, True, False, True]


def test_alignment_of_per_fold_standardised_features_is_exact():
    """A frozen backbone's features standardised by each fold's statistics: the map is per dimension
    and exact, though there are fewer anchor rows (50) than dimensions (80); the full ridge map
    fitted on those rows is not exact on other rows, which is what cost the real data 0.03."""
    from rakuten.second_level.fusion import apply_alignment, fit_alignment
    rng = np.random.default_rng(0)
    f = rng.normal(size=(300, 80)).astype(np.float32) * rng.uniform(0.1, 3, 80).astype(np.float32)
    a = (f - f[:150].mean(0)) / f[:150].std(0)
    b = (f - f[150:].mean(0)) / f[150:].std(0)
    m = fit_alignment(a[:50], b[:50], 1e-3)
    assert m[0].shape == (80,)
    np.testing.assert_allclose(apply_alignment(a, m), b, atol=1e-4)


def test_predict_fusion_reproduces_the_runs_predictions_from_the_kept_fold_model(synth_copy):
    """What a fold keeps (models/fold<k>.pt) and predict_fusion give the run's test predictions
    exactly, for the averaged test input too (the alignment maps are kept)."""
    from rakuten.safe_io import load_model
    from rakuten.second_level.fusion import predict_fusion
    cfg = cfg_of("fusion_baseline_concat", "name=kept", "fusion.residual=true", "fusion.masks=true",
                 "test_input=averaged", "train.early_stop=fixed", "train.epochs=5")
    run_fusion(cfg, synth_copy, progress=False)
    data = load_fusion_data(cfg, synth_copy)
    exp = Experiment(synth_copy.oof_dir, "kept")
    for k in (0, 3):
        fitted = load_model(exp.model_path(k, "pt"))   # as a bundle reads it: weights only
        outputs = {n: {j: (t.logits, t.embeddings) for j, t in data.inputs[n].test.items()} for n in fitted["inputs"]}
        logits, _ = predict_fusion(cfg, fitted, outputs, data.test_present)
        np.testing.assert_array_equal(logits, Predictions.load(exp.test_path(k)).logits)
        assert any(m is not None for m in fitted["maps"]["text_tiny_text"].values())


def test_inner_tuning_uses_training_rows_only(synth):
    """Optuna on the inner split: the chosen parameters are recorded, and noise in fold k's rows
    leaves fold k's model bit-identical."""
    cfg = cfg_of("fusion_baseline_concat", "fusion.residual=true", "train.inner_trials=3", "train.epochs=8")
    data = load_fusion_data(cfg, synth)
    ref = fit_predict_fold(cfg, data, 1)
    assert set(ref.info["params"]) == {"train.weight_decay", "train.lr", "fusion.modality_dropout"}
    same = fit_predict_fold(cfg, _altered(data, np.flatnonzero(data.fold == 1), np.random.default_rng(0)), 1)
    np.testing.assert_array_equal(ref.test.logits, same.test.logits)


def test_late_lr_moves_the_residual_weights_and_bad_values_fail(synth):
    """``train.late_lr`` gives the residual path's late-fusion weights their own step: with a large
    one they leave the plain mean (1/3 each) further than with the correction's step."""
    base = ("fusion.residual=true", "train.early_stop=fixed", "train.epochs=4", "train.lr=1e-3")
    data = load_fusion_data(cfg_of("fusion_hier_avg_avg", *base), synth)

    def spread(*extra):
        w = np.array(fit_predict_fold(cfg_of("fusion_hier_avg_avg", *base, *extra), data, 0).info["weights"])
        return np.abs(w - 1 / 3).max()

    assert spread("train.late_lr=0.3") > 5 * spread()
    for bad in ("train.late_lr=-1", "fusion.modality_dropout=1.5", "train.inner_trials=-2"):
        with pytest.raises(ConfigError):
            fusion_config(cfg_of("fusion_hier_avg_avg", bad))


# ------------------------------------------------------------------------------ export and re-predict
FUSION_BUNDLE = """\
name: fusion_bundle
kind: fusion
folds: {k: 3, seed: 42}
fusion:
  variant: hierarchical
  text_groups: [[text_tiny_title, text_tiny_description]]
  image: image_tiny
  residual: true
  masks: true
  normalize: l2
  modality_dropout: 0.2
  head: dropout
  dropout: 0.1
train: {epochs: 6, early_stop: fixed, lr: 0.01}
test_input: averaged
"""


@pytest.mark.slow    # reads the tiny run of conftest.bundle_run (shared with test_bundle.py)
def test_a_submitted_fusion_exports_and_repredicts_exactly(bundle_run, tmp_path):
    """A run whose submission is a fusion (residual, masks, averaged test input: the kept alignment
    maps and the products' missing inputs all take part) exports, and the bundle's fold models and
    predict.py give the run's test predictions and its submission."""
    from test_bundle import PRESET_FILE, _assert_reproduces_the_run, _test_ids, run

    from rakuten.bundle import Bundle, read_products

    _, wd0, _, _, _ = bundle_run
    wd = tmp_path / "wd"
    shutil.copytree(wd0, wd, ignore=shutil.ignore_patterns("submissions"))   # the fixture's run is shared
    cfg = tmp_path / "fusion_bundle.yaml"
    cfg.write_text(FUSION_BUNDLE)
    preset = tmp_path / "preset.yaml"
    preset.write_text(PRESET_FILE.read_text().replace("submit: stack_lgbm\n", "submit: [stack_lgbm, fusion_bundle]\n"))
    from rakuten.paths import Paths
    from rakuten.second_level.api import load_fusion
    run_fusion(load_fusion(str(cfg)), Paths.make(wd, wd / "data" / "demo"), progress=False)   # fuse.py's call
    assert sorted(p.name for p in (wd / "oof" / "fusion_bundle" / "models").glob("fold*")) == \
        ["fold0.pt", "fold1.pt", "fold2.pt"]
    run("submit.py", "--exp", "fusion_bundle", "--workdir", wd)
    run("export.py", "--preset", preset, "--workdir", wd, "--out", tmp_path / "bundle")
    b = Bundle(tmp_path / "bundle")
    assert b.manifest["submitted"] == "fusion_bundle"
    assert set(b.manifest["members"]) == {"fusion_bundle", "text_tiny_title", "text_tiny_description", "image_tiny"}
    data = wd / "data" / "demo"
    prods = read_products(data / "X_test_update.csv", data / "image_test")
    assert (~prods["has_description"]).any()       # the masks have missing inputs to leave out
    _assert_reproduces_the_run(b, wd, prods, feature_keys=True)
    out = tmp_path / "pred.csv"
    run("predict.py", "--bundle", tmp_path / "bundle", "--input", data / "X_test_update.csv", "--images",
        data / "image_test", "--out", out, "--no-progress")
    sub = pd.read_csv(next((wd / "submissions").glob("fusion_bundle_cv*.csv")), index_col=0)
    pred = pd.read_csv(out, index_col=0)
    assert (sub["prdtypecode"].to_numpy() == pred["prdtypecode"].to_numpy()).all()
    assert len(pred) == len(_test_ids(wd))
