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

K-fold on the upstream fold file: fold k's fusion model is fitted on the OOF rows of the other folds
only and predicts fold k's rows. Early stopping (``train.early_stopping: inner``) watches an inner
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
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from rakuten.artifacts import Predictions
from rakuten.config import Config, ConfigError, deep_merge, validate_config
from rakuten.labels import NUM_CLASSES, class_weights
from rakuten.paths import Paths
from rakuten.reporting.metrics import scores
from rakuten.lineage import config_hash, upstream_signature
from rakuten.second_level.upstream import (SecondLevelData, finish_experiment,
                                           fold_is_current, inner_split, load_upstreams, open_experiment,
                                           save_fold)

log = logging.getLogger(__name__)

OPS = ("add", "concat", "average")
HEADS = ("linear", "dropout", "mlp")

# Deep-copied under every fusion config; a config states only what differs.
FUSION_DEFAULTS: dict = {
    "kind": "fusion",
    "folds": {"k": 5, "seed": 42},
    "fusion": {
        "variant": "hierarchical",   # hierarchical | baseline | late
        "text_groups": [],           # hierarchical: one [title_exp, description_exp] list per text backbone
        "text": [],                  # baseline: text experiment(s) on the concatenated title + description
        "image": None,               # hierarchical / baseline: the image experiment
        "inputs": [],                # late: any experiments (embeddings not needed)
        "level1_op": "average",      # hierarchical, within a backbone
        "level2_op": "average",      # hierarchical, across backbones and the image
        "op": "concat",              # baseline: add | concat | average; late: average | weighted
        "space": "logprob",          # late weighted: prob (convex mix) | logprob (weighted geometric mean)
        "width": None,               # common width every embedding is projected to first (null: native)
        "align": "test_anchor",      # test_anchor | none: map other folds' embedding spaces (see docstring)
        "align_ridge": 1e-3,         # ridge of the alignment maps, relative to the mean feature variance
        "head": "linear",            # linear | dropout | mlp
        "dropout": 0.0,
        "hidden": 256,               # mlp head
    },
    "train": {
        "epochs": 100,
        "batch_size": 256,
        "eval_batch_size": 8192,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "early_stopping": "inner",   # inner (split of the training rows) | fixed (train.epochs)
        "inner_frac": 0.1,
        "patience": 10,
        "monitor": "macro_f1",       # macro_f1 | loss, on the inner split
        "class_weight_power": 0.0,   # loss weight (1 / class frequency) ** power
        "seed": 42,
        "num_threads": 1,            # tiny networks: more intra-op threads only add sync overhead
    },
    "test_input": "per_fold",        # per_fold | averaged (see module docstring)
    "save_embeddings": False,        # write the fused vector as ``embeddings`` (large on real data)
}


def fusion_config(cfg) -> Config:
    """The config over FUSION_DEFAULTS, validated; accepts a Config from ``load_config`` or a dict."""
    d = cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(dict(cfg))
    c = Config(deep_merge(FUSION_DEFAULTS, d))
    validate_config(c, FUSION_DEFAULTS, c.get("_source_") or c.get("name") or "config")
    if not c.get("name"):
        raise ConfigError("fusion config has no name")
    if c.kind != "fusion":
        raise ConfigError(f"{c.name}: kind must be fusion (got {c.kind!r})")
    variant = c.fusion.variant
    if variant not in FUSION_VARIANTS:
        raise ConfigError(f"{c.name}: fusion.variant must be one of {', '.join(FUSION_VARIANTS)} (got {variant!r})")
    FUSION_VARIANTS[variant].check_config(c.fusion, c.name)
    if c.fusion.head not in HEADS:
        raise ConfigError(f"{c.name}: fusion.head must be one of {', '.join(HEADS)} (got {c.fusion.head!r})")
    if c.train.early_stopping not in ("inner", "fixed"):
        raise ConfigError(f"{c.name}: train.early_stopping must be inner or fixed")
    if c.train.monitor not in ("macro_f1", "loss"):
        raise ConfigError(f"{c.name}: train.monitor must be macro_f1 or loss")
    if c.fusion.align not in ("test_anchor", "none"):
        raise ConfigError(f"{c.name}: fusion.align must be test_anchor or none (got {c.fusion.align!r})")
    if c.test_input not in ("per_fold", "averaged"):
        raise ConfigError(f"{c.name}: test_input must be per_fold or averaged")
    return c


# ------------------------------------------------------------------------------------------ networks
FUSION_VARIANTS: dict[str, type["FusionNet"]] = {}


def register_fusion(name: str):
    """Class decorator: make a fusion network available as ``fusion.variant: <name>``."""
    def deco(cls):
        FUSION_VARIANTS[name] = cls
        cls.variant = name
        return cls
    return deco


def create_fusion(fcfg, in_dims: dict[str, int], num_classes: int = NUM_CLASSES) -> "FusionNet":
    """Build the network of ``fcfg.variant`` for inputs of the given widths (experiment -> D)."""
    return FUSION_VARIANTS[fcfg["variant"]](fcfg, in_dims, num_classes)


