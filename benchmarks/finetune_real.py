"""Fine-tuning on real data with real weights, against the frozen members on the same folds.

    python benchmarks/finetune_real.py --data ../shared/data/rakuten_images_real --workdir /tmp/ftimg
    python benchmarks/finetune_real.py --data ../shared/data/rakuten_text_fr --workdir /tmp/fttext --folds 0

Every member is an experiment config of configs/experiments/ trained by the project's own fold loop
(``run_fold``: the same loop, heads and losses as the gpu preset's CamemBERT and SE-ResNeXt-50);
variants are the same config under another name with overrides (``<exp>__<variant>``). A fold whose
artifacts are complete is reused, so the long fine-tuning runs can be started first with
``src/run_fold.py --workdir W --data-dir D --config <exp> --fold k`` and scored here afterwards.

Scores, over the folds asked for that are finished (``--score-only`` trains nothing):
- OOF macro-F1 of those folds' held-out rows, and per fold;
- test macro-F1 of the average of those folds' test probabilities (``test_labels/Y_test.csv``);
- the fold's wall time, epochs and best epoch from meta.json.
With every fold of a member finished, ``--stack`` adds the cpu preset's blend and LR stacks over the
image members with and without the fine-tuned one (the same stack configs, other inputs).
JSON: ``benchmarks/results/finetune_real_<data>_<date>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np


from real_data import RESULTS, f1s, test_labels  # noqa: E402
from rakuten.artifacts import Experiment, Predictions  # noqa: E402
from rakuten.cli import quiet_progress, setup_logging  # noqa: E402
from rakuten.labels import NUM_CLASSES, class_weights  # noqa: E402
from rakuten.paths import Paths  # noqa: E402

# (name in the results, base config, overrides); a name other than the base's is set with name=...
MEMBERS = {
    "rakuten_images_real": [
        ("image_effnetlite0", "image_effnetlite0", []),                 # frozen backbone, MLP head
        ("knn_image_effnetlite0", "knn_image_effnetlite0", []),         # kNN on the same frozen features
        ("image_effnetlite0_ft", "image_effnetlite0_ft", []),           # fine-tuned, plain CE
        # class-weighted: this set is balanced, so frequency weights are all 1 (identical to plain CE);
        # difficulty weights target the classes the pretrained features separate badly
        ("image_effnetlite0_ft__difficulty", "image_effnetlite0_ft",
         ["loss.class_weights=difficulty", "loss.class_weight_power=1.0"]),
        ("image_effnetlite0__difficulty", "image_effnetlite0",
         ["loss.class_weights=difficulty", "loss.class_weight_power=1.0"]),
    ],
    "rakuten_text_fr": [
        ("tfidf_svm_text", "tfidf_svm_text", []),
        ("text_e5_text_lr", "text_e5_text_lr", []),                     # frozen e5, logistic regression
        ("text_e5_text", "text_e5_text", []),                           # frozen e5, MLP head
        ("text_e5_text_ft", "text_e5_text_ft", []),                     # fine-tuned end to end
        ("text_e5_text_ft__3ep", "text_e5_text_ft", ["train.epochs=3"]),  # the same, up to 3 epochs
        ("text_e5_text_ft_top4", "text_e5_text_ft_top4", []),           # lower 8 layers frozen
        ("text_e5_text_ft__w0.3", "text_e5_text_ft", ["loss.class_weight_power=0.3"]),
        ("text_e5_text_ft__difficulty", "text_e5_text_ft",
         ["loss.class_weights=difficulty", "loss.class_weight_power=1.0"]),
    ],
}
# the cpu preset's stack configs, over the image members without and with the fine-tuned one
STACKS = {
    "rakuten_images_real": {
        "frozen": ["image_effnetlite0", "knn_image_effnetlite0"],
        "frozen+ft": ["image_effnetlite0", "knn_image_effnetlite0", "image_effnetlite0_ft"],
        "ft+knn": ["knn_image_effnetlite0", "image_effnetlite0_ft"],
        "frozen+ftdiff": ["image_effnetlite0", "knn_image_effnetlite0", "image_effnetlite0_ft__difficulty"],
    },
}
STACK_CONFIGS = ["stack_cpu_blend", "stack_cpu_logreg"]


def member_config(name: str, base: str, overrides: list[str]):
    """A member's config: ``base`` under the name ``name`` (a variant), with ``overrides``."""
    # local, as in real_ablations.py: the experiment loader is only needed once the data is known
    from rakuten.experiment import load_experiment
    return load_experiment(base, overrides + ([f"name={name}"] if name != base else []))


