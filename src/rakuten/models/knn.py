"""k-nearest neighbours over L2-normalised rows (``kind: knn``): a similarity-weighted vote of the
training rows most similar to each query, on a frozen experiment's embeddings or on TF-IDF.

``create_model("knn", cfg=<knn section>)`` builds the vote (``k``, ``temperature``); its "fit" keeps
the bank of training rows and their labels (the training folds only, ``training.classic``)."""
from __future__ import annotations

import hashlib

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


def knn_vote(sim: np.ndarray, bank_labels: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """Similarity-weighted class votes [n, 27] (float64, not normalised) of the ``k`` most similar bank
    rows given the similarities ``sim`` [n, bank rows] (weights exp((sim - 1) / T), ties on the grid)."""
    nn = np.argpartition(-_tie_key(sim), k - 1, axis=1)[:, :k]
    w = np.exp((np.take_along_axis(sim, nn, 1) - 1.0) / float(temperature))
    out = np.zeros((len(sim), NUM_CLASSES), dtype=np.float64)
    np.add.at(out, (np.repeat(np.arange(len(nn)), k), bank_labels[nn].ravel()), w.ravel())
    return out


def _vote_in_chunks(queries, width: int, similarities, bank_labels: np.ndarray, k: int, temperature: float,
                    chunk: int = 1024) -> np.ndarray:
    """``knn_vote`` over the queries in chunks (``similarities(q)``: dense [len(q), bank rows], at most
    ``width`` columns wide before any selection), as log-probabilities smoothed by 1e-4."""
    n = queries.shape[0]
    out = np.zeros((n, NUM_CLASSES), dtype=np.float64)
    # the tie keys are int64 [chunk, bank rows]: at most 2^24 of them (128 MiB) at a time
    chunk = max(1, min(int(chunk), 2 ** 24 // max(width, 1)))
    for s in range(0, n, chunk):
        out[s:s + chunk] = knn_vote(similarities(queries[s:s + chunk]), bank_labels, k, temperature)
    out /= out.sum(1, keepdims=True) + 1e-12
    return np.log(out + 1e-4).astype(np.float32)


def knn_log_proba(queries, bank, bank_labels: np.ndarray, k: int, temperature: float,
                  chunk: int = 1024) -> np.ndarray:
    """Similarity-weighted vote of the ``k`` most similar bank rows (weights exp(sim / T)), as
    log-probabilities smoothed by 1e-4 so no class is impossible. ``queries``/``bank`` are
    L2-normalised rows (dense or sparse); queries are processed in chunks to bound memory."""
    bank_t = bank.T

    def similarities(q):
        sim = q @ bank_t
        return sim.toarray() if sparse.issparse(sim) else np.asarray(sim)

    return _vote_in_chunks(queries, bank.shape[0], similarities, bank_labels, min(int(k), bank.shape[0]),
                           temperature, chunk)


class SharedBank:
    """The training rows of several kNN fold models (a bundle's member: each fold's bank is 1 - 1/K of
    them) held once, with per-fold row numbers instead of per-fold copies. A request's similarities
    are computed once against all the rows and each fold keeps its own columns: no fold bank is
    gathered (at 85k training products that copy was 332 MiB per request), and the five folds share
    one matrix product.

    The similarities are those of the fold's own bank up to float32 rounding: BLAS kernels sum in an
    order that depends on the matrix shapes, ~1e-7 apart, as between a run's 1,024-query chunks and a
    bundle's 32-query request already; the neighbours are chosen on the ``SIM_GRID``, which absorbs it."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix
        self.products = 0              # matrix products computed (one per request and query chunk)
        self._last: tuple = (None, None)

    @property
    def shape(self) -> tuple:
        return self.matrix.shape

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """``queries @ matrix.T`` [n, rows]; the last result is kept, keyed by the queries' bytes, so
        the fold models of one request compute it once."""
        q = np.ascontiguousarray(queries)
        key = (q.shape, q.dtype.str, hashlib.blake2b(q.tobytes(), digest_size=16).digest())
        last = self._last   # a local: a concurrent request replacing it cannot swap it under us
        if last[0] != key:
            last = (key, q @ self.matrix.T)
            self.products += 1
            self._last = last
        return last[1]


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
        """[n, 27] log-probabilities of L2-normalised ``queries`` (``knn_log_proba``). On a
        ``SharedBank`` (``rows`` given to ``fit``), this model's columns of the request's similarities to
        all the shared rows (see ``SharedBank``)."""
        if self.rows_ is None:
            return knn_log_proba(queries, self.bank_, self.labels_, self.k, self.temperature)
        return _vote_in_chunks(queries, self.bank_.shape[0],
                               lambda q: self.bank_.similarities(q)[:, self.rows_], self.labels_,
                               min(self.k, len(self.rows_)), self.temperature)
