"""Synthetic upstream experiments for the second-level tests (fusion, stacker, tuning, reports).

Complementary by construction: the text experiments separate classes 0..13 and see classes 14..26 as
one blob; the image experiment does the opposite. Each upstream's logits are the Gaussian class
posterior of its own embedding, so embeddings and logits agree. Fusion of text and image (or
stacking their probabilities) should beat every single input by a wide margin.

A tiny ChallengeData-format dataset with the same product ids is written too, so submission and
meta-feature code can run on it. The test rows' labels are kept in ``<workdir>/heldout/``, outside the
data dir the code reads, so tests can score every test-set prediction (``heldout_macro_f1``).
Each fold model's test file lists the test rows in its own random order (not X_test order), so code
that pairs rows by position instead of by id gives wrong, and scored, test predictions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.metrics import f1_score

from rakuten.artifacts import Experiment, Predictions, atomic_write_json, file_hash
from rakuten.folds import folds_path, make_folds, write_folds
from rakuten.labels import CODES, NUM_CLASSES
from rakuten.metrics import scores
from rakuten.paths import Paths

TEXT_CLASSES = np.arange(0, 14)
IMAGE_CLASSES = np.arange(14, NUM_CLASSES)
K, SEED = 5, 42
HELDOUT = "heldout"          # <workdir>/heldout/test_labels.csv: never under the data dir


def heldout_path(workdir: Path) -> Path:
    return Path(workdir) / HELDOUT / "test_labels.csv"


def _posterior_logits(emb: np.ndarray, means: np.ndarray, sigma: float) -> np.ndarray:
    d2 = ((emb[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    return (-d2 / (2 * sigma ** 2)).astype(np.float32)


def _view(rng, dim: int, informative: np.ndarray, sep: float):
    """Class means in ``dim`` dims: distinct for ``informative`` classes, one shared blob for the rest."""
    means = np.zeros((NUM_CLASSES, dim))
    means[informative] = rng.normal(0, sep, size=(len(informative), dim))
    return means


def write_dataset(data_dir: Path, train_ids, train_labels, test_ids, image_ids_train, image_ids_test, rng) -> None:
    """A tiny ChallengeData download (X_train_update.csv, Y_train_CVw08PX.csv, X_test_update.csv)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    n, t = len(train_ids), len(test_ids)

    def x(ids, imgs, start):
        desc = [f"<p>description {i}</p>" if rng.random() < 0.6 else "" for i in ids]
        return pd.DataFrame({"designation": [f"produit {i} titre" for i in ids], "description": desc,
                             "productid": ids, "imageid": imgs}, index=pd.RangeIndex(start, start + len(ids)))

    x(train_ids, image_ids_train, 0).to_csv(data_dir / "X_train_update.csv")
    pd.DataFrame({"prdtypecode": [CODES[int(l)] for l in train_labels]},
                 index=pd.RangeIndex(0, n)).to_csv(data_dir / "Y_train_CVw08PX.csv")
    x(test_ids, image_ids_test, n).to_csv(data_dir / "X_test_update.csv")


def make_synthetic(workdir: Path, per_class: int = 40, test_per_class: int = 10, seed: int = 0,
                   sigma: float = 1.0, rotate_spaces: bool = False) -> Paths:
    """Write folds/, oof/<upstream>/ and data/ for the five demo upstream names; return the Paths.

    ``rotate_spaces``: every upstream fold model k gets its own random rotation and offset of the
    embedding space (its OOF rows and its test_fold<k> rows), as independently initialised networks
    do; logits are unaffected.
    """
    rng = np.random.default_rng(seed)
    # test-row orders come from their own stream, so the data drawn from ``rng`` is unchanged by them
    order_rng = np.random.default_rng(seed + 1_000)
    workdir = Path(workdir)
    data_dir = workdir / "data" / "synthetic"
    paths = Paths.make(workdir, data_dir)
    y = np.repeat(np.arange(NUM_CLASSES), per_class)
    y_test = np.repeat(np.arange(NUM_CLASSES), test_per_class)
    all_ids = rng.choice(np.arange(10_000, 10_000_000), size=len(y) + len(y_test), replace=False)
    ids, test_ids = all_ids[:len(y)].astype(np.int64), all_ids[len(y):].astype(np.int64)
    imgs = rng.choice(np.arange(1, 10_000_000), size=len(all_ids), replace=False)
    write_dataset(data_dir, ids, y, test_ids, imgs[:len(y)], imgs[len(y):], rng)
    heldout_path(workdir).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": test_ids, "label": y_test}).to_csv(heldout_path(workdir), index=False)

    folds = make_folds(pd.DataFrame({"id": ids, "label": y}), K, SEED)
    fpath = folds_path(paths.folds_dir, K, SEED)
    write_folds(folds, fpath, K, SEED)
    fhash = file_hash(fpath)

    # (name, modality, field, informative classes, dim, separation, noise, has embeddings)
    specs = [
        ("text_tiny_title", "text", "title", TEXT_CLASSES, 32, 0.8, 1.0, True),
        ("text_tiny_description", "text", "description", TEXT_CLASSES, 24, 0.7, 1.2, True),
        ("text_tiny_text", "text", "text", TEXT_CLASSES, 32, 0.9, 1.0, True),
        ("image_tiny", "image", None, IMAGE_CLASSES, 48, 0.7, 1.0, True),
        ("tfidf_text", "text", "text", TEXT_CLASSES, 20, 1.1, 1.0, False),
    ]
    fold_of = folds.set_index("id")["fold"].reindex(ids).to_numpy()
    for name, modality, fld, informative, dim, sep, noise, has_emb in specs:
        means = _view(rng, dim, informative, sep)
        emb = (means[y] + rng.normal(0, noise * sigma, size=(len(y), dim))).astype(np.float32)
        emb_test = (means[y_test] + rng.normal(0, noise * sigma, size=(len(y_test), dim))).astype(np.float32)
        logits = _posterior_logits(emb, means, noise * sigma)
        exp = Experiment(paths.oof_dir, name)
        fold_scores = {}
        for k in range(K):
            rows = np.flatnonzero(fold_of == k)
            # each fold model sees the test rows slightly differently
            et = (emb_test + rng.normal(0, 0.1 * noise, size=emb_test.shape)).astype(np.float32)
            t_logits = _posterior_logits(et, means, noise * sigma)
            e_oof = emb[rows]
            if rotate_spaces:
                q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
                shift = rng.normal(0, 2.0, size=dim)
                e_oof, et = (e_oof @ q + shift).astype(np.float32), (et @ q + shift).astype(np.float32)
            Predictions(ids[rows], logits[rows], e_oof if has_emb else None, y[rows]).save(exp.oof_path(k))
            order = order_rng.permutation(len(test_ids))
            Predictions(test_ids[order], t_logits[order], et[order] if has_emb else None).save(exp.test_path(k))
            fold_scores[str(k)] = scores(y[rows], logits[rows])
        atomic_write_json(exp.meta_path, {
            "name": name, "kind": "unimodal", "modality": modality, "field": fld,
            "config": {"name": name, "folds": {"k": K, "seed": SEED}}, "fold_file": str(fpath),
            "fold_hash": fhash, "folds": fold_scores})
    return paths


