"""TF-IDF (word + character n-grams) with a linear classifier: fast, strong, diverse ensemble member.

Its probabilities come from multinomial logistic regression (calibrated by construction), or from a
linear SVM wrapped in ``CalibratedClassifierCV``; the logits written out are log-probabilities.

``tfidf.calibration`` (svm only): ``sigmoid`` wraps the SVM in ``CalibratedClassifierCV`` (3 more
fits), ``temperature`` fits one temperature on the decision values of an inner 10% split of the
training rows (one more fit; what the CPU presets use), ``none`` writes the raw decision values.

``dense`` (optional) is a matrix of dense features, one row per text (frozen sentence embeddings,
L2-normalised and scaled by ``tfidf.dense.weight``), appended to the sparse n-grams: one linear model
then reads both. On the real French titles this beat either input alone and their blend.

``C`` may be a list: the value is then chosen per fold by an inner stratified K-fold search on the
training folds only (``inner_folds``, macro-F1, the uncalibrated classifier), and the final model is
refitted on all training rows with it. That is the "tuned TF-IDF + linear SVM" baseline the second
level must beat (``configs/experiments/tfidf_svm_tuned.yaml``). The vectorisers are fitted once on
the training folds' text (no labels), which the inner search shares.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
from scipy import sparse
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC
from sklearn.utils.extmath import safe_sparse_dot
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

from rakuten.errors import RakutenError
from rakuten.defaults import EXPERIMENT_DEFAULTS
from rakuten.labels import NUM_CLASSES
from rakuten.metrics import f1
from rakuten.models.registry import register_model

# a tfidf section given without a key (a test's dict) gets the experiment default, as a config does
_T = EXPERIMENT_DEFAULTS["tfidf"]


def _analysis_params(vec) -> dict:
    """A vectoriser's parameters but those that only limit its fitted vocabulary: what decides the
    n-grams a text yields and how they are counted."""
    return {k: x for k, x in vec.get_params().items() if k not in ("vocabulary", "max_features", "min_df", "max_df")}


class SharedCounts:
    """One term count over the union of several fitted vectorisers' vocabularies (the fold models of
    one member, same analyser), from which each vectoriser's own count matrix is a column gather: the
    matrix its ``transform`` would count, so with its own idf the same TF-IDF rows. A bundle's request
    is analysed and counted once instead of once per fold model (5 per member: most of 85 ms of a
    32-product request went to those repeats)."""

    def __init__(self, vectorizers: list):
        terms = sorted(set().union(*(v.vocabulary_ for v in vectorizers)))
        union = {t: i for i, t in enumerate(terms)}
        keep = set(CountVectorizer().get_params())
        params = {k: v for k, v in _analysis_params(vectorizers[0]).items() if k in keep}
        self.counter = CountVectorizer(vocabulary=union, **params)
        # fold column j of vectoriser v counts union column cols[id(v)][j]
        self.cols = {id(v): np.fromiter((union[t] for t, _ in sorted(v.vocabulary_.items(), key=lambda kv: kv[1])),
                                        dtype=np.int64, count=len(v.vocabulary_)) for v in vectorizers}
        self._last: tuple = (None, None)

    @staticmethod
    def shareable(vectorizers: list) -> bool:
        """The vectorisers analyse alike (every parameter equal but the vocabulary's own limits)."""
        if len(vectorizers) < 2:   # one model (or none) has nothing to share
            return False
        first = _analysis_params(vectorizers[0])
        return all(_analysis_params(v) == first for v in vectorizers[1:])

    def counts(self, vec, texts):
        """``vec``'s count matrix of ``texts`` (csr, sorted indices, as its ``transform`` counts them)."""
        key = tuple(texts)
        last = self._last   # a local: a concurrent request replacing the cache cannot swap it under us
        if last[0] != key:
            last = (key, self.counter.transform(list(texts)))
            self._last = last
        X = last[1][:, self.cols[id(vec)]].tocsr()
        X.sort_indices()
        return X


def idf_rows(tfidf, counts):
    """``tfidf.transform(counts)`` (a fitted ``TfidfTransformer``) without its input checks, which cost
    0.45 ms of the 0.5 a call takes on a 32-product request, 30 calls a request in the cpu bundle.
    The same steps on the same float64 values as scikit-learn's (sublinear tf, idf, then its own
    in-place L2 row normalisation), so the same rows bit for bit (``test_bundle_memory.py``)."""
    X = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
    if tfidf.sublinear_tf:
        np.log(X.data, X.data)
        X.data += 1.0
    X.data *= tfidf.idf_[X.indices]
    if tfidf.norm == "l2":
        inplace_csr_row_normalize_l2(X)
    elif tfidf.norm is not None:
        X = normalize(X, norm=tfidf.norm, copy=False)
    return X


def share_counts(models: list) -> None:
    """Give the fold models of one TF-IDF member (``TfidfLinear``) one count per request for each of
    their analysers (``SharedCounts``), when their analysers agree; predictions are unchanged."""
    for name in ("word", "char"):
        vecs = [getattr(m, name, None) for m in models]
        if all(v is not None for v in vecs) and SharedCounts.shareable(vecs):
            shared = SharedCounts(vecs)
            for m in models:
                m.shared_counts = {**(m.shared_counts or {}), name: shared}


@register_model("tfidf_linear")
class TfidfLinear:
    """``create_model("tfidf_linear", cfg=<tfidf section>, num_classes=27, seed=...)``: the vectorisers and
    the linear classifier of a ``kind: tfidf`` member (and the vectorisers of ``knn.features: tfidf``)."""

    # {"word" | "char": SharedCounts}: set by a bundle on its fold models (share_counts), never in a run;
    # a class attribute, so models saved before it existed read None too
    shared_counts: dict | None = None

    def __init__(self, cfg: dict, seed: int = 42, num_classes: int = NUM_CLASSES):
        self.cfg, self.seed, self.num_classes = cfg, seed, int(num_classes)
        word_ngrams = cfg.get("word_ngrams", _T["word_ngrams"])
        char_ngrams = cfg.get("char_ngrams", _T["char_ngrams"])
        analyzer = cfg.get("char_analyzer", _T["char_analyzer"])
        if analyzer not in ("char_wb", "char"):
            raise RakutenError(f"tfidf.char_analyzer must be char_wb or char (got {analyzer!r})")
        if not word_ngrams and not char_ngrams:
            raise RakutenError("tfidf: word_ngrams and char_ngrams are both off; nothing to fit")
        # The feature budget is shared by the parts that are on (a char-only member gets all of it).
        share = int(cfg.get("max_features", _T["max_features"])) // (bool(word_ngrams) + bool(char_ngrams))
        self.word = TfidfVectorizer(analyzer="word", ngram_range=tuple(word_ngrams),
                                    sublinear_tf=True, min_df=2, max_features=share, lowercase=True,
                                    strip_accents=None, token_pattern=r"(?u)\b\w+\b") if word_ngrams else None
        # "char" crosses word boundaries (n-grams spanning "t-shirt" or "lot de"): a different view
        # from char_wb, which is what makes the char-only member add to the blend.
        self.char = TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(char_ngrams),
                                    sublinear_tf=True, min_df=2, max_features=share,
                                    lowercase=True) if char_ngrams else None
        self.kind = cfg.get("classifier", _T["classifier"])
        self.calibration = cfg.get("calibration", _T["calibration"])
        if self.calibration not in ("sigmoid", "temperature", "none"):
            raise RakutenError(f"tfidf.calibration must be sigmoid, temperature or none (got {self.calibration!r})")
        self.temperature = 1.0
        if self.kind not in ("logreg", "svm"):
            raise RakutenError(f"tfidf.classifier must be logreg or svm (got {self.kind!r})")
        C = cfg.get("C", _T["C"])
        self.C_grid = [float(c) for c in C] if isinstance(C, (list, tuple)) else None
        if self.C_grid is not None and not self.C_grid:
            raise RakutenError("tfidf.C: an empty list")
        self.best_C = None if self.C_grid else float(C)
        self.search: list[dict] = []   # inner-search results: [{"C", "inner_macro_f1"}]
        self.clf = None if self.C_grid else self._make(self.best_C)

    def _base(self, C: float):
        """The uncalibrated classifier (what the inner search scores)."""
        if self.kind == "logreg":
            return LogisticRegression(C=C, max_iter=300, random_state=self.seed)
        return LinearSVC(C=C / 10, random_state=self.seed)

    def _make(self, C: float):
        if self.kind == "logreg" or self.calibration != "sigmoid":
            return self._base(C)
        return CalibratedClassifierCV(self._base(C), cv=3, method="sigmoid")

    def _fit_temperature(self, X, y, sample_weight) -> float:
        """One temperature for the SVM's decision values, fitted on an inner 10% split (never on rows
        the model trained on: those are overconfident)."""
        idx = np.arange(len(y))
        counts = np.bincount(y)
        # a stratified split needs every class twice and at least one calibration row per class
        # (small data: ~270 training rows for 27 classes); else a plain random split
        n_cal = int(np.ceil(0.1 * len(y)))
        strat = y if counts[counts > 0].min() >= 2 and n_cal >= (counts > 0).sum() else None
        fit_i, cal_i = train_test_split(idx, test_size=0.1, random_state=self.seed, stratify=strat)
        clf = self._base(self.best_C)
        with _quiet_sklearn():
            clf.fit(X[fit_i], y[fit_i], sample_weight=None if sample_weight is None else sample_weight[fit_i])
        d = clf.decision_function(X[cal_i])
        col = {c: j for j, c in enumerate(clf.classes_)}
        keep = np.array([yy in col for yy in y[cal_i]])
        tgt = np.array([col.get(yy, 0) for yy in y[cal_i]])[keep]
        d = d[keep]

        def nll(log_t):
            return -log_softmax(d * np.exp(log_t), axis=1)[np.arange(len(tgt)), tgt].mean()
        return float(np.exp(minimize_scalar(nll, bounds=(-3, 5), method="bounded").x))

    def _search_C(self, X, y, sample_weight) -> float:
        k = int(self.cfg.get("inner_folds", 3))
        # StratifiedKFold needs every class k times; rarer classes only ever sit in inner training parts
        inner = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
        self.search = []
        with _quiet_sklearn():
            splits = list(inner.split(np.zeros(len(y)), y))
            for C in self.C_grid:
                f1s = []
                for tr, va in splits:
                    clf = self._base(C)
                    clf.fit(X[tr], y[tr], sample_weight=None if sample_weight is None else sample_weight[tr])
                    f1s.append(f1(y[va], clf.predict(X[va]), "macro_f1"))
                self.search.append({"C": C, "inner_macro_f1": float(np.mean(f1s))})
        best = max(self.search, key=lambda r: (r["inner_macro_f1"], -r["C"]))  # ties: the smaller C
        return best["C"]

    def vectorize(self, texts, fit: bool = False, dense=None):
        """The sparse TF-IDF rows of ``texts`` (word and character n-grams, then ``dense`` columns);
        ``fit`` fits the vectorisers first (training rows only)."""
        if fit:
            parts = [v.fit_transform(texts) for v in (self.word, self.char) if v is not None]
        else:
            shared = self.shared_counts or {}
            parts = [v.transform(texts) if name not in shared
                     # sklearn's idf step on the counts its transform would have made
                     else idf_rows(v._tfidf, shared[name].counts(v, texts))
                     for name, v in (("word", self.word), ("char", self.char)) if v is not None]
        if dense is not None:
            parts.append(sparse.csr_matrix(np.asarray(dense, dtype=np.float64)))
        return sparse.hstack(parts).tocsr()

    def fit(self, texts, labels, sample_weight=None, dense=None):
        """Fit the vectorisers and the classifier (its C chosen by the inner search when ``C`` is a list; the
        SVM's temperature on an inner split)."""
        X = self.vectorize(texts, fit=True, dense=dense)
        labels = np.asarray(labels)
        sw = None if sample_weight is None else np.asarray(sample_weight)
        if self.C_grid:
            self.best_C = self._search_C(X, labels, sw)
            self.clf = self._make(self.best_C)
        if self.kind == "svm" and self.calibration == "temperature":
            self.temperature = self._fit_temperature(X, labels, sw)
        with _quiet_sklearn():
            self.clf.fit(X, labels, sample_weight=sample_weight)
        return self

    def _decision(self, X) -> np.ndarray:
        """The SVM's ``decision_function`` on the rows ``vectorize`` built: its own product and
        intercept without its input checks (0.2 ms a call, 15 calls a bundle request); a two-class
        fold's single column goes through scikit-learn's own."""
        coef = self.clf.coef_
        if coef.ndim != 2 or coef.shape[0] < 2:
            return self.clf.decision_function(X)
        return safe_sparse_dot(X, coef.T, dense_output=True) + self.clf.intercept_

    def predict_logits(self, texts, num_classes: int | None = None, dense=None) -> np.ndarray:
        """[n, num_classes] log-probabilities (``num_classes``: the constructor's by default)."""
        # getattr: a model pickled before num_classes was kept
        num_classes = getattr(self, "num_classes", NUM_CLASSES) if num_classes is None else int(num_classes)
        X = self.vectorize(texts, fit=False, dense=dense)
        if self.kind == "svm" and self.calibration != "sigmoid":
            d = self._decision(X) * self.temperature
            full = np.full((d.shape[0], num_classes), -30.0, dtype=np.float64)
            full[:, self.clf.classes_] = d
            return log_softmax(full, axis=1).astype(np.float32)
        proba = self.clf.predict_proba(X)
        # classes absent from the training folds get probability 0 -> put them in their columns
        full = np.full((proba.shape[0], num_classes), 1e-9, dtype=np.float64)
        full[:, self.clf.classes_] = proba
        return np.log(np.clip(full, 1e-9, 1.0)).astype(np.float32)


@contextlib.contextmanager
def _quiet_sklearn():
    """Silence the expected warnings of an inner search (a class rarer than the inner folds, liblinear
    not converging on a large C): the search's scores already reflect them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        yield
