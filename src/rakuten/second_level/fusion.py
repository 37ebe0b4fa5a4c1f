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

What a fold fits is kept (``oof/<name>/models/fold<k>.pt``: the network's weights, the embedding
statistics, the alignment maps, the tuned parameters), and ``predict_fusion`` is the one function
that turns upstream fold outputs into the fusion's logits: the run calls it for fold k's OOF rows and
the test rows, ``rakuten.bundle`` for new products, so an exported fusion re-predicts its submission.

Missing inputs (``fusion.masks``): whether a row has a title, a description and an image comes from
the dataset (``input_present``), never from the embeddings; the network leaves the missing ones out.
``train.inner_trials`` > 0 tunes the regularisation per fold with Optuna on the inner split of the
training rows (``TUNED_SPACE``): fold k's rows never choose fold k's parameters.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rakuten.artifacts import Predictions
from rakuten.config import Config, ConfigError, load_config
from rakuten.defaults import FUSION_DEFAULTS
from rakuten.labels import NUM_CLASSES, class_weights
from rakuten.metrics import scores
from rakuten.models.fusion_nets import FUSION_MODELS, HEADS, FusionNet, LateFusion
from rakuten.models.registry import create_model, model_class
from rakuten.data.prepared import load_dataset
from rakuten.paths import Paths
from rakuten.lineage import config_hash, upstream_signature
from rakuten.second_level.upstream import (SecondLevelData, finish_experiment,
                                           fold_is_current, inner_split, load_upstreams, open_experiment,
                                           save_fold)
from rakuten.training.engine import Engine

log = logging.getLogger(__name__)

def fusion_config(cfg) -> Config:
    """A recorded or loaded fusion config (dict or Config) through the one loader, over FUSION_DEFAULTS
    and checked (``check_fusion``); a config that went through it already comes back equal."""
    return load_config(cfg, defaults=FUSION_DEFAULTS, check=check_fusion)


def check_fusion(c: Config) -> None:
    """The rules of a fusion config beyond types and ranges (one-line ConfigError)."""
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
    fitted: dict = field(default_factory=dict)    # what predict_fusion needs; saved as models/fold<k>.pt


@dataclass
class FusionData(SecondLevelData):
    """The upstream outputs plus, with ``fusion.masks``, which inputs each product has (experiment ->
    bool [n] in fold-file order, and bool [T] in ``test_ids`` order)."""

    present: dict[str, np.ndarray] | None = None
    test_present: dict[str, np.ndarray] | None = None


