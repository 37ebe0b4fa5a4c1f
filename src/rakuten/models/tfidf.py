"""TF-IDF (word + character n-grams) with a linear classifier: fast, strong, diverse ensemble member.

Its probabilities come from multinomial logistic regression (calibrated by construction), or from a
linear SVM wrapped in ``CalibratedClassifierCV``; the logits written out are log-probabilities.

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
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from rakuten.errors import RakutenError


class TfidfLinear:
    def __init__(self, cfg: dict, seed: int = 42):
        self.cfg, self.seed = cfg, seed
        half = int(cfg.get("max_features", 200000)) // 2
        self.word = TfidfVectorizer(analyzer="word", ngram_range=tuple(cfg.get("word_ngrams", (1, 2))),
                                    sublinear_tf=True, min_df=2, max_features=half, lowercase=True,
                                    strip_accents=None, token_pattern=r"(?u)\b\w+\b")
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(cfg.get("char_ngrams", (2, 5))),
                                    sublinear_tf=True, min_df=2, max_features=half, lowercase=True)
        self.kind = cfg.get("classifier", "logreg")
        if self.kind not in ("logreg", "svm"):
            raise RakutenError(f"tfidf.classifier must be logreg or svm (got {self.kind!r})")
        C = cfg.get("C", 4.0)
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
        if self.kind == "logreg":
            return self._base(C)
        return CalibratedClassifierCV(self._base(C), cv=3, method="sigmoid")

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
                    f1s.append(f1_score(y[va], clf.predict(X[va]), average="macro"))
                self.search.append({"C": C, "inner_macro_f1": float(np.mean(f1s))})
        best = max(self.search, key=lambda r: (r["inner_macro_f1"], -r["C"]))  # ties: the smaller C
        return best["C"]

    def _features(self, texts, fit: bool):
        if fit:
            return sparse.hstack([self.word.fit_transform(texts), self.char.fit_transform(texts)]).tocsr()
        return sparse.hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()

    def fit(self, texts, labels, sample_weight=None):
        X = self._features(texts, fit=True)
        labels = np.asarray(labels)
        if self.C_grid:
            self.best_C = self._search_C(X, labels, None if sample_weight is None else np.asarray(sample_weight))
            self.clf = self._make(self.best_C)
        self.clf.fit(X, labels, sample_weight=sample_weight)
        return self

    def predict_logits(self, texts, num_classes: int) -> np.ndarray:
        proba = self.clf.predict_proba(self._features(texts, fit=False))
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
