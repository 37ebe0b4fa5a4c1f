"""What a bundle shares between fold models must not change a prediction: the kNN members' banks
held once (``bundle.SharedRows``) give the fold models' own banks back exactly, and their votes are
identical to those over the unshared banks."""
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


def test_knn_over_a_shared_bank_votes_exactly_as_over_its_own():
    f, banks = _banks(1)
    q = f[:10] + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    shared = SharedRows()
    rows = [shared.add(b) for b, _ in banks]
    m = shared.matrix()
    cfg = {"k": 5, "temperature": 0.05}
    for (b, y), r in zip(banks, rows):
        own = KnnVote(cfg).fit(b, y).predict_logits(q)
        assert np.array_equal(KnnVote(cfg).fit(m, y, r).predict_logits(q), own)
