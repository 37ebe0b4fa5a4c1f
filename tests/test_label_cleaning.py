"""Label-noise cleaning, pseudo-labels and test-time augmentation: each changes only what a fold
trains on (never its validation rows), enters the config hash, and TTA is the mean of its views."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from rakuten.artifacts import Experiment, Predictions
from rakuten.config import ConfigError
from rakuten.experiment import load_experiment
from rakuten.folds import folds_path, make_folds, read_folds, write_folds
from rakuten.labels import CODES, LabelMap, NUM_CLASSES
from rakuten.paths import Paths
from rakuten.training.cleaning import label_issue_table, training_rows
from rakuten.lineage import config_hash
from rakuten.training.fold import run_fold

K = 3


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    from rakuten.data.demo import generate_demo_dataset
    from rakuten.data.prepared import load_dataset
    wd = tmp_path_factory.mktemp("wd")
    generate_demo_dataset(wd / "data" / "demo", n_train=300, n_test=40, seed=5, image_size=32)
    paths = Paths.make(wd)
    ds = load_dataset(paths)
    write_folds(make_folds(ds.train, K, 42), folds_path(paths.folds_dir, K, 42), K, 42)
    return paths, ds


def _cfg(name, *ov):
    return load_experiment("tfidf_text", [f"name={name}", f"folds.k={K}", *ov])


def _folds(paths):
    return read_folds(folds_path(paths.folds_dir, K, 42))


def _write_issues(paths, ids, codes, name="issues.csv"):
    wrong = [CODES[(CODES.index(c) + 1) % NUM_CLASSES] for c in codes]
    df = pd.DataFrame({"id": ids, "given_code": codes, "suggested_code": wrong, "score": np.linspace(0, 0.1, len(ids))})
    df.to_csv(paths.workdir / name, index=False)
    return df


def _fake_fd(ds, folds):
    return SimpleNamespace(train=ds.train.set_index("id").loc[folds["id"]].reset_index(), test=ds.test, folds=folds)


def test_label_issues_touch_training_rows_only(wd):
    paths, ds = wd
    folds = _folds(paths)
    fd = _fake_fd(ds, folds)
    lm = LabelMap()
    # every row of fold 0 is listed, plus 15 rows of the other folds
    listed = pd.concat([folds[folds.fold == 0], folds[folds.fold != 0].head(15)])
    issues = _write_issues(paths, listed["id"].to_numpy(), lm.decode(listed["label"].tolist()))
    va_mask = (folds["fold"] == 0).to_numpy()
    tr, va = np.flatnonzero(~va_mask), np.flatnonzero(va_mask)
    y = folds["label"].to_numpy()
    for action in ("drop", "relabel", "downweight"):
        cfg = _cfg("li", "data.label_issues.file=issues.csv", f"data.label_issues.action={action}")
        rows, labels, w, facts = training_rows(cfg, paths, fd, 0, tr, y[tr], lm)
        assert facts["label_issues"]["n_applied"] == 15   # fold 0's listed rows are left alone
        assert not set(rows.tolist()) & set(va.tolist())
        flagged = np.isin(folds["id"].to_numpy()[rows], issues["id"].to_numpy())
        if action == "drop":
            assert len(rows) == len(tr) - 15 and not flagged.any() and w is None
        elif action == "relabel":
            assert np.array_equal(rows, tr) and (labels[flagged] != y[rows][flagged]).all()
            assert np.array_equal(labels[~flagged], y[rows][~flagged])
        else:
            assert np.allclose(w[flagged], 0.25) and np.allclose(w[~flagged], 1.0)
    # frac: the most suspect rows first
    cfg = _cfg("li", "data.label_issues.file=issues.csv", "data.label_issues.frac=0.1")
    _, _, _, facts = training_rows(cfg, paths, fd, 1, np.flatnonzero(folds.fold != 1), y[folds.fold != 1], lm)
    assert facts["label_issues"]["n_listed"] == int(np.ceil(0.1 * len(issues)))


def test_cleaned_run_keeps_fold_labels_and_enters_config_hash(wd):
    paths, ds = wd
    folds = _folds(paths)
    lm = LabelMap()
    listed = folds.sample(60, random_state=0)
    _write_issues(paths, listed["id"].to_numpy(), lm.decode(listed["label"].tolist()), "run_issues.csv")
    cfg = _cfg("clean_relabel", "data.label_issues.file=run_issues.csv", "data.label_issues.action=relabel")
    for k in range(K):
        s = run_fold(cfg, paths, k, ds=ds, progress=False)
        assert s["label_issues"]["n_applied"] == int((listed["fold"] != k).sum())
    exp = Experiment(paths.oof_dir, "clean_relabel")
    oof = exp.load_oof(folds)   # raises if a stored OOF label differs from the fold file's given label
    assert np.array_equal(oof.labels, folds["label"].to_numpy())
    h = config_hash(cfg, paths)
    assert h == exp.read_meta()["config_hash"]
    # a regenerated issues file invalidates the artifacts; so does a change of frac
    _write_issues(paths, listed["id"].to_numpy()[:30], lm.decode(listed["label"].tolist()[:30]), "run_issues.csv")
    assert config_hash(cfg, paths) != h
    assert config_hash(_cfg("clean_relabel", "data.label_issues.file=run_issues.csv",
                            "data.label_issues.action=relabel", "data.label_issues.frac=0.5"), paths) != h
    # the switches off: the hash is what it was before they existed
    off = _cfg("x")
    d = off.to_dict()
    del d["data"]["label_issues"], d["train"]["pseudo_labels"], d["predict"]
    from rakuten.config import Config
    assert config_hash(off, paths) == config_hash(Config(d))


def test_pseudo_labels_never_reach_fold_validation(wd, monkeypatch):
    paths, ds = wd
    folds = _folds(paths)
    # source: a finished run whose fold-k model is confident (class k) on test rows 0..9 only
    src = Experiment(paths.oof_dir, "pl_source")
    test_ids = ds.test["id"].to_numpy(np.int64)
    for k in range(K):
        lg = np.zeros((len(test_ids), NUM_CLASSES), np.float32)
        lg[:10, k] = 20.0
        Predictions(test_ids, lg, None).save(src.test_path(k))
    from rakuten.training import classic
    seen = []
    real_fit = classic.fit_predict

    def spy(cfg, paths_, fd, tr_rows, va_rows, y_tr, *a, **kw):
        seen.append((tr_rows.copy(), va_rows.copy(), y_tr.copy(), len(fd.train)))
        return real_fit(cfg, paths_, fd, tr_rows, va_rows, y_tr, *a, **kw)
    monkeypatch.setattr(classic, "fit_predict", spy)
    cfg = _cfg("pl_run", "train.pseudo_labels.from=pl_source", "train.pseudo_labels.threshold=0.9")
    for k in range(K):
        s = run_fold(cfg, paths, k, ds=ds, progress=False)
        assert s["pseudo_labels"]["n_added"] == 10
        tr_rows, va_rows, y_tr, n_train = seen[-1]
        va_ids = set(folds.loc[folds.fold == k, "id"].tolist())
        assert not set(tr_rows.tolist()) & set(va_rows.tolist())
        pseudo = tr_rows[tr_rows >= n_train] - n_train
        assert sorted(pseudo.tolist()) == list(range(10))
        assert not set(test_ids[pseudo].tolist()) & va_ids       # no fold-k product among them
        assert (y_tr[tr_rows >= n_train] == k).all()            # fold k's labels: source fold-k model only
        real = tr_rows[tr_rows < n_train]
        assert np.array_equal(np.sort(real), np.flatnonzero(folds.fold.to_numpy() != k))
    Experiment(paths.oof_dir, "pl_run").load_oof(folds)
    # a retrained source invalidates the run
    h = config_hash(cfg, paths)
    Predictions(test_ids, np.zeros((len(test_ids), NUM_CLASSES), np.float32), None).save(src.test_path(0))
    assert config_hash(cfg, paths) != h


def test_bad_switches_fail_at_load():
    with pytest.raises(ConfigError):
        _cfg("b", "data.label_issues.file=x.csv", "data.label_issues.action=delete")
    with pytest.raises(ConfigError):
        _cfg("b", "train.pseudo_labels.from=other", "train.pseudo_labels.threshold=1.5")
    with pytest.raises(ConfigError):
        _cfg("b", "predict.tta=[identity,hflip]")            # tfidf has no image views
    with pytest.raises(ConfigError):
        load_experiment("image_tiny", ["predict.tta=[identity,rot90]"])
    with pytest.raises(ConfigError):                          # torch losses take no row weights
        load_experiment("text_tiny_title", ["data.label_issues.file=x.csv", "data.label_issues.action=downweight"])


def test_label_issue_table_flags_planted_noise():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, NUM_CLASSES, n)
    probs = np.full((n, NUM_CLASSES), 0.01)
    probs[np.arange(n), y] = 0.9
    noisy = rng.choice(n, 30, replace=False)
    given = y.copy()
    given[noisy] = (y[noisy] + 1) % NUM_CLASSES
    t = label_issue_table(np.arange(n) + 1000, given, np.log(probs), LabelMap())
    assert set(t["id"] - 1000) == set(noisy.tolist())
    assert (t["score"].diff().dropna() >= 0).all()   # most suspect first
    lm = LabelMap()
    assert (np.array(lm.encode(t["suggested_code"].tolist())) == y[t["id"] - 1000]).all()


class _ImageDS(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 255, (n, 3, 16, 16), generator=g, dtype=torch.uint8)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "index": i, "labels": -1}


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 16 * 16, NUM_CLASSES)

    def forward(self, batch):
        e = batch["image"].flatten(1)
        return {"logits": self.fc(e), "embeddings": e[:, :8]}


def test_tta_is_the_mean_of_the_per_view_logits():
    from rakuten.data.image_cache import GpuImageAugment, make_image_batch_transform
    from rakuten.training.engine import Engine
    from rakuten.training.predict import tta_predict
    tf = make_image_batch_transform(GpuImageAugment(16, channels_last=False))
    eng = Engine(_Net(), None, device="cpu", precision="fp32", batch_transform=tf, progress=False)
    loader = torch.utils.data.DataLoader(_ImageDS(10), batch_size=4)

    def per_view(v):
        tf.view = v
        return loader
    views = {v: eng.predict(per_view(v)) for v in ("identity", "hflip")}
    assert not np.allclose(views["identity"][0], views["hflip"][0])   # the view changes the input
    logits, emb = tta_predict(eng, per_view, ["identity", "hflip"])
    np.testing.assert_allclose(logits, (views["identity"][0] + views["hflip"][0]) / 2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(emb, (views["identity"][1] + views["hflip"][1]) / 2, rtol=1e-6, atol=1e-6)
    # the hflip view is the identity input mirrored
    tf.view = "hflip"
    b = next(iter(loader))
    flipped = tf(dict(b), train=False)["image"]
    tf.view = "identity"
    np.testing.assert_allclose(flipped.numpy(), torch.flip(tf(dict(b), train=False)["image"], dims=[-1]).numpy())


def test_tta_through_run_fold_equals_mean_of_single_view_runs(wd):
    # training is deterministic (same seed, same rows), so the three runs share their weights and
    # differ only in the views they predict through
    paths, ds = wd
    ov = [f"folds.k={K}", "train.epochs=1", "data.image_size=32", "data.cache_size=32", "train.batch_size=64"]
    out = {}
    for name, views in (("tta_id", "[identity]"), ("tta_flip", "[hflip]"), ("tta_both", "[identity,hflip]")):
        cfg = load_experiment("image_tiny", [f"name={name}", f"predict.tta={views}", *ov])
        run_fold(cfg, paths, 0, ds=ds, progress=False)
        exp = Experiment(paths.oof_dir, name)
        out[name] = (Predictions.load(exp.oof_path(0)), Predictions.load(exp.test_path(0)))
    for i in (0, 1):
        a, b, both = out["tta_id"][i].logits, out["tta_flip"][i].logits, out["tta_both"][i].logits
        assert not np.allclose(a, b)
        np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-4, atol=1e-5)
