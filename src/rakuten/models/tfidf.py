"""TF-IDF (word + character n-grams) with a linear classifier: fast, strong, diverse ensemble member.

Its probabilities come from multinomial logistic regression (calibrated by construction), or from a
linear SVM wrapped in ``CalibratedClassifierCV``; the logits written out are log-probabilities.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
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
        kind = cfg.get("classifier", "logreg")
        C = float(cfg.get("C", 4.0))
        if kind == "logreg":
            self.clf = LogisticRegression(C=C, max_iter=300, random_state=seed)
        elif kind == "svm":
            self.clf = CalibratedClassifierCV(LinearSVC(C=C / 10, random_state=seed), cv=3, method="sigmoid")
        else:
            raise RakutenError(f"tfidf.classifier must be logreg or svm (got {kind!r})")

    def _features(self, texts, fit: bool):
        if fit:
            return sparse.hstack([self.word.fit_transform(texts), self.char.fit_transform(texts)]).tocsr()
        return sparse.hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()

    def fit(self, texts, labels, sample_weight=None):
        X = self._features(texts, fit=True)
        self.clf.fit(X, labels, sample_weight=sample_weight)
        return self

    def predict_logits(self, texts, num_classes: int) -> np.ndarray:
        proba = self.clf.predict_proba(self._features(texts, fit=False))
        # classes absent from the training folds get probability 0 -> put them in their columns
        full = np.full((proba.shape[0], num_classes), 1e-9, dtype=np.float64)
        full[:, self.clf.classes_] = proba
        return np.log(np.clip(full, 1e-9, 1.0)).astype(np.float32)
