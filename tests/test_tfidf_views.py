"""TF-IDF member views: the char-only view (word part off, n-grams across word boundaries) and
one-line errors for settings that leave nothing to fit."""
from __future__ import annotations

import numpy as np
import pytest

from rakuten.errors import RakutenError
from rakuten.models.tfidf import TfidfLinear

TEXTS = ["lot de 3 t-shirts coton", "t-shirt enfant coton bio", "piscine gonflable ronde",
         "piscine hors sol tubulaire", "jeu de société famille", "jeu de cartes famille"] * 4
LABELS = np.array([0, 0, 1, 1, 2, 2] * 4)


def test_char_only_view_has_no_word_features_and_spans_word_boundaries():
    m = TfidfLinear({"word_ngrams": None, "char_ngrams": [1, 4], "char_analyzer": "char", "C": 1.0,
                     "classifier": "svm", "calibration": "none"}).fit(TEXTS, LABELS)
    assert m.word is None
    vocab = m.char.vocabulary_
    assert "e p" in vocab or "de s" in vocab          # an n-gram that crosses a space: not char_wb
    logits = m.predict_logits(["piscine ronde"], num_classes=27)
    assert logits.shape == (1, 27) and logits[0].argmax() == 1


def test_char_wb_never_crosses_a_space():
    m = TfidfLinear({"word_ngrams": None, "char_ngrams": [3, 3], "C": 1.0, "classifier": "logreg"}).fit(TEXTS, LABELS)
    # char_wb pads each word with one space on both sides; no n-gram holds a space in its middle
    assert not [g for g in m.char.vocabulary_ if " " in g.strip()]


@pytest.mark.parametrize("cfg, msg", [({"word_ngrams": None, "char_ngrams": None}, "nothing to fit"),
                                      ({"char_analyzer": "bytes"}, "char_analyzer")])
def test_bad_views_are_one_line_errors(cfg, msg):
    with pytest.raises(RakutenError, match=msg):
        TfidfLinear(cfg)


def test_temperature_calibration_on_fewer_rows_than_ten_per_class():
    """27 classes, 200 rows: the 10% calibration split (20 rows) cannot hold every class, so it is
    drawn unstratified instead of crashing; the temperature is fitted and positive."""
    rng = np.random.default_rng(0)
    y = np.concatenate([np.arange(27), rng.integers(0, 27, 173)])
    texts = [f"produit{c} mot{c} extra{rng.integers(0, 5)}" for c in y]
    m = TfidfLinear({"C": 1.0, "classifier": "svm", "calibration": "temperature"}).fit(texts, y)
    assert m.temperature > 0
    assert m.predict_logits(["produit3 mot3"], num_classes=27)[0].argmax() == 3