def fit_alignment(src: np.ndarray, dst: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Ridge least-squares affine map ``x -> x @ A + b`` taking ``src`` rows onto ``dst`` rows.

    ``src`` and ``dst`` are the same products embedded by two models; None when they already agree.
    When every dimension of one is an exact affine function of the same dimension of the other (a
    frozen backbone whose fold heads standardise its features with their own training rows' mean and
    deviation), ``A`` is that per-dimension scale, a vector [D]: exact, where a full ridge map fitted
    on fewer test rows than dimensions is not (on rakuten_images_real it cost the hierarchical fusion
    0.03 OOF macro-F1, README). ``apply_alignment`` applies either form.
    """
    if src.shape == dst.shape and np.allclose(src, dst, rtol=1e-5, atol=1e-6):
        return None
    diag = _diagonal_map(src, dst)
    if diag is not None:
        return diag
    xs = src.astype(np.float64)
    xd = dst.astype(np.float64)
    mu_s, mu_d = xs.mean(0), xd.mean(0)
    xs -= mu_s
    xd -= mu_d
    gram = xs.T @ xs
    lam = float(ridge) * max(np.trace(gram) / gram.shape[0], 1e-12)
    a = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xs.T @ xd)
    return a.astype(np.float32), (mu_d - mu_s @ a).astype(np.float32)


def _diagonal_map(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-dimension ``dst = src * a + b`` when it holds on every row (to float32 precision), else None."""
    if src.shape != dst.shape or len(src) < 3:
        return None
    xs, xd = src.astype(np.float64), dst.astype(np.float64)
    mu_s, mu_d = xs.mean(0), xd.mean(0)
    cs, cd = xs - mu_s, xd - mu_d
    var = (cs * cs).sum(0)
    if (var <= 0).any():
        return None
    a = (cs * cd).sum(0) / var
    b = mu_d - mu_s * a
    scale = np.abs(xd).max() + 1e-12
    if np.abs(xs * a + b - xd).max() > 1e-4 * scale:
        return None
    return a.astype(np.float32), b.astype(np.float32)


def apply_alignment(x: np.ndarray, m: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``x`` mapped by a ``fit_alignment`` map (None: unchanged; a vector: per dimension; a matrix)."""
    if m is None:
        return x
    a, b = m
    return (x * a + b if a.ndim == 1 else x @ a + b).astype(np.float32)


def aligned_inputs(up, fold_vec: np.ndarray, fold: int, ridge: float) -> tuple[np.ndarray, dict]:
    """(OOF embeddings with fold j != ``fold`` rows mapped into model ``fold``'s space, the maps).

    Maps (``{j: (A, b) or None}``) are fitted on the test rows (embedded by every upstream fold
    model): no label, and nothing of fold ``fold``'s rows, is used. They are kept with the fold's
    model: ``test_input: averaged`` maps new products' fold-j embeddings with them.
    """
    ref = up.test[fold].embeddings
    out = up.oof.embeddings.copy()
    maps = {}
    for j, t in up.test.items():
        if j == fold:
            continue
        m = maps[j] = fit_alignment(t.embeddings, ref, ridge)
        rows = fold_vec == j
        if m is not None:
            out[rows] = apply_alignment(up.oof.embeddings[rows], m)
    return out, maps


def input_present(frame: pd.DataFrame, modality: str | None, field: str | None) -> np.ndarray:
    """Whether each product has the input an upstream model reads: its image (``has_image``), its
    title, its description, or either (``text``). ``frame``: the dataset's or the bundle's products."""
    if modality == "image":
        return frame["has_image"].to_numpy(bool)
    title = frame["title"].fillna("").astype(str).str.strip().str.len().to_numpy() > 0
    desc = frame["description"].fillna("").astype(str).str.strip().str.len().to_numpy() > 0
    return {"title": title, "description": desc}.get(field or "text", title | desc)


def _statistics(arrays: dict[str, np.ndarray], fit_idx: np.ndarray, keys: list[str]) -> dict:
    """Mean and standard deviation of each embedding over the fitted rows only (never fold k's or
    the test's): every row the network sees is scaled by them."""
    stats = {}
    for k in keys:
        x = arrays[k][fit_idx]
        stats[k] = (x.mean(0, dtype=np.float64).astype(np.float32),
                    np.maximum(x.std(0, dtype=np.float64), 1e-6).astype(np.float32))
    return stats


def _tensors(cfg, fitted: dict, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None
             ) -> dict[str, torch.Tensor]:
    """The network's batch: standardised embeddings, logits and (``fusion.masks``) presence."""
    cls = fusion_net_class(cfg.fusion.variant)
    X = {}
    for name, fld in cls.inputs(cfg.fusion):
        key = cls.key(name, fld)
        v = arrays[key]
        if fld == "embeddings":
            mu, sd = fitted["stats"][key]
            v = (v - mu) / sd
        X[key] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    if cfg.fusion.masks and cfg.fusion.variant != "late":
        if present is None:
            raise ConfigError(f"{cfg.name}: fusion.masks needs each product's title/description/image presence")
        for name in dict.fromkeys(n for n, _ in cls.inputs(cfg.fusion)):
            X[f"{name}:present"] = torch.from_numpy(np.asarray(present[name], dtype=np.float32))
    return X


def fusion_input(cfg, fitted: dict, outputs: dict[str, dict[int, tuple[np.ndarray, np.ndarray | None]]],
                 mode: str) -> dict[str, np.ndarray]:
    """What fold ``fitted["fold"]``'s network reads from its upstream fold models' outputs.

    ``outputs``: experiment -> {upstream fold j: (logits [n, C], embeddings [n, D] or None)}, all for
    the same n products. ``per_fold``: fold k's model's outputs; ``averaged``: the mean over the fold
    models, each fold's embeddings mapped into space k first by the kept alignment maps."""
    k = int(fitted["fold"])
    cls = fusion_net_class(cfg.fusion.variant)
    arrays = {}
    for name, fld in cls.inputs(cfg.fusion):
        i = 0 if fld == "logits" else 1
        if mode == "per_fold":
            v = outputs[name][k][i]
        elif fld == "logits":
            v = np.mean([outputs[name][j][0] for j in sorted(outputs[name])], axis=0)
        else:
            maps = fitted["maps"].get(name) or {}
            parts = [outputs[name][k][1]]
            for j in sorted(outputs[name]):
                if j != k:
                    parts.append(apply_alignment(outputs[name][j][1], maps.get(j)))
            v = np.mean(parts, axis=0).astype(np.float32)
        arrays[cls.key(name, fld)] = v
    return arrays


def predict_fusion(cfg, fitted: dict, outputs: dict[str, dict[int, tuple[np.ndarray, np.ndarray | None]]],
                   present: dict[str, np.ndarray] | None = None, mode: str | None = None,
                   net: FusionNet | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits [n, C], fused features or None) of one fusion fold model on n products.

    The one predict path of a fusion: the run calls it for fold k's OOF rows (``mode="per_fold"``:
    they are fold k's upstream models' outputs) and for the test rows, ``rakuten.bundle`` for new
    products. ``fitted``: the fold's kept artifact (``fit_predict_fold``'s ``FoldOutput.fitted``,
    ``oof/<name>/models/fold<k>.pt``); ``outputs``: as ``fusion_input``; ``present``: experiment ->
    bool [n] (``input_present``), needed with ``fusion.masks``; ``mode``: default the config's
    ``test_input``; ``net``: the fitted network, else rebuilt from ``fitted``."""
    cfg = fusion_config(cfg)
    if net is None:
        net = fusion_network(cfg, fitted)
    arrays = fusion_input(cfg, fitted, outputs, mode or cfg.test_input)
    return _predict(net, _tensors(cfg, fitted, arrays, present), None, int(cfg.train.eval_batch_size))


def fusion_network(cfg, fitted: dict) -> FusionNet:
    """The fitted network of a kept fold artifact, in eval mode (``predict_fusion``'s ``net``)."""
    net = _build_net(fusion_config(cfg), fitted["in_dims"])
    net.load_state_dict(fitted["state_dict"])
    return net.eval()


def _build_net(cfg, in_dims: dict[str, int]) -> FusionNet:
    return create_model(FUSION_MODELS[cfg.fusion.variant], cfg=cfg.fusion, in_dims=in_dims, num_classes=NUM_CLASSES)


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
    late = getattr(net, "raw", None) if not isinstance(net, LateFusion) else None
    if late is not None and tcfg.get("late_lr") is not None:
        # the residual path's few late-fusion weights want a larger step than the correction (as the
        # late fusion's own configs use), and no decay: they are the start, not the correction
        rest = [p for p in params if p is not late]
        opt = torch.optim.AdamW([{"params": rest}, {"params": [late], "lr": float(tcfg.late_lr), "weight_decay": 0.0}],
                                lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay))
    else:
        opt = torch.optim.AdamW(params, lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay))

    def criterion(logits, labels):
        return F.cross_entropy(logits, labels, weight=net.class_weight)

    engine = Engine(net, criterion, opt, device="cpu", precision="fp32", clip_grad=None, progress=False)
    batches = _ShuffledBatches(X, torch.from_numpy(np.array(y, dtype=np.int64)), torch.from_numpy(fit_idx),
                               int(tcfg.batch_size), gen)
    best, best_state, best_epoch, bad = -np.inf, None, 0, 0
    if val_idx is not None and len(val_idx) and getattr(net, "late_weights", lambda: None)() is not None:
        # a residual network starts as the late fusion of its inputs: that start is a candidate too,
        # so the correction is kept only where the inner split says it helps
        logits, _ = _predict(net, X, val_idx, int(tcfg.eval_batch_size))
        best = _monitor(y[val_idx], logits, net.class_weight, tcfg.monitor)
        best_state = copy.deepcopy(net.state_dict())
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


TUNED_SPACE = {
    # the regularisation that matters on a few hundred rows (README, hierarchical fusion on real data)
    "train.weight_decay": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "train.lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
    "fusion.dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "fusion.modality_dropout": {"type": "float", "low": 0.0, "high": 0.5},
}


def _with(cfg, params: dict):
    """``cfg`` with dotted ``params`` set (a validated copy)."""
    d = cfg.to_dict()
    for key, v in params.items():
        sec, opt = key.split(".")
        d[sec][opt] = v
    return fusion_config(d)


def _fit(cfg, X, y, fit_idx, val_idx, in_dims, seed, progress):
    torch.manual_seed(seed)
    net = _build_net(cfg, in_dims)
    net.class_weight.copy_(torch.from_numpy(
        class_weights(y[fit_idx], float(cfg.train.class_weight_power)).astype(np.float32)))
    return net, train_net(net, X, y, fit_idx, val_idx, cfg.train, seed, progress)


def _tune_inner(cfg, X, y, fit_idx, val_idx, in_dims, seed: int, progress: bool):
    """Optuna (seeded TPE) over ``TUNED_SPACE`` on the inner split: trial 0 is the config as is; each
    trial fits on ``fit_idx`` and is scored by its best inner-validation score. Returns the best
    trial's (net, train info, params)."""
    # heavy: optuna, only when a config asks for inner tuning
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best = {}

    def objective(trial):
        params = {}
        for key, sp in TUNED_SPACE.items():
            if key == "fusion.dropout" and cfg.fusion.head == "linear":
                continue
            params[key] = trial.suggest_float(key, sp["low"], sp["high"], log=sp.get("log", False))
        net, info = _fit(_with(cfg, params), X, y, fit_idx, val_idx, in_dims, seed, progress)
        score = info.get("inner_score")
        score = -np.inf if score is None else score
        if not best or score > best["score"]:
            best.update(score=score, net=net, info=info, params=params)
        return score

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    start = {key: float(cfg[key.split(".")[0]][key.split(".")[1]] or 0.0) for key in TUNED_SPACE
             if not (key == "fusion.dropout" and cfg.fusion.head == "linear")}
    if all(TUNED_SPACE[k]["low"] <= v <= TUNED_SPACE[k]["high"] for k, v in start.items()):
        study.enqueue_trial(start)
    study.optimize(objective, n_trials=int(cfg.train.inner_trials))
    return best["net"], best["info"], best["params"]


def fit_predict_fold(cfg, data: SecondLevelData, fold: int, progress: bool = False) -> FoldOutput:
    """Fit fold ``fold``'s fusion model on the other folds' OOF rows; predict fold ``fold`` and the test.

    Nothing of fold ``fold`` (labels, embeddings, statistics) reaches the fitted model: its rows are
    only passed through the network after training. Both predictions go through ``predict_fusion``.
    """
    cfg = fusion_config(cfg)
    fcfg, tcfg = cfg.fusion, cfg.train
    t0 = time.time()
    cls = fusion_net_class(fcfg.variant)
    specs = cls.inputs(fcfg)
    fold_vec, y = data.fold, data.y
    train_idx = np.flatnonzero(fold_vec != fold)
    pred_idx = np.flatnonzero(fold_vec == fold)
    seed = int(tcfg.seed) + fold
    if tcfg.early_stop == "inner":
        fit_idx, val_idx = inner_split(train_idx, y[train_idx], float(tcfg.inner_frac), seed)
    else:
        fit_idx, val_idx = train_idx, None

    arrays, maps = {}, {}
    for name, fld in specs:
        up = data.inputs[name]
        key = cls.key(name, fld)
        if fld == "embeddings" and fcfg.align == "test_anchor":
            arrays[key], maps[name] = aligned_inputs(up, fold_vec, fold, float(fcfg.align_ridge))
        else:
            arrays[key] = getattr(up.oof, fld)
    emb_keys = [cls.key(n, f) for n, f in specs if f == "embeddings"]
    in_dims = {cls.key(n, f): arrays[cls.key(n, f)].shape[1] for n, f in specs}
    fitted = {"fold": int(fold), "in_dims": in_dims, "stats": _statistics(arrays, fit_idx, emb_keys),
              "maps": maps, "params": {},
              "inputs": {n: {"modality": data.inputs[n].meta.get("modality"), "field": data.inputs[n].meta.get("field")}
                         for n in dict.fromkeys(n for n, _ in specs)}}
    present = getattr(data, "present", None)
    X = _tensors(cfg, fitted, arrays, present)

    if int(tcfg.inner_trials) > 0 and val_idx is not None and len(val_idx):
        net, info, fitted["params"] = _tune_inner(cfg, X, y, fit_idx, val_idx, in_dims, seed, progress)
        info["params"] = {k: round(float(v), 6) for k, v in fitted["params"].items()}
    else:
        net, info = _fit(cfg, X, y, fit_idx, val_idx, in_dims, seed, progress)
    fitted["state_dict"] = {k: v.detach().clone() for k, v in net.state_dict().items()}

    # fold k's rows are fold k's upstream models' outputs: the per_fold input of predict_fusion
    oof_out = {n: {fold: (data.inputs[n].oof.logits[pred_idx],
                          None if data.inputs[n].oof.embeddings is None else data.inputs[n].oof.embeddings[pred_idx])}
               for n in fitted["inputs"]}
    oof_present = None if present is None else {n: v[pred_idx] for n, v in present.items()}
    logits, feats = predict_fusion(cfg, fitted, oof_out, oof_present, mode="per_fold", net=net)
    test_out = {n: {j: (t.logits, t.embeddings) for j, t in data.inputs[n].test.items()} for n in fitted["inputs"]}
    t_logits, t_feats = predict_fusion(cfg, fitted, test_out, getattr(data, "test_present", None), net=net)
    keep = bool(cfg.save_embeddings)
    oof = Predictions(data.ids[pred_idx], logits, feats if keep else None, y[pred_idx])
    test = Predictions(data.test_ids, t_logits, t_feats if keep else None)
    s = scores(y[pred_idx], logits)
    if isinstance(net, LateFusion):
        info["weights"] = [round(float(w), 4) for w in net.weights().detach()]
    elif getattr(net, "raw", None) is not None:
        info["weights"] = [round(float(w), 4) for w in net.late_weights().detach()]
    info.update(n_fit=len(fit_idx), n_inner_val=0 if val_idx is None else len(val_idx),
                seconds=round(time.time() - t0, 2))
    # Row indices are kept for the leakage tests; they are not written to meta.json.
    info["fit_idx"], info["val_idx"], info["pred_idx"] = fit_idx, val_idx, pred_idx
    return FoldOutput(fold, oof, test, s, info, fitted)


def fusion_inputs(cfg) -> tuple[list[str], tuple[str, ...]]:
    """(all upstream experiment names, those whose embeddings are needed)."""
    cfg = fusion_config(cfg)
    specs = fusion_net_class(cfg.fusion.variant).inputs(cfg.fusion)
    names = list(dict.fromkeys(n for n, _ in specs))
    return names, tuple(n for n, f in specs if f == "embeddings")


def load_fusion_data(cfg, paths: Paths) -> FusionData:
    """The upstream outputs the config reads; with ``fusion.masks``, each input's presence per row
    (from the dataset: the products' titles, descriptions and images)."""
    cfg = fusion_config(cfg)
    names, need_emb = fusion_inputs(cfg)
    base = load_upstreams(paths, cfg, names, need_emb)
    data = FusionData(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    if cfg.fusion.masks and cfg.fusion.variant != "late":
        ds = load_dataset(paths)
        train = ds.train.set_index("id").reindex(data.ids)
        test = ds.test.set_index("id").reindex(data.test_ids)
        if train["title"].isna().any() or test["title"].isna().any():
            raise ConfigError(f"{cfg.name}: fusion.masks: some product ids are not in the dataset "
                              f"{ds.data_dir} (artifacts made on another dataset?)")
        data.present, data.test_present = {}, {}
        for n in names:
            meta = data.inputs[n].meta
            data.present[n] = input_present(train, meta.get("modality"), meta.get("field"))
            data.test_present[n] = input_present(test, meta.get("modality"), meta.get("field"))
    return data


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
        # the fold's model first, then its predictions (a fold whose npz files exist has its model)
        exp.save_model(k, out.fitted, torch_weights=True)
        save_fold(exp, k, out.oof, out.test, record)
        done[k] = out.scores
        log.info("%s fold %d: macro-F1 %.4f (best epoch %s)", cfg.name, k, out.scores["macro_f1"],
                 out.info.get("best_epoch"))
    return {"name": cfg.name, "kind": "fusion", "folds": done, "skipped": skipped,
            "oof": finish_experiment(exp, data), "dir": str(exp.dir)}
