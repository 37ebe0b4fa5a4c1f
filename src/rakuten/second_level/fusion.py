"""Neural fusion over out-of-fold outputs: the thesis's hierarchical fusion, its baseline, late fusion.

The unimodal models are frozen (their OOF embeddings and logits are precomputed), so every variant
here is a small network trained in seconds on the CPU. Variants, chosen by ``fusion.variant``:

``hierarchical`` (thesis chapter 6, Fig. 6.1)
    level 1 fuses each text backbone's title and description embeddings (``level1_op``); level 2
    fuses the backbones' level-1 outputs with the image embedding, projected to the text width by a
    1-D convolution with kernel 1 (the thesis's 2048 -> 768), with ``level2_op``. Ops: add | concat |
    average; add/average project unequal widths to a common width with a linear layer first.
``baseline`` (Verma et al. 2020; thesis Fig. 6.2)
    one fusion of the text model(s) run on the concatenated title + description with the projected
    image embedding (``op``).
``late``
    decision-level fusion of class probabilities: ``op: average`` (fixed, equal weights) or
    ``op: weighted`` (one learned non-negative weight per model, on probabilities or log-probabilities).

Heads (``head``): ``linear``; ``dropout`` (dropout + linear, thesis Table 6.3); ``mlp`` (dropout, FC,
non-linearity, then the linear projection; thesis Fig. 6.3).

The networks are defined in ``rakuten.models.fusion_nets`` and built through the model registry
(``create_model("fusion_<variant>", cfg=<fusion section>, in_dims=..., num_classes=...)``); this module
validates the config, prepares the inputs and trains them.

K-fold on the upstream fold file: fold k's fusion model is fitted on the OOF rows of the other folds
only and predicts fold k's rows. Early stopping (``train.early_stop: inner``) watches an inner
stratified split of the training rows; ``fixed`` trains ``train.epochs`` epochs. Fold k is never used
to choose epochs: that would select the model on the rows it is scored on. Embeddings are
standardised with the mean and standard deviation of the rows the network is fitted on.

Embedding spaces (``fusion.align``). OOF embeddings of fold j come from upstream model j, a
different network for every fold. Class scores are comparable across these models, embeddings need
not be: for independently initialised models (the demo's random-init tiny models) a classifier fitted
on fold 1's OOF embeddings scores at chance on fold 0's. Fine-tuning from one checkpoint keeps spaces
closer, frozen backbones keep them identical, but nothing guarantees it. ``test_anchor`` (default)
therefore maps, for fold k's model, every other fold j's OOF embeddings into model k's space with a
ridge least-squares map fitted on the test rows, which every upstream fold model has embedded (the
same products, no labels involved). Fold k's own OOF rows and its ``test_fold<k>`` rows stay in their
native space k, untouched; only training rows are moved. Spaces that are identical on the test rows
(frozen backbones) are left as they are. ``none`` uses the raw embeddings.

Test predictions (``test_input: per_fold``, the default): fold k's fusion model is applied to each
upstream experiment's ``test_fold<k>`` outputs, i.e. to outputs of the same upstream models that
produced fold k's OOF rows (same space, same confidence), so the test inputs match the inputs the
reported OOF score was measured on. ``averaged`` feeds the mean over fold models (each mapped into
space k first when aligning): smoother vectors than any the network was fitted on. Fold models are
bagged afterwards, on the class scores.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rakuten.artifacts import Predictions
from rakuten.config import Config, ConfigError, deep_merge, refuse_moved_keys, validate_config
from rakuten.defaults import FUSION_DEFAULTS
from rakuten.labels import NUM_CLASSES, class_weights
from rakuten.metrics import scores
from rakuten.models.fusion_nets import FUSION_MODELS, HEADS, FusionNet, LateFusion
from rakuten.models.registry import create_model, model_class
from rakuten.paths import Paths
from rakuten.lineage import config_hash, upstream_signature
from rakuten.second_level.upstream import (SecondLevelData, finish_experiment,
                                           fold_is_current, inner_split, load_upstreams, open_experiment,
                                           save_fold)
from rakuten.training.engine import Engine

log = logging.getLogger(__name__)

def fusion_config(cfg) -> Config:
    """The config over FUSION_DEFAULTS, validated; accepts a Config from ``load_config`` or a dict."""
    d = cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(dict(cfg))
    refuse_moved_keys(d, d.get("_source_") or d.get("name") or "fusion config")
    c = Config(deep_merge(FUSION_DEFAULTS, d))
    validate_config(c, FUSION_DEFAULTS, c.get("_source_") or c.get("name") or "config")
    if not c.get("name"):
        raise ConfigError("fusion config has no name")
    if c.kind != "fusion":
        raise ConfigError(f"{c.name}: kind must be fusion (got {c.kind!r})")
    variant = c.fusion.variant
    if variant not in FUSION_VARIANTS:
        raise ConfigError(f"{c.name}: fusion.variant must be one of {', '.join(FUSION_VARIANTS)} (got {variant!r})")
    fusion_net_class(variant).check_config(c.fusion, c.name)
    if c.fusion.head not in HEADS:
        raise ConfigError(f"{c.name}: fusion.head must be one of {', '.join(HEADS)} (got {c.fusion.head!r})")
    if c.train.early_stop not in ("inner", "fixed"):
        raise ConfigError(f"{c.name}: train.early_stop must be inner or fixed")
    if c.train.monitor not in ("macro_f1", "loss"):
        raise ConfigError(f"{c.name}: train.monitor must be macro_f1 or loss")
    if c.fusion.align not in ("test_anchor", "none"):
        raise ConfigError(f"{c.name}: fusion.align must be test_anchor or none (got {c.fusion.align!r})")
    if c.test_input not in ("per_fold", "averaged"):
        raise ConfigError(f"{c.name}: test_input must be per_fold or averaged")
    return c


# ------------------------------------------------------------------------------------------ networks
# The networks live in rakuten.models.fusion_nets and are built through the model registry.
FUSION_VARIANTS: tuple[str, ...] = tuple(FUSION_MODELS)


def fusion_net_class(variant: str) -> type[FusionNet]:
    """The registered network class of ``fusion.variant`` (its ``check_config`` and ``inputs``)."""
    return model_class(FUSION_MODELS[variant])


# ------------------------------------------------------------------------------------------ training
@dataclass
class FoldOutput:
    """What fold k's fusion model produced; ``info`` records the rows it was fitted/stopped on."""

    fold: int
    oof: Predictions
    test: Predictions
    scores: dict
    info: dict = field(default_factory=dict)


