"""Fusion variants on real products, over a finished cpu run's unimodal artifacts (issue 27).

    python benchmarks/real_data.py --data ../shared/data/rakuten_images_real --preset cpu --workdir /tmp/i27/imgs
    python benchmarks/fusion_real.py --workdir /tmp/i27/imgs --data ../shared/data/rakuten_images_real

Every variant is the real per-fold code (``fusion.fit_predict_fold``, the code ``fuse.py`` runs) on the
run's frozen folds, in memory (nothing is written to the workdir): 5-fold OOF macro-F1, macro-F1 on
rows with / without text, and, when the data has ``test_labels/Y_test.csv``, the test split's
macro-F1 of the fold models' averaged probabilities. Variants and hyperparameters are chosen on the
OOF scores only; the test column is reported, never used to choose.

``--diagnose`` adds the measurements behind the failure of the thesis's network on these data: the
scale of each standardised embedding and of its projected branch in the fused vector, the fit-rows
vs inner-validation vs OOF macro-F1 (overfitting), the epochs early stopping kept, and a learning-rate
sweep. JSON goes to ``benchmarks/results/fusion_real_<data>_<date>.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np


from rakuten.artifacts import softmax  # noqa: E402
from rakuten.config import load_config  # noqa: E402
from rakuten.defaults import FUSION_DEFAULTS  # noqa: E402
from rakuten.metrics import scores  # noqa: E402
from rakuten.paths import Paths  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# (name, base config, overrides): the thesis's network as shipped before issue 27, each mechanism
# alone, then together; the baseline and concat variants with the same mechanism.
HIER = "fusion_cpu_hier_avg_avg"
THESIS = ["fusion.normalize=none", "fusion.masks=false", "fusion.modality_dropout=0.0", "fusion.residual=false",
          "fusion.head=linear", "fusion.dropout=0.0", "train.weight_decay=1e-4", "train.lr=1e-3",
          "train.inner_trials=0", "train.monitor=macro_f1", "train.inner_frac=0.1"]
MECH = ["fusion.residual=true", "fusion.masks=true", "fusion.normalize=layernorm", "fusion.modality_dropout=0.3",
        "train.monitor=loss"]
VARIANTS = [
    ("thesis hier avg/avg", HIER, THESIS),
    ("+ align none", HIER, THESIS + ["fusion.align=none"]),
    ("+ masks", HIER, THESIS + ["fusion.masks=true"]),
    ("+ l2 normalize", HIER, THESIS + ["fusion.normalize=l2"]),
    ("+ layernorm", HIER, THESIS + ["fusion.normalize=layernorm"]),
    ("+ modality dropout 0.3", HIER, THESIS + ["fusion.modality_dropout=0.3"]),
    ("+ weight decay 0.3", HIER, THESIS + ["train.weight_decay=0.3"]),
    ("+ residual (late fusion + correction)", HIER, THESIS + ["fusion.residual=true"]),
    ("+ residual + masks", HIER, THESIS + ["fusion.residual=true", "fusion.masks=true"]),
    ("+ residual + masks + layernorm + mod. dropout 0.3, stop on loss", HIER, THESIS + MECH),
    ("+ the same, l2 instead of layernorm", HIER, THESIS + MECH + ["fusion.normalize=l2"]),
    ("+ the same, dropout head 0.3", HIER, THESIS + MECH + ["fusion.head=dropout", "fusion.dropout=0.3"]),
    ("+ the same, Optuna on the inner split (8 trials/fold)", HIER, THESIS + MECH + [
        "fusion.head=dropout", "fusion.dropout=0.3", "train.inner_trials=8"]),
    ("late average of the same two inputs", "fusion_late_average",
     ["fusion.inputs=[text_e5_text_lr,image_effnetlite0]"]),
    ("late weighted of the same two inputs", "fusion_late_weighted",
     ["fusion.inputs=[text_e5_text_lr,image_effnetlite0]"]),
    ("shipped fusion_cpu_hier_avg_avg", HIER, []),
    ("shipped fusion_cpu_hier_concat_concat", "fusion_cpu_hier_concat_concat", []),
    ("shipped fusion_cpu_baseline_concat", "fusion_cpu_baseline_concat", []),
]


def run_variant(cfg, data, y_test, has_text, has_text_test, has_image=None) -> dict:
    """5-fold fit_predict_fold in memory: OOF and test scores and the per-fold records."""
    from rakuten.second_level.fusion import fit_predict_fold, fusion_config

    cfg = fusion_config(cfg)
    t0 = time.time()
    oof = np.zeros((len(data.ids), 27), np.float32)
    probs, folds = [], {}
    for k in data.fold_ids:
        out = fit_predict_fold(cfg, data, k)
        oof[out.info["pred_idx"]] = out.oof.logits
        probs.append(softmax(out.test.logits))
        folds[k] = {key: v for key, v in out.info.items() if not key.endswith("_idx")}
    y = data.y
    pred = oof.argmax(1)
    res = {"oof": round(scores(y, oof)["macro_f1"], 4),
           "oof_with_text": round(scores(y[has_text], oof[has_text])["macro_f1"], 4),
           "oof_without_text": round(scores(y[~has_text], oof[~has_text])["macro_f1"], 4) if (~has_text).any() else None,
           "oof_with_image": (round(scores(y[has_image], oof[has_image])["macro_f1"], 4)
                              if has_image is not None and has_image.any() else None),
           "best_epochs": [f.get("best_epoch") for f in folds.values()],
           "seconds": round(time.time() - t0, 1), "folds": folds, "oof_pred": pred}
    if y_test is not None:
        t = np.mean(probs, axis=0)
        res["test"] = round(scores(y_test, np.log(t + 1e-12))["macro_f1"], 4)
        res["test_with_text"] = round(scores(y_test[has_text_test], np.log(t[has_text_test] + 1e-12))["macro_f1"], 4)
    return res


def input_scores(data, names, y_test, has_text, has_image) -> dict:
    out = {}
    for n in names:
        u = data.inputs[n]
        r = {"oof": round(scores(data.y, u.oof.logits)["macro_f1"], 4),
             "oof_with_text": round(scores(data.y[has_text], u.oof.logits[has_text])["macro_f1"], 4),
             "oof_with_image": round(scores(data.y[has_image], u.oof.logits[has_image])["macro_f1"], 4)}
        if y_test is not None:
            t = np.mean([softmax(p.logits) for p in u.test.values()], axis=0)
            r["test"] = round(scores(y_test, np.log(t + 1e-12))["macro_f1"], 4)
        out[n] = r
    return out


def late_logprob_means(data, ds, train) -> dict:
    """OOF macro-F1 of the plain mean of every input's log-probabilities (the residual network's
    start), and of the same mean over the inputs each row has (the text head left out where the
    product has no text): what masking the residual path would cost or gain."""
    from rakuten.second_level.fusion import input_present

    names = list(data.inputs)
    logp = np.stack([np.asarray(torch_log_softmax(data.inputs[n].oof.logits)) for n in names])     # [N, n, C]
    pres = np.stack([input_present(train, data.inputs[n].meta.get("modality"), data.inputs[n].meta.get("field"))
                     for n in names]).astype(np.float32)                                         # [N, n]
    plain = logp.mean(0)
    masked = (logp * pres[..., None]).sum(0) / np.maximum(pres.sum(0), 1.0)[:, None]
    return {"inputs": names, "plain": round(scores(data.y, plain)["macro_f1"], 4),
            "masked": round(scores(data.y, masked)["macro_f1"], 4)}


def torch_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def diagnose(cfg, data) -> dict:
    """Scale of the branches, overfitting and early stopping of the thesis's network on fold 0."""
    import torch

    from rakuten.second_level.fusion import _predict, _tensors, fit_predict_fold, fusion_config

    cfg = fusion_config(cfg)
    out = fit_predict_fold(cfg, data, 0)
    res = {}
    fitted = out.fitted
    net = __import__("rakuten.second_level.fusion", fromlist=["_build_net"])._build_net(cfg, fitted["in_dims"])
    init_state = copy.deepcopy(net.state_dict())
    arrays = {n: data.inputs[n].oof.embeddings for n in fitted["in_dims"]}
    X = _tensors(cfg, fitted, arrays, None)
    fit_idx, val_idx = out.info["fit_idx"], out.info["val_idx"]
    for tag, state in (("init", init_state), ("trained", fitted["state_dict"])):
        net.load_state_dict(state)
        net.eval()
        with torch.no_grad():
            g = cfg.fusion.text_groups[0][0]
            txt = net.l1_proj[0][0](X[g])
            w = net.image_proj.weight.squeeze(-1)
            img = torch.nn.functional.linear(X[cfg.fusion.image], w, net.image_proj.bias)
        res[f"branch_norm_{tag}"] = {"text": round(float(txt.norm(dim=1).mean()), 3),
                                     "image": round(float(img.norm(dim=1).mean()), 3)}
    res["input_norm"] = {n: round(float(X[n].norm(dim=1).mean()), 2) for n in fitted["in_dims"]}
    res["raw_norm"] = {n: round(float(np.linalg.norm(arrays[n], axis=1).mean()), 3) for n in fitted["in_dims"]}
    net.load_state_dict(fitted["state_dict"])
    lg, _ = _predict(net, X, fit_idx, 4096)
    lv, _ = _predict(net, X, val_idx, 4096)
    res["fold0_macro_f1"] = {"fit_rows": round(scores(data.y[fit_idx], lg)["macro_f1"], 4),
                             "inner_val": round(scores(data.y[val_idx], lv)["macro_f1"], 4),
                             "oof_fold0": round(out.scores["macro_f1"], 4)}
    res["fold0"] = {k: v for k, v in out.info.items() if not k.endswith("_idx")}
    res["parameters"] = int(sum(p.numel() for p in net.parameters()))
    res["n_fit"], res["n_inner_val"] = int(len(fit_idx)), int(len(val_idx))
    # text embedding of rows without text: one vector (the empty string's), shared by all of them
    e = data.inputs[cfg.fusion.text_groups[0][0]].oof.embeddings
    res["distinct_text_embeddings"] = int(len(np.unique(np.round(e, 4), axis=0)))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="a finished cpu run (its oof/ and folds/)")
    ap.add_argument("--data", type=Path, required=True, help="the run's data folder")
    ap.add_argument("--only", default=None, help="comma list of variant indices to run (default all)")
    ap.add_argument("--diagnose", action="store_true", help="add the scale/overfitting/lr measurements")
    ap.add_argument("--extra", action="append", default=[], help="NAME|BASE|k=v,k=v: one more variant")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    from rakuten.data.prepared import load_dataset
    from rakuten.second_level.fusion import input_present, load_fusion_data

    torch.set_num_threads(1)
    paths = Paths.make(args.workdir, args.data.resolve())
    ds = load_dataset(paths)
    variants = list(VARIANTS)
    for e in args.extra:
        name, base, ov = e.split("|")
        variants.append((name, base, [o for o in ov.split(",") if o]))
    if args.only:
        variants = [variants[int(i)] for i in args.only.split(",")]
    # one data load with masks (the superset every variant reads)
    base_cfg = load_config(f"fusion/{HIER}.yaml", ["fusion.masks=true", "fusion.residual=true"],
                           defaults=copy.deepcopy(FUSION_DEFAULTS))
    data = load_fusion_data(base_cfg, paths)
    y_test = None
    if (args.data / "test_labels" / "Y_test.csv").exists():
        from real_data import test_labels
        y_test = test_labels(args.data.resolve(), ds)
        order = {int(i): j for j, i in enumerate(ds.test["id"].to_numpy(np.int64))}
        y_test = y_test[[order[int(i)] for i in data.test_ids]]
    train = ds.train.set_index("id").reindex(data.ids)
    test = ds.test.set_index("id").reindex(data.test_ids)
    has_text = input_present(train, "text", "text")
    has_text_test = input_present(test, "text", "text")
    has_image = input_present(train, "image", None)
    res = {"data": args.data.name, "date": str(date.today()), "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "n_train": int(len(data.ids)), "n_test": int(len(data.test_ids)),
           "train_rows_with_text": int(has_text.sum()), "train_rows_with_image": int(has_image.sum()),
           "note": "timings on a shared, busy 2-core machine; variants chosen on OOF only",
           "inputs": input_scores(data, list(data.inputs), y_test, has_text, has_image), "variants": []}
    res["late_logprob_mean"] = late_logprob_means(data, ds, train)
    for name, base, ov in variants:
        cfg = load_config(f"fusion/{base}.yaml", ov, defaults=copy.deepcopy(FUSION_DEFAULTS))
        sub = load_fusion_data(cfg, paths) if base != HIER and "late" not in base else data
        r = run_variant(cfg, sub, y_test, has_text, has_text_test, has_image)
        r.pop("oof_pred")
        r.update(name=name, config=base, overrides=ov)
        res["variants"].append(r)
        print(f"{name:45s} OOF {r['oof']:.4f} (text rows {r['oof_with_text']:.4f}, image rows "
              f"{r['oof_with_image'] or float('nan'):.4f}) "
              f"test {r.get('test', float('nan')):.4f}  epochs {r['best_epochs']}  {r['seconds']}s", flush=True)
    if args.diagnose:
        cfg = load_config(f"fusion/{HIER}.yaml", THESIS, defaults=copy.deepcopy(FUSION_DEFAULTS))
        res["diagnose"] = diagnose(cfg, data)
        sweep = {}
        for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
            c = load_config(f"fusion/{HIER}.yaml", THESIS + [f"train.lr={lr}"], defaults=copy.deepcopy(FUSION_DEFAULTS))
            r = run_variant(c, data, y_test, has_text, has_text_test)
            sweep[str(lr)] = {"oof": r["oof"], "best_epochs": r["best_epochs"]}
        res["diagnose"]["lr_sweep"] = sweep
        print(json.dumps({k: v for k, v in res["diagnose"].items() if k != "fold0"}, indent=1))
    print("late mean of log-probabilities:", res["late_logprob_mean"])
    for n, r in res["inputs"].items():
        print(f"input {n:30s} OOF {r['oof']:.4f} (text rows {r['oof_with_text']:.4f}, image rows "
              f"{r['oof_with_image']:.4f}) test {r.get('test', float('nan'))}")
    out = args.out or RESULTS / f"fusion_real_{args.data.name}_{res['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