def done_folds(exp: Experiment, folds: list[int]) -> list[int]:
    meta = exp.read_meta() if exp.meta_path.exists() else {}
    return [k for k in folds if str(k) in (meta.get("folds") or {})
            and exp.oof_path(k).exists() and exp.test_path(k).exists()]


def score_member(name: str, paths: Paths, ds, y_test, folds: list[int]) -> dict:
    """OOF macro-F1 over the finished folds' rows (and per fold), test macro-F1 of their averaged
    test probabilities, and each fold's time from meta.json."""
    exp = Experiment(paths.oof_dir, name)
    have = done_folds(exp, folds)
    row = {"member": name, "folds_asked": folds, "folds_done": have}
    if not have:
        return row
    meta = exp.read_meta()
    parts = [Predictions.load(exp.oof_path(k)) for k in have]
    oof = Predictions.concat(parts)
    row["oof"] = f1s(oof.labels, oof.logits.argmax(1))
    row["per_fold"] = {str(k): {"oof": f1s(p.labels, p.logits.argmax(1)),
                                **{key: meta["folds"][str(k)].get(key) for key in ("seconds", "epochs", "best_epoch")}}
                       for k, p in zip(have, parts)}
    test = exp.load_test(have, ids=ds.test["id"].to_numpy(np.int64), average="probs")
    row["test"] = f1s(y_test, test.logits.argmax(1))
    row["seconds"] = round(sum(meta["folds"][str(k)].get("seconds") or 0 for k in have), 1)
    row["config"] = {k: meta.get("config", {}).get(k) for k in ("data", "model", "train", "loss")}
    return row


def weight_spread(cfg, paths: Paths, fd, folds: list[int], power: float) -> dict:
    """max/min of the class weights each fold's loss gets (its fit rows after the inner split):
    1.0 means the weighted loss is plain cross-entropy on that fold."""
    # local: only runs that have a weighted member need it
    from rakuten.folds import inner_split
    y = fd.train["label"].to_numpy(np.int64)
    out = {}
    for k in folds:
        tr = np.flatnonzero((fd.folds["fold"] != k).to_numpy())
        fit, _ = inner_split(np.arange(len(tr)), y[tr], float(cfg.train.inner_frac), int(cfg.train.seed) + k)
        w = class_weights(y[tr][fit], power, NUM_CLASSES)[np.unique(y[tr][fit])]
        out[str(k)] = round(float(w.max() / w.min()), 6)
    return out


def run_stacks(paths: Paths, ds, y_test, data_name: str) -> list[dict]:
    """The cpu preset's blend and LR stacks over the image members, with and without the fine-tuned one."""
    # heavy: scikit-learn and LightGBM, only with --stack
    from rakuten.second_level.api import load_stack, run_second_level
    rows = []
    for label, inputs in STACKS.get(data_name, {}).items():
        for base in STACK_CONFIGS:
            name = f"{base}__{label.replace('+', '_')}"
            cfg = load_stack(base, overrides=[f"stack.inputs=[{','.join(inputs)}]", f"name={name}"])
            t0 = time.time()
            try:
                res = run_second_level(cfg, paths, progress=False)
            except Exception as err:   # a missing input fold: reported, not scored
                rows.append({"stack": name, "inputs": inputs, "error": str(err)})
                continue
            r = score_member(name, paths, ds, y_test, sorted(int(k) for k in ds_folds(paths)))
            rows.append({"stack": name, "base": base, "inputs": inputs, "seconds": round(time.time() - t0, 1),
                         "oof": r.get("oof"), "test": r.get("test"), "reported_oof": res.get("oof")})
    return rows