def fit_alignment(src: np.ndarray, dst: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Ridge least-squares affine map ``x -> x @ A + b`` taking ``src`` rows onto ``dst`` rows.

    ``src`` and ``dst`` are the same products embedded by two models; None when they already agree.
    """
    if src.shape == dst.shape and np.allclose(src, dst, rtol=1e-5, atol=1e-6):
        return None
    xs = src.astype(np.float64)
    xd = dst.astype(np.float64)
    mu_s, mu_d = xs.mean(0), xd.mean(0)
    xs -= mu_s
    xd -= mu_d
    gram = xs.T @ xs
    lam = float(ridge) * max(np.trace(gram) / gram.shape[0], 1e-12)
    a = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xs.T @ xd)
    return a.astype(np.float32), (mu_d - mu_s @ a).astype(np.float32)


def aligned_inputs(up, fold_vec: np.ndarray, fold: int, test_mode: str, ridge: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(OOF embeddings with fold j != ``fold`` rows mapped into model ``fold``'s space, its test input).

    Maps are fitted on the test rows (embedded by every upstream fold model): no label, and nothing
    of fold ``fold``'s rows, is used.
    """
    ref = up.test[fold].embeddings
    out = up.oof.embeddings.copy()
    mapped_tests = [ref]
    for j, t in up.test.items():
        if j == fold:
            continue
        m = fit_alignment(t.embeddings, ref, ridge)
        rows = fold_vec == j
        if m is not None:
            out[rows] = up.oof.embeddings[rows] @ m[0] + m[1]
        mapped_tests.append(t.embeddings if m is None else t.embeddings @ m[0] + m[1])
    test = ref if test_mode == "per_fold" else np.mean(mapped_tests, axis=0).astype(np.float32)
    return out, test


def _standardise(arrays: dict[str, np.ndarray], tests: dict[str, np.ndarray], fit_idx: np.ndarray,
                 keys: list[str]) -> tuple[dict, dict]:
    """Embeddings scaled by the statistics of the fitted rows only (never fold k's or the test's)."""
    out, out_t = dict(arrays), dict(tests)
    for k in keys:
        x = arrays[k][fit_idx]
        mu = x.mean(0, dtype=np.float64).astype(np.float32)
        sd = np.maximum(x.std(0, dtype=np.float64), 1e-6).astype(np.float32)
        out[k] = (arrays[k] - mu) / sd
        out_t[k] = (tests[k] - mu) / sd
    return out, out_t


@torch.no_grad()
def _predict(net: FusionNet, X: dict[str, torch.Tensor], idx: np.ndarray | None, bs: int) -> tuple[np.ndarray, np.ndarray | None]:
    net.eval()
    n = len(next(iter(X.values()))) if idx is None else len(idx)
    logits, feats = [], []
    for b in range(0, n, bs):
        sel = slice(b, b + bs) if idx is None else torch.from_numpy(idx[b:b + bs])
        out = net({k: v[sel] for k, v in X.items()})
        logits.append(out["logits"].float().numpy())
        if out["features"] is not None:
            feats.append(out["features"].float().numpy())
    c = net.num_classes
    lg = np.concatenate(logits) if logits else np.zeros((0, c), np.float32)
    return lg, (np.concatenate(feats) if feats else None)


def _monitor(y: np.ndarray, logits: np.ndarray, weight: torch.Tensor, what: str) -> float:
    if what == "loss":
        return -float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y), weight=weight))
    return scores(y, logits.argmax(1))["macro_f1"]


