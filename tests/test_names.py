"""Category names (``rakuten.labels``): one name per code, shown as ``code - name`` in the prediction
rows (predict.py, the service), the per-class table, and the figures' class axes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rakuten.bundle import predictions_frame
from rakuten.labels import CATEGORY_NAMES, CODES, LabelMap, category_name, code_label
from rakuten.reporting import plots
from rakuten.reporting.leaderboard import per_class_table


def test_every_code_has_one_french_and_one_english_name():
    assert sorted(CATEGORY_NAMES) == list(CODES)
    fr = [category_name(c) for c in CODES]
    en = [category_name(c, "en") for c in CODES]
    assert all(n.strip() for n in fr + en) and len(set(fr)) == len(set(en)) == len(CODES)
    assert code_label(2583) == "2583 - Piscine et accessoires" and category_name(2705, "en") == "new books"
    assert code_label("10") == "10 - Livres d'occasion"      # codes read from a CSV as text
    with pytest.raises(KeyError):
        code_label(9999)


class _Bundle:   # what predictions_frame reads of a bundle
    label_map = LabelMap()
    model_version = "test-0"


def test_prediction_rows_name_their_codes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, len(CODES)))
    products = pd.DataFrame({"id": np.arange(40), "missing": [""] * 40, "row_index": np.arange(40)})
    out = predictions_frame(_Bundle(), products, logits)
    assert list(out.columns[:3]) == ["productid", "prdtypecode", "category"]
    assert out["category"].tolist() == [code_label(c) for c in out["prdtypecode"]]
    for j in (1, 2, 3):
        assert out[f"top{j}_category"].tolist() == [code_label(c) for c in out[f"top{j}_code"]]
    assert (out["top1_code"] == out["prdtypecode"]).all()


def test_per_class_table_and_figures_label_classes_code_and_name(monkeypatch, tmp_path):
    y = np.arange(len(CODES)).repeat(3)
    table = per_class_table(y, y)
    assert table["category"].tolist() == [code_label(c) for c in CODES]
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    plots.plot_confusion(y, y, list(CODES), tmp_path / "c.png", "t")
    ax = figs[-1].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [code_label(c) for c in CODES]
    assert [t.get_text() for t in ax.get_xticklabels()] == [code_label(c) for c in CODES]
    f1 = np.linspace(0, 1, len(CODES))
    plots.plot_per_class_f1(list(CODES), f1, "a", f1[::-1], "b", tmp_path / "f.png", "t")
    ax = figs[-1].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == code_label(CODES[0]) and labels[0] == code_label(CODES[-1])   # weakest of "a" on top
    assert sorted(labels) == sorted(code_label(c) for c in CODES)


def test_learning_curves_draw_one_line_per_fold(monkeypatch, tmp_path):
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    df = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [3.0, 2.0, 1.5], "val_macro_f1": [0.1, 0.3, 0.2],
                       "best": [True, True, False]})
    plots.plot_learning_curves({"m": {0: df, 1: df.head(2), 2: df}}, tmp_path / "l.png")
    loss, f1 = figs[-1].axes
    assert len(loss.get_lines()) == 3                    # one line per fold
    assert [len(line.get_xdata()) for line in loss.get_lines()] == [3, 2, 3]
    kept = [line for line in f1.get_lines() if len(line.get_xdata()) == 1]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in kept] == [(1, 0.3)] * 3   # the epoch kept


@pytest.mark.slow   # reads the session fixture bundle_run (a tiny run_all and its export)
def test_run_all_writes_and_links_the_two_plots(bundle_run):
    import json
    _, wd, _, _, _ = bundle_run
    out = wd / "submissions"
    md = (out / "leaderboard.md").read_text()
    # run_all submitted what submitted.json named then (conftest resubmits the stack only after it)
    sub = json.loads((out / "leaderboard.json").read_text())
    names = {r["experiment"] for r in sub}
    pngs = [p.name for p in out.glob("per_class_f1_*.png")]
    assert len(pngs) == 1 and pngs[0][len("per_class_f1_"):-4] in names and f"]({pngs[0]})" in md
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](learning_curves.png)" in md
    torch_models = {"text_tiny_title", "text_tiny_description", "text_tiny_text", "image_tiny"}
    from rakuten.paths import Paths
    from rakuten.reporting.leaderboard import learning_curves
    curves = learning_curves(Paths.make(wd), sorted(names))
    assert set(curves) == torch_models and all(sorted(c) == [0, 1, 2] for c in curves.values())


def test_label_map_decode_refuses_indices_outside_the_classes():
    """A negative index would silently be taken from the end by Python's indexing."""
    lm = LabelMap()
    assert lm.decode([0, len(CODES) - 1]) == [CODES[0], CODES[-1]]
    assert lm.encode(lm.decode(range(len(CODES)))) == list(range(len(CODES)))
    for bad in (-1, len(CODES)):
        with pytest.raises(IndexError, match="outside 0..26"):
            lm.decode([0, bad])