# e5-small fine-tuning variants timed per training step: (base config, overrides, only the word
# embeddings frozen: the probe's own switch, since their AdamW update over a 250k-token vocabulary
# is a large part of a CPU step and freeze_layers=0 freezes nothing)
STEP_VARIANTS = {
    "end to end, 32 tokens": ("text_e5_text_ft", [], False),
    "end to end, 24 tokens": ("text_e5_text_ft", ["data.max_len=24"], False),
    "embeddings frozen, 32 tokens": ("text_e5_text_ft", [], True),
    "top 4 layers, 32 tokens": ("text_e5_text_ft_top4", [], False),
    "top 2 layers, 32 tokens": ("text_e5_text_ft", ["model.freeze_layers=10"], False),
}


def step_cost(data: Path, steps: int = 3) -> dict:
    """CPU seconds (process time, all threads: what a busy machine does not inflate much) and wall
    seconds of one training step (forward, backward, AdamW) of ``batch_size`` real titles, and of
    one forward-only batch, for each e5 fine-tuning variant: the project's model factory,
    tokenizer, optimiser and loss. The first step is a warm-up and is not counted."""
    # heavy: torch and transformers, only with --step-cost
    import pandas as pd
    import torch

    from rakuten.models.backbones import load_tokenizer
    from rakuten.models.registry import create_model
    from rakuten.training.engine import make_optimizer
    from rakuten.training.losses import make_loss

    texts = pd.read_csv(data / "X_train_update.csv", index_col=0)["designation"].fillna("").tolist()
    out = {}
    for label, (base, ov, embeddings_only) in STEP_VARIANTS.items():
        cfg = member_config(base, base, ov)
        torch.manual_seed(0)
        tok = load_tokenizer(cfg.model.backbone)
        model = create_model(cfg.model.name, cfg=cfg.model, num_classes=NUM_CLASSES, tokenizer=tok).train()
        if embeddings_only:
            for p in model.encoder.embeddings.parameters():
                p.requires_grad_(False)
        opt = make_optimizer(model, lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay))
        crit = make_loss(cfg.loss, np.zeros(1, np.int64), NUM_CLASSES)
        b = int(cfg.train.batch_size)
        cpu, wall = [], []
        for i in range(steps + 1):
            enc = tok([cfg.data.prefix + t for t in texts[i * b:(i + 1) * b]], truncation=True,
                      max_length=int(cfg.data.max_len), padding=True, return_tensors="pt")
            y = torch.arange(b) % NUM_CLASSES
            c0, w0 = time.process_time(), time.time()
            loss = crit(model({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})["logits"], y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                cpu.append(time.process_time() - c0)
                wall.append(time.time() - w0)
        model.eval()
        c0 = time.process_time()
        with torch.no_grad():
            model({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        out[label] = {"train_step_cpu_s": round(float(np.median(cpu)), 2), "train_step_wall_s": round(float(np.median(wall)), 2),
                      "forward_cpu_s": round(time.process_time() - c0, 2), "tokens": int(enc["input_ids"].shape[1]),
                      "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad))}
        print(label, out[label], flush=True)
    return out


def ds_folds(paths: Paths) -> list[int]:
    """The fold ids of the workdir's fold file."""
    import pandas as pd  # local: only the stacks need it
    f = sorted(paths.folds_dir.glob("folds_k*_seed*.csv"))[0]
    return sorted(pd.read_csv(f)["fold"].unique().tolist())


def markdown(res: dict) -> str:
    lines = ["| member | folds | OOF macro-F1 | test macro-F1 | time (s, all its folds) |", "|---|---|---|---|---|"]
    for r in res["members"]:
        if "oof" in r:
            lines.append(f"| {r['member']} | {','.join(map(str, r['folds_done']))} | {r['oof']['macro_f1']:.4f} "
                         f"| {r['test']['macro_f1']:.4f} | {r['seconds']:.0f} |")
        else:
            lines.append(f"| {r['member']} | none finished | | | |")
    for s in res.get("stacks", []):
        if s.get("oof"):
            lines.append(f"| {s['stack']} ({'+'.join(s['inputs'])}) | all | {s['oof']['macro_f1']:.4f} "
                         f"| {s['test']['macro_f1']:.4f} | {s['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--folds", default="all", help="comma list or all")
    ap.add_argument("--only", default=None, help="comma list of member names to train (default: all)")
    ap.add_argument("--score-only", action="store_true", help="train nothing; score the finished folds")
    ap.add_argument("--stack", action="store_true", help="also the stacks with and without the fine-tuned member")
    ap.add_argument("--step-cost", action="store_true", help="time one training step of each e5 fine-tuning variant and stop")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--note", default="", help="how busy the machine was while the runs trained (kept in the JSON)")
    args = ap.parse_args(argv)
    setup_logging(False)
    quiet_progress(True)
    # heavy: pandas and torch, loaded after the arguments are checked
    from rakuten.data.prepared import data_fingerprint, load_dataset, resolve_data_dir
    from rakuten.lineage import fold_file
    from rakuten.training.fold import run_fold
    from rakuten.training.fold_data import FoldData

    data = args.data.resolve()
    if args.step_cost:
        res = {"data": data.name, "date": str(date.today()), "cpu_count": os.cpu_count(),
               "load_average": os.getloadavg(), "step_cost": step_cost(data)}
        out = args.out or RESULTS / f"finetune_real_{data.name}_stepcost_{res['date']}.json"
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")
        return 0
    paths = Paths.make(args.workdir, data)
    ds = load_dataset(paths)
    y_test = test_labels(data, ds)
    members = MEMBERS[data.name]
    folds = list(range(5)) if args.folds == "all" else [int(k) for k in args.folds.split(",")]
    only = set(args.only.split(",")) if args.only else None
    timings = {}
    for name, base, ov in members:
        if args.score_only or (only and name not in only):
            continue
        cfg = member_config(name, base, ov)
        t0 = time.time()
        for k in folds:
            run_fold(cfg, paths, k, ds=ds, progress=False)
        timings[name] = round(time.time() - t0, 1)
    res = {"data": data.name, "date": str(date.today()), "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "note": args.note, "folds": folds, "run_seconds": timings,
           "members": [score_member(n, paths, ds, y_test, folds) for n, _, _ in members]}
    missing = {r["member"]: sorted(set(folds) - set(r["folds_done"])) for r in res["members"]
               if set(r["folds_done"]) != set(folds)}
    res["partial"] = bool(missing)
    res["folds_missing"] = missing   # not finished when this file was written
    # every member again on the folds the fine-tuned one finished: the like-for-like comparison
    ft = next((r for r in res["members"] if r["member"].endswith("_ft") and r["folds_done"]), None)
    if ft and ft["folds_done"] != folds:
        res["same_folds_as_ft"] = {"folds": ft["folds_done"], "members": [
            score_member(n, paths, ds, y_test, ft["folds_done"]) for n, _, _ in members]}
    # frequency-weighted members only: difficulty weights come from the pretrained features (their
    # spread is in each fold's log line "class weights a-b")
    weighted = [(n, b, ov) for n, b, ov in members if any(o.startswith("loss.class_weight_power") for o in ov)
                and "loss.class_weights=difficulty" not in ov]
    if weighted:
        n, b, ov = weighted[0]
        cfg = member_config(n, b, ov)
        fpath, folds_df, fhash = fold_file(paths, cfg)
        fd = FoldData(ds.train, ds.test, folds_df, fpath, fhash, data_fingerprint(resolve_data_dir(paths)))
        res["class_weight_max_over_min"] = weight_spread(cfg, paths, fd, folds, float(cfg.loss.class_weight_power))
        if all(v == 1.0 for v in res["class_weight_max_over_min"].values()):
            res["class_weight_note"] = (f"{n}: every fold's class weights are equal (a balanced training set), so "
                                        "its loss is plain cross-entropy; it needs no run of its own here")
    if args.stack:
        res["stacks"] = run_stacks(paths, ds, y_test, data.name)
    out = args.out or RESULTS / f"finetune_real_{data.name}_{res['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(markdown(res))
    if "same_folds_as_ft" in res:
        print(f"\non the fine-tuned member's finished folds {res['same_folds_as_ft']['folds']}:")
        print(markdown({"members": res["same_folds_as_ft"]["members"]}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