class _ShuffledBatches:
    """The fitted rows in a fresh random order every epoch, as batches of input tensors + ``labels``.

    One permutation is drawn from ``gen`` per pass, so the order of the batches depends only on the
    seed and the epoch count (the same draws the fold's earlier loop made)."""

    def __init__(self, X: dict[str, torch.Tensor], y: torch.Tensor, rows: torch.Tensor, batch_size: int,
                 gen: torch.Generator):
        self.X, self.y, self.rows, self.bs, self.gen = X, y, rows, batch_size, gen

    def __len__(self) -> int:
        return -(-len(self.rows) // self.bs)

    def __iter__(self):
        perm = self.rows[torch.randperm(len(self.rows), generator=self.gen)]
        for b in range(0, len(perm), self.bs):
            idx = perm[b:b + self.bs]
            batch = {k: v[idx] for k, v in self.X.items()}
            batch["labels"] = self.y[idx]
            yield batch


def train_net(net: FusionNet, X: dict[str, torch.Tensor], y: np.ndarray, fit_idx: np.ndarray,
              val_idx: np.ndarray | None, tcfg, seed: int, progress: bool = False) -> dict:
    """Minibatch AdamW on ``fit_idx`` through the project's ``Engine`` (CPU, fp32, no clipping: the
    fusion networks are small); with ``val_idx``, keep the best epoch and stop on patience."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:        # e.g. late fusion by plain averaging: nothing to learn
        return {"epochs_run": 0, "best_epoch": 0}
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # one parameter group with decay on every weight (not make_optimizer's two groups): the fusion
    # heads were tuned this way, and changing it would change every fusion artifact
    opt = torch.optim.AdamW(params, lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay))

    def criterion(logits, labels):
        return F.cross_entropy(logits, labels, weight=net.class_weight)

    engine = Engine(net, criterion, opt, device="cpu", precision="fp32", clip_grad=None, progress=False)
    batches = _ShuffledBatches(X, torch.from_numpy(np.array(y, dtype=np.int64)), torch.from_numpy(fit_idx),
                               int(tcfg.batch_size), gen)
    best, best_state, best_epoch, bad = -np.inf, None, 0, 0
    epochs = int(tcfg.epochs)
    bar = tqdm(range(1, epochs + 1), desc="epochs", leave=False, disable=not progress)
    epoch = 0
    for epoch in bar:
        engine.train_epoch(batches, epoch)
        if val_idx is not None and len(val_idx):
            logits, _ = _predict(net, X, val_idx, int(tcfg.eval_batch_size))
            score = _monitor(y[val_idx], logits, net.class_weight, tcfg.monitor)
            if score > best + 1e-9:
                best, best_epoch, bad = score, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
                if bad >= int(tcfg.patience):
                    break
            bar.set_postfix(best=f"{best:.4f}", at=best_epoch)
    if best_state is not None:
        net.load_state_dict(best_state)
    return {"epochs_run": epoch, "best_epoch": best_epoch if best_state is not None else epoch,
            "inner_score": None if best_state is None else float(best)}


def fit_predict_fold(cfg, data: SecondLevelData, fold: int, progress: bool = False) -> FoldOutput:
    """Fit fold ``fold``'s fusion model on the other folds' OOF rows; predict fold ``fold`` and the test.

    Nothing of fold ``fold`` (labels, embeddings, statistics) reaches the fitted model: its rows are
    only passed through the network after training.
    """
    cfg = fusion_config(cfg)
    fcfg, tcfg = cfg.fusion, cfg.train
    t0 = time.time()
    specs = fusion_net_class(fcfg.variant).inputs(fcfg)
    fold_vec, y = data.fold, data.y
    train_idx = np.flatnonzero(fold_vec != fold)
    pred_idx = np.flatnonzero(fold_vec == fold)
    seed = int(tcfg.seed) + fold
    if tcfg.early_stop == "inner":
        fit_idx, val_idx = inner_split(train_idx, y[train_idx], float(tcfg.inner_frac), seed)
    else:
        fit_idx, val_idx = train_idx, None

    arrays, tests = {}, {}
    for name, fld in specs:
        up = data.inputs[name]
        if fld == "embeddings" and fcfg.align == "test_anchor":
            arrays[name], tests[name] = aligned_inputs(up, fold_vec, fold, cfg.test_input, float(fcfg.align_ridge))
        else:
            t = up.test_input(fold, cfg.test_input)
            arrays[name] = getattr(up.oof, fld)
            tests[name] = getattr(t, fld)
    emb_keys = [n for n, f in specs if f == "embeddings"]
    arrays, tests = _standardise(arrays, tests, fit_idx, emb_keys)
    in_dims = {k: v.shape[1] for k, v in arrays.items()}

    torch.manual_seed(seed)
    net = create_model(FUSION_MODELS[fcfg.variant], cfg=fcfg, in_dims=in_dims, num_classes=NUM_CLASSES)
    net.class_weight.copy_(torch.from_numpy(
        class_weights(y[fit_idx], float(tcfg.class_weight_power)).astype(np.float32)))
    X = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    Xt = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tests.items()}
    info = train_net(net, X, y, fit_idx, val_idx, tcfg, seed, progress)

    bs = int(tcfg.eval_batch_size)
    logits, feats = _predict(net, X, pred_idx, bs)
    t_logits, t_feats = _predict(net, Xt, None, bs)
    keep = bool(cfg.save_embeddings)
    oof = Predictions(data.ids[pred_idx], logits, feats if keep else None, y[pred_idx])
    test = Predictions(data.test_ids, t_logits, t_feats if keep else None)
    s = scores(y[pred_idx], logits)
    if isinstance(net, LateFusion):
        info["weights"] = [round(float(w), 4) for w in net.weights().detach()]
    info.update(n_fit=len(fit_idx), n_inner_val=0 if val_idx is None else len(val_idx),
                seconds=round(time.time() - t0, 2))
    # Row indices are kept for the leakage tests; they are not written to meta.json.
    info["fit_idx"], info["val_idx"], info["pred_idx"] = fit_idx, val_idx, pred_idx
    return FoldOutput(fold, oof, test, s, info)


def fusion_inputs(cfg) -> tuple[list[str], tuple[str, ...]]:
    """(all upstream experiment names, those whose embeddings are needed)."""
    cfg = fusion_config(cfg)
    specs = fusion_net_class(cfg.fusion.variant).inputs(cfg.fusion)
    names = list(dict.fromkeys(n for n, _ in specs))
    return names, tuple(n for n, f in specs if f == "embeddings")


def load_fusion_data(cfg, paths: Paths) -> SecondLevelData:
    names, need_emb = fusion_inputs(cfg)
    return load_upstreams(paths, cfg, names, need_emb)


def run_fusion(cfg, paths: Paths, folds: list[int] | None = None, force: bool = False,
               progress: bool = True, data: SecondLevelData | None = None) -> dict:
    """Train and write ``oof/<name>/`` fold by fold; folds already done on this config are skipped.

    Returns ``{"name", "kind", "folds": {k: scores}, "skipped": [...], "oof": scores or None}``.
    """
    cfg = fusion_config(cfg)
    torch.set_num_threads(int(cfg.train.num_threads))
    data = data or load_fusion_data(cfg, paths)
    names, _ = fusion_inputs(cfg)
    chash = config_hash(cfg, extra={"upstream": upstream_signature(paths, names), "fold_hash": data.fold_hash})
    todo = data.fold_ids if folds is None else [int(k) for k in folds]
    bad = [k for k in todo if k not in data.fold_ids]
    if bad:
        raise ConfigError(f"fold {bad[0]} is not in {data.fold_file.name} (folds {data.fold_ids})")
    exp = open_experiment(paths, cfg, "fusion", data, chash, {"variant": cfg.fusion.variant})
    done, skipped = {}, []
    for k in tqdm(todo, desc=f"{cfg.name} folds", disable=not progress):
        if not force and fold_is_current(exp, k, data.fold_hash, chash):
            skipped.append(k)
            continue
        out = fit_predict_fold(cfg, data, k, progress=False)
        record = {**out.scores, **{key: v for key, v in out.info.items() if not key.endswith("_idx")}}
        save_fold(exp, k, out.oof, out.test, record)
        done[k] = out.scores
        log.info("%s fold %d: macro-F1 %.4f (best epoch %s)", cfg.name, k, out.scores["macro_f1"],
                 out.info.get("best_epoch"))
    return {"name": cfg.name, "kind": "fusion", "folds": done, "skipped": skipped,
            "oof": finish_experiment(exp, data), "dir": str(exp.dir)}