def single_scores(paths: Paths, names: list[str]) -> dict[str, float]:
    """OOF macro-F1 of each upstream experiment, recomputed from its files."""
    from rakuten.folds import read_folds
    folds = read_folds(folds_path(paths.folds_dir, K, SEED))
    return {n: scores(folds["label"].to_numpy(), Experiment(paths.oof_dir, n).load_oof(folds).logits)["macro_f1"]
            for n in names}


def heldout_labels(paths: Paths) -> pd.Series:
    """The held-out test labels (class indices), indexed by product id."""
    df = pd.read_csv(heldout_path(paths.workdir))
    return pd.Series(df["label"].to_numpy(np.int64), index=df["id"].to_numpy(np.int64))


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["ids"].astype(np.int64), z["logits"].astype(np.float64)


def bagged_test_proba(paths: Paths, name: str, folds=range(K)) -> pd.DataFrame:
    """Mean over fold models of softmax(test logits), read from the npz files with numpy and scipy
    only (not the project's loaders), rows joined by product id; indexed by id."""
    parts = []
    for k in folds:
        ids, logits = _npz(Path(paths.oof_dir) / name / f"test_fold{k}.npz")
        parts.append(pd.DataFrame(softmax(logits, axis=1), index=ids))
    return sum(p.sort_index() for p in parts) / len(parts)


def oof_macro_f1(paths: Paths, name: str, folds=range(K)) -> float:
    """Macro-F1 over the OOF rows of the npz files (labels from the fold file, joined by id)."""
    from rakuten.folds import read_folds
    lab = read_folds(folds_path(paths.folds_dir, K, SEED)).set_index("id")["label"]
    ids, logits = map(np.concatenate, zip(*(_npz(Path(paths.oof_dir) / name / f"fold{k}.npz") for k in folds)))
    return float(f1_score(lab.loc[ids].to_numpy(), logits.argmax(1), average="macro", zero_division=0))


def heldout_macro_f1(paths: Paths, name: str, folds=range(K)) -> float:
    """Macro-F1 of the bagged test prediction against the held-out labels."""
    p = bagged_test_proba(paths, name, folds)
    y = heldout_labels(paths)
    assert set(p.index) == set(y.index), f"{name}: test ids differ from the held-out ones"
    return float(f1_score(y.loc[p.index].to_numpy(), p.to_numpy().argmax(1), average="macro", zero_division=0))


def random_floor(y, draws: int = 200, q: float = 0.99, seed: int = 0) -> float:
    """A measured floor: the ``q`` quantile of the macro-F1 of random predictions on labels ``y``,
    over ``draws`` draws each of uniform guesses (about 1/27 on balanced labels) and of a shuffle of
    ``y`` itself (guesses with the class frequencies). A model that learned nothing scores below it
    (the majority-class score, about 0.008 on 27 classes, is far lower still)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    s = [f1_score(y, g, average="macro", zero_division=0)
         for _ in range(draws) for g in (rng.integers(0, NUM_CLASSES, len(y)), rng.permutation(y))]
    return float(np.quantile(s, q))


# Allowed gap between held-out test macro-F1 and OOF macro-F1 of one experiment on this data, as
# (below, above). Measured on seeds 0-2 over 5 upstreams, 5 fusion configs and 5 stack models:
# test - OOF ranged from -0.017 (an upstream) and -0.007 (a second level) to +0.12 (fusion_hier_avg_avg,
# whose 5 bagged fold networks do better on the test rows than one of them on its fold). A second
# level fed the wrong test rows scores near the random floor (~0.07), far outside either bound.
TEST_GAP = (0.05, 0.15)


def assert_test_close_to_oof(paths: Paths, name: str) -> tuple[float, float]:
    """The experiment's bagged test macro-F1 lies within TEST_GAP of its OOF macro-F1."""
    oof, test = oof_macro_f1(paths, name), heldout_macro_f1(paths, name)
    below, above = TEST_GAP
    assert oof - below <= test <= oof + above, f"{name}: test macro-F1 {test:.4f}, OOF {oof:.4f}"
    return oof, test