def combine(xs: list[torch.Tensor], op: str) -> torch.Tensor:
    """Fuse [B, D_i] tensors: concat -> [B, sum D_i]; add / average -> [B, D] (equal widths)."""
    if op == "concat":
        return torch.cat(xs, dim=1)
    s = torch.stack(xs, dim=0).sum(dim=0)
    return s if op == "add" else s / len(xs)


def fused_width(widths: list[int], op: str) -> int:
    return sum(widths) if op == "concat" else widths[0]


def make_head(fcfg, width: int, num_classes: int) -> nn.Module:
    head = fcfg["head"]
    p = float(fcfg.get("dropout") or 0.0)
    if head == "linear":
        return nn.Linear(width, num_classes)
    if head == "dropout":
        return nn.Sequential(nn.Dropout(p), nn.Linear(width, num_classes))
    hidden = int(fcfg.get("hidden") or 256)
    return nn.Sequential(nn.Dropout(p), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class FusionNet(nn.Module):
    """Base: ``forward(batch)`` returns ``{"logits", "features"}`` (+ ``"loss"`` when batch has labels)."""

    variant = ""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("class_weight", torch.ones(num_classes))

    @classmethod
    def check_config(cls, fcfg, name: str) -> None:
        raise NotImplementedError

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        """(experiment, "embeddings" | "logits") pairs the network reads, in a fixed order."""
        raise NotImplementedError

    def fuse(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, features = self.fuse(batch)                      # [B, C], [B, F] or None
        out = {"logits": logits, "features": features}
        if "label" in batch:
            out["loss"] = F.cross_entropy(logits, batch["label"], weight=self.class_weight)
        return out


def _check_ops(name: str, **ops) -> None:
    for key, (value, allowed) in ops.items():
        if value not in allowed:
            raise ConfigError(f"{name}: fusion.{key} must be one of {', '.join(allowed)} (got {value!r})")


@register_fusion("hierarchical")
class HierarchicalFusion(FusionNet):
    """Two-level intermediate fusion of thesis Fig. 6.1 (Fig. 6.3 with the ``mlp`` head)."""

    def __init__(self, fcfg, in_dims: dict[str, int], num_classes: int = NUM_CLASSES,
                 groups: list[list[str]] | None = None, level1_op: str | None = None,
                 level2_op: str | None = None):
        super().__init__(num_classes)
        self.groups = [list(g) for g in (groups if groups is not None else fcfg["text_groups"])]
        self.image = fcfg.get("image")
        self.op1 = level1_op or fcfg["level1_op"]
        self.op2 = level2_op or fcfg["level2_op"]
        width = int(fcfg.get("width") or 0)
        # Level 1: per backbone, title and description. A set ``width`` projects every embedding to it
        # (a cheap bottleneck on wide inputs); otherwise only add/average over unequal widths projects.
        self.l1_proj = nn.ModuleList()
        group_widths = []
        for g in self.groups:
            dims = [int(in_dims[m]) for m in g]
            if width:
                target = [width] * len(dims)
            elif self.op1 != "concat" and len(set(dims)) > 1:
                target = [max(dims)] * len(dims)
            else:
                target = dims
            self.l1_proj.append(nn.ModuleList(
                nn.Linear(d, t) if d != t or width else nn.Identity() for d, t in zip(dims, target)))
            group_widths.append(fused_width(target, self.op1))
        # Level 2: the common width is the first backbone's level-1 width (the thesis's d2 = 768).
        common = group_widths[0]
        self.l2_proj = nn.ModuleList(
            nn.Linear(w, common) if self.op2 != "concat" and w != common else nn.Identity()
            for w in group_widths)
        level2_widths = [common if self.op2 != "concat" else w for w in group_widths]
        if self.image:
            # kernel-1 Conv1d over a length-1 sequence: the thesis's projection of the image vector.
            self.image_proj = nn.Conv1d(int(in_dims[self.image]), common, kernel_size=1)
            level2_widths.append(common)
        else:
            self.image_proj = None
        self.out_width = fused_width(level2_widths, self.op2)
        self.head = make_head(fcfg, self.out_width, num_classes)

    @classmethod
    def check_config(cls, fcfg, name: str) -> None:
        groups = fcfg.get("text_groups") or []
        if not groups or not all(isinstance(g, (list, tuple)) and g for g in groups):
            raise ConfigError(f"{name}: fusion.text_groups must list, per text backbone, its title and "
                              "description experiments")
        _check_ops(name, level1_op=(fcfg["level1_op"], OPS), level2_op=(fcfg["level2_op"], OPS))

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        names = [m for g in fcfg["text_groups"] for m in g] + ([fcfg["image"]] if fcfg.get("image") else [])
        return [(n, "embeddings") for n in names]

    def fuse(self, batch):
        level1 = []
        for g, projs in zip(self.groups, self.l1_proj):
            level1.append(combine([p(batch[m]) for m, p in zip(g, projs)], self.op1))   # [B, W_g]
        level2 = [p(x) for p, x in zip(self.l2_proj, level1)]
        if self.image_proj is not None:
            # Conv1d with kernel 1 on [B, D_img, 1] is x @ W.T + b; computed as that because CPU conv1d
            # on a length-1 sequence is ~7x slower than the matmul (identical result and parameters).
            w = self.image_proj.weight.squeeze(-1)                                    # [W, D_img]
            level2.append(F.linear(batch[self.image], w, self.image_proj.bias))       # [B, W]
        fused = combine(level2, self.op2)                                              # [B, F]
        return self.head(fused), fused


@register_fusion("baseline")
class BaselineFusion(HierarchicalFusion):
    """Verma et al. (2020): the title + description text model(s) fused once with the image."""

    def __init__(self, fcfg, in_dims: dict[str, int], num_classes: int = NUM_CLASSES):
        # A one-member level 1 is the identity, so the baseline is the hierarchy with singleton groups.
        super().__init__(fcfg, in_dims, num_classes, groups=[[t] for t in fcfg["text"]],
                         level1_op="concat", level2_op=fcfg["op"])

    @classmethod
    def check_config(cls, fcfg, name: str) -> None:
        if not fcfg.get("text"):
            raise ConfigError(f"{name}: fusion.text must name the text experiment(s) on the title + "
                              "description field")
        _check_ops(name, op=(fcfg["op"], OPS))

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        names = list(fcfg["text"]) + ([fcfg["image"]] if fcfg.get("image") else [])
        return [(n, "embeddings") for n in names]


@register_fusion("late")
class LateFusion(FusionNet):
    """Decision-level fusion of the models' class probabilities."""

    def __init__(self, fcfg, in_dims: dict[str, int], num_classes: int = NUM_CLASSES):
        super().__init__(num_classes)
        self.names = list(fcfg["inputs"])
        self.op = fcfg["op"]
        self.space = fcfg.get("space", "logprob")
        m = len(self.names)
        if self.op == "weighted":
            # prob: softmax weights, a convex mix. logprob: softplus weights, free in scale, so they also
            # act as a temperature; initialised to the plain mean of log-probabilities.
            init = 0.0 if self.space == "prob" else float(np.log(np.expm1(1.0 / m)))
            self.raw = nn.Parameter(torch.full((m,), init))
        else:
            self.raw = None

    @classmethod
    def check_config(cls, fcfg, name: str) -> None:
        if not fcfg.get("inputs"):
            raise ConfigError(f"{name}: fusion.inputs must name the experiments to late-fuse")
        _check_ops(name, op=(fcfg["op"], ("average", "weighted")),
                   space=(fcfg.get("space", "logprob"), ("prob", "logprob")))

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        return [(n, "logits") for n in fcfg["inputs"]]

    def weights(self) -> torch.Tensor:
        m = len(self.names)
        if self.raw is None:
            return torch.full((m,), 1.0 / m)
        return torch.softmax(self.raw, 0) if self.space == "prob" else F.softplus(self.raw)

    def fuse(self, batch):
        logp = torch.stack([F.log_softmax(batch[n], dim=1) for n in self.names], dim=0)   # [M, B, C]
        w = self.weights().view(-1, 1, 1)
        if self.op == "average" or self.space == "prob":
            # log of the weighted mean of probabilities, computed stably in log space
            out = torch.logsumexp(logp + torch.log(w), dim=0)
        else:
            out = (w * logp).sum(dim=0)
        return out, None


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


def train_net(net: FusionNet, X: dict[str, torch.Tensor], y: np.ndarray, fit_idx: np.ndarray,
              val_idx: np.ndarray | None, tcfg, seed: int, progress: bool = False) -> dict:
    """Minibatch AdamW on ``fit_idx``; with ``val_idx``, keep the best epoch and stop on patience."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:        # e.g. late fusion by plain averaging: nothing to learn
        return {"epochs_run": 0, "best_epoch": 0}
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay))
    yt = torch.from_numpy(np.array(y, dtype=np.int64))
    fit_t = torch.from_numpy(fit_idx)
    bs = int(tcfg.batch_size)
    best, best_state, best_epoch, bad = -np.inf, None, 0, 0
    epochs = int(tcfg.epochs)
    bar = tqdm(range(1, epochs + 1), desc="epochs", leave=False, disable=not progress)
    epoch = 0
    for epoch in bar:
        net.train()
        perm = fit_t[torch.randperm(len(fit_t), generator=gen)]
        for b in range(0, len(perm), bs):
            idx = perm[b:b + bs]
            batch = {k: v[idx] for k, v in X.items()}
            batch["label"] = yt[idx]
            loss = net(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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
    net_cls = FUSION_VARIANTS[fcfg.variant]
    specs = net_cls.inputs(fcfg)
    fold_vec, y = data.fold, data.y
    train_idx = np.flatnonzero(fold_vec != fold)
    pred_idx = np.flatnonzero(fold_vec == fold)
    seed = int(tcfg.seed) + fold
    if tcfg.early_stopping == "inner":
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
    net = create_fusion(fcfg, in_dims, NUM_CLASSES)
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
    specs = FUSION_VARIANTS[cfg.fusion.variant].inputs(cfg.fusion)
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
