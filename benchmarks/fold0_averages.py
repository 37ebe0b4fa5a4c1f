"""Equal-weight probability averages of fold-0 text members (nothing fitted, nothing chosen): what a
fine-tuned e5 adds beside the TF-IDF SVM when only fold 0 of it could be trained (a stack needs every
fold). Scores fold 0's OOF rows and its models' test prediction.

    python benchmarks/fold0_averages.py /tmp/fttext     # the workdir of finetune_real.py --data rakuten_text_fr
"""
import json
import sys

import numpy as np
from real_data import f1s, test_labels
from rakuten.artifacts import Experiment, Predictions
from rakuten.paths import Paths
from rakuten.data.prepared import load_dataset
from pathlib import Path
data = Path("../shared/data/rakuten_text_fr").resolve()
paths = Paths.make(Path(sys.argv[1]), data)
ds = load_dataset(paths); y_test = test_labels(data, ds)
ids = ds.test["id"].to_numpy(np.int64)
def get(name):
    """(fold 0 labels, fold 0 OOF probabilities, fold-0 model's test probabilities) of ``name``."""
    e = Experiment(paths.oof_dir, name)
    o = Predictions.load(e.oof_path(0)); t = e.load_test([0], ids=ids, average="probs")
    sm = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    return o.labels, sm(o.logits), sm(t.logits)
y, svm_o, svm_t = get("tfidf_svm_text")
res = {}
for other in ("text_e5_text", "text_e5_text_ft__3ep"):
    y2, o, t = get(other)
    assert (y2 == y).all()
    res[f"tfidf_svm_text + {other}"] = {"oof_fold0": f1s(y, (svm_o + o).argmax(1)), "test": f1s(y_test, (svm_t + t).argmax(1))}
res["tfidf_svm_text + text_e5_text + text_e5_text_ft__3ep"] = {"oof_fold0": f1s(y, (svm_o + get("text_e5_text")[1] + get("text_e5_text_ft__3ep")[1]).argmax(1)),
                                                              "test": f1s(y_test, (svm_t + get("text_e5_text")[2] + get("text_e5_text_ft__3ep")[2]).argmax(1))}
print(json.dumps(res, indent=1))
json.dump({"note": "equal-weight probability averages, nothing fitted or chosen: fold 0's OOF rows and its model's test prediction", **res},
          open("benchmarks/results/finetune_real_rakuten_text_fr_fold0_averages_2026-12-05.json", "w"), indent=2)
