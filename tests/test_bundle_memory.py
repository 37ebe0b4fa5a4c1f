"""What a bundle shares between fold models must not change a prediction: the kNN members' banks
held once (``bundle.SharedRows``) give the fold models' own banks back exactly, and their votes are
identical to those over the unshared banks; a CNN forwards a few images at a time."""
from __future__ import annotations

import numpy as np

from rakuten.bundle import SharedRows
from rakuten.models.knn import KnnVote   # the registry's "knn" (test_models builds it through create_model)


def _banks(seed=0, n=120, d=16, k=4):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    fold = np.arange(n) % k
    labels = rng.integers(0, 27, n)
    return f, [(f[fold != j], labels[fold != j]) for j in range(k)]


def test_shared_rows_give_each_bank_back_exactly():
    f, banks = _banks()
    shared = SharedRows()
    rows = [shared.add(b) for b, _ in banks]
    m = shared.matrix()
    assert m.shape == f.shape                      # 4 banks of 90 rows: 120 distinct rows held once
    for (b, _), r in zip(banks, rows):
        assert np.array_equal(m[r], b) and m[r].dtype == b.dtype
    dup = SharedRows()
    assert (dup.add(np.vstack([f[:3], f[:3]])) == [0, 1, 2, 0, 1, 2]).all() and dup.n == 3


def test_knn_over_a_shared_bank_votes_as_over_its_own_with_one_product_per_request():
    """Each fold model reads its columns of one similarity matrix against all the shared rows: the
    votes of its own bank (the same neighbours, log-probabilities within float32 rounding of a matrix
    product of another shape), and the folds of one request compute that product once."""
    from rakuten.models.knn import SharedBank

    for d, n in ((16, 120), (384, 3000)):                 # toy, and e5's width at a real size
        f, banks = _banks(1, n=n, d=d)
        rng = np.random.default_rng(2)
        q = f[rng.choice(n, 32)] + 0.01 * rng.normal(size=(32, d)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        shared = SharedRows()
        rows = [shared.add(b) for b, _ in banks]
        bank = SharedBank(shared.matrix())
        cfg = {"k": 5, "temperature": 0.05}
        for (b, y), r in zip(banks, rows):
            own = KnnVote(cfg).fit(b, y).predict_logits(q)
            got = KnnVote(cfg).fit(bank, y, r).predict_logits(q)
            np.testing.assert_allclose(got, own, rtol=0, atol=1e-5)
            assert np.array_equal(got.argmax(1), own.argmax(1))
        assert bank.products == 1                           # four folds, one matrix product
        KnnVote(cfg).fit(bank, banks[0][1], rows[0]).predict_logits(q[:5])
        assert bank.products == 2                           # other queries: computed again


def test_bundle_cnn_forwards_a_few_images_at_a_time(tmp_path, monkeypatch):
    """A bundle's image forwards run ``BUNDLE_IMAGE_BATCH`` images at a time (a CNN's activations,
    and so the peak memory of a request, grow with the batch), with the features of one big batch."""
    import pandas as pd
    import torch
    from PIL import Image

    import rakuten.bundle as bundle_mod
    from rakuten.experiment import load_experiment
    from rakuten.labels import NUM_CLASSES
    from rakuten.models.image import load_image_backbone
    from rakuten.models.registry import create_model

    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    products = pd.DataFrame({"image_path": paths})
    cfg = load_experiment("image_tiny", ["train.eval_batch_size=64"])
    torch.manual_seed(0)
    model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES,
                         backbone=load_image_backbone(cfg.model.backbone, pretrained=False)).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(len(next(iter(args[0].values())))
                                                                 if isinstance(args[0], dict) else len(args[0])))
    b = bundle_mod.Bundle.__new__(bundle_mod.Bundle)     # only what _torch_run reads
    b._images, b._engines, b.device, b.progress = {}, {}, "cpu", False
    monkeypatch.setattr(bundle_mod, "BUNDLE_IMAGE_BATCH", 64)
    one_batch = b._torch_run(cfg, model, products)
    assert seen == [7]
    seen.clear()
    monkeypatch.setattr(bundle_mod, "BUNDLE_IMAGE_BATCH", 2)
    small = b._torch_run(cfg, model, products)
    assert seen == [2, 2, 2, 1] and cfg.train.eval_batch_size == 64   # the member's config is left as it was
    for a, c in zip(one_batch, small):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_knn_vote_does_not_depend_on_float_noise_among_duplicates():
    """Duplicated bank rows under different codes tie in exact arithmetic; float32 products of other
    shapes (a run's chunks, a bundle's request) move them by ~1e-7. The vote must not follow that
    noise: the same neighbours, so the same log-probabilities to float precision."""
    from rakuten.models.knn import knn_log_proba
    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    bank = np.vstack([base, base, base]).astype(np.float32)     # every row three times...
    labels = np.concatenate([np.arange(40) % 27, (np.arange(40) + 5) % 27, (np.arange(40) + 9) % 27])
    q = base[:20].astype(np.float32)
    ref = knn_log_proba(q, bank, labels, k=4, temperature=0.05)  # ...so the 4th place is a tie
    for seed in range(5):
        noisy = bank + np.random.default_rng(seed).normal(scale=1e-8, size=bank.shape).astype(np.float32)
        np.testing.assert_allclose(knn_log_proba(q, noisy, labels, k=4, temperature=0.05), ref, atol=1e-3)
    for chunk in (1, 7):                                           # queries in other chunk shapes
        np.testing.assert_allclose(knn_log_proba(q, bank, labels, 4, 0.05, chunk=chunk), ref, atol=1e-3)


def test_tfidf_folds_sharing_one_count_give_their_own_rows():
    """A bundle counts a request's n-grams once per TF-IDF member (``share_counts``): each fold model's
    TF-IDF rows and predictions must be those of its own vectorisers, bit for bit."""
    from rakuten.models.registry import create_model
    from rakuten.models.tfidf import share_counts
    rng = np.random.default_rng(0)
    words = ["lot", "stylo", "bleu", "jeu", "ps4", "livre", "enfant", "piscine", "chaise", "table", "lampe", "été"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(200)]
    y = rng.integers(0, 5, 200)
    folds = np.arange(200) % 4
    cfg = {"classifier": "svm", "calibration": "temperature", "max_features": 400}
    models = [create_model("tfidf_linear", cfg=cfg, num_classes=27, seed=1).fit([texts[i] for i in np.flatnonzero(folds != k)],
                                                                               y[folds != k]) for k in range(4)]
    new = ["lot de stylos bleus", "", "jeu ps4 enfant été", "chaise chaise table lampe xyz"]
    want = [(m.vectorize(new), m.predict_logits(new)) for m in models]
    assert len({len(m.word.vocabulary_) for m in models}) > 1          # the folds' vocabularies differ
    share_counts(models)
    assert all(set(m.shared_counts) == {"word", "char"} for m in models)
    for m, (X, logits) in zip(models, want):
        got = m.vectorize(new)
        assert (got != X).nnz == 0 and np.array_equal(got.indices, X.indices) and np.array_equal(got.data, X.data)
        assert np.array_equal(m.predict_logits(new), logits)
        # the SVM's scores without scikit-learn's input checks: its decision_function's, bit for bit
        assert np.array_equal(m._decision(got), m.clf.decision_function(got))
    assert models[0].word.sublinear_tf and models[0].word.norm == "l2"   # the steps idf_rows repeats
