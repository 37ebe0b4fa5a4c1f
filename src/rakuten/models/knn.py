"""k-nearest neighbours over L2-normalised rows (``kind: knn``): a similarity-weighted vote of the
training rows most similar to each query, on a frozen experiment's embeddings or on TF-IDF.

``create_model("knn", cfg=<knn section>)`` builds the vote (``k``, ``temperature``); its "fit" keeps
the bank of training rows and their labels (the training folds only, ``training.classic``)."""
from __future__ import annotations

import numpy as np
from scipy import sparse

from rakuten.labels import NUM_CLASSES
from rakuten.models.registry import register_model


# Similarities are compared on this grid: duplicated products (the same title, often under several
# codes) have equal similarities in exact arithmetic, and float32 matrix products of different shapes
# (a run's 1,024-row chunks, a bundle's request of 32) differ by ~1e-7, which decided which duplicate
# reached the k-th place: up to 0.3 apart in a kNN member's log-probabilities between the run and
# its bundle. On the grid, ties go to the lower bank row, whatever the chunk.
SIM_GRID = 1e-5


def _tie_key(sim: np.ndarray) -> np.ndarray:
    """int64 keys ordering ``sim`` [n, m] rows like the similarities rounded to ``SIM_GRID``, ties
    broken towards the lower bank row (a larger key is a nearer neighbour)."""
    m = sim.shape[1]
    grid = np.rint(np.asarray(sim, dtype=np.float64) / SIM_GRID).astype(np.int64)
    return grid * m + (m - 1 - np.arange(m, dtype=np.int64))[None, :]


def knn_log_proba(queries, bank, bank_labels: np.ndarray, k: int, temperature: float,
                  chunk: int = 1024) -> np.ndarray:
    """Similarity-weighted vote of the ``k`` most similar bank rows (weights exp(sim / T)), as
    log-probabilities smoothed by 1e-4 so no class is impossible. ``queries``/``bank`` are
    L2-normalised rows (dense or sparse); queries are processed in chunks to bound memory."""
    n = queries.shape[0]
    k = min(int(k), bank.shape[0])
    out = np.zeros((n, NUM_CLASSES), dtype=np.float64)
    bank_t = bank.T
    # the tie keys are int64 [chunk, bank rows]: at most 2^24 of them (128 MiB) at a time
    chunk = max(1, min(int(chunk), 2 ** 24 // max(bank.shape[0], 1)))
    for s in range(0, n, chunk):
        q = queries[s:s + chunk]
        sim = q @ bank_t
        sim = sim.toarray() if sparse.issparse(sim) else np.asarray(sim)
        nn = np.argpartition(-_tie_key(sim), k - 1, axis=1)[:, :k]
        w = np.exp((np.take_along_axis(sim, nn, 1) - 1.0) / float(temperature))
        rows = np.repeat(np.arange(len(nn)), k)
        np.add.at(out[s:s + chunk], (rows, bank_labels[nn].ravel()), w.ravel())
    out /= out.sum(1, keepdims=True) + 1e-12
    return np.log(out + 1e-4).astype(np.float32)


@register_model("knn")
class KnnVote:
    """The vote of the ``cfg.k`` most similar bank rows, weights exp((sim - 1) / ``cfg.temperature``)."""

    def __init__(self, cfg, num_classes: int = NUM_CLASSES, **_):
        self.k, self.temperature, self.num_classes = int(cfg["k"]), float(cfg["temperature"]), int(num_classes)

    def fit(self, bank, labels, rows: np.ndarray | None = None) -> "KnnVote":
        """Keep the bank (L2-normalised rows, dense or sparse) and its labels; nothing is learned.
        ``rows``: the bank is those rows of ``bank`` (a matrix several fold models share)."""
        self.bank_, self.labels_, self.rows_ = bank, np.asarray(labels, dtype=np.int64), rows
        return self

    def predict_logits(self, queries) -> np.ndarray:
        """[n, 27] log-probabilities of L2-normalised ``queries`` (``knn_log_proba``). A shared bank
        is gathered to this model's rows first: the same matrix, so the same similarities, bit for bit."""
        bank = self.bank_ if self.rows_ is None else self.bank_[self.rows_]
        return knn_log_proba(queries, bank, self.labels_, self.k, self.temperature)
