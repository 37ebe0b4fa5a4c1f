"""The fusion networks of ``kind: fusion`` experiments, registered like every other model.

``fusion.variant`` names one of them (``FUSION_MODELS`` maps it to its registry name):
``hierarchical`` (thesis Fig. 6.1), ``baseline`` (Verma et al. 2020; thesis Fig. 6.2) and ``late``
(decision-level fusion of class probabilities). Training, alignment and the K-fold loop live in
``rakuten.second_level.fusion``; this module only defines the networks.

    net = create_model("fusion_hierarchical", cfg=fusion_cfg, in_dims={"title": 768, ...}, num_classes=27)

Each network's ``forward(batch)`` returns ``logits`` [B, C] and ``features`` (the fused vector, or None
for late fusion); the loss is the training loop's (``second_level.fusion``).

Batch keys: an input's embeddings under its experiment name, its logits under ``<name>:logits``
(``<name>`` for late fusion, which reads nothing else), and, with ``fusion.masks``, whether the row has
that input's modality under ``<name>:present`` (float [B], 1 present, 0 missing title/description/image).

Options of the embedding fusions (hierarchical, baseline) that make them hold on small real data
(README, "Hierarchical fusion on real products"); all off by default, which is the thesis's network:
``normalize`` (l2 | layernorm: each standardised embedding scaled per row before fusing, so no input
dominates the fused vector by its width), ``masks`` (a missing input is left out of add/average and
is zero in concat; the residual path keeps every input's logits), ``modality_dropout`` (training only: each
present input is dropped from a row with this probability, never all of them) and ``residual`` (the
network's logits are the late fusion, a learned weighted mean of its inputs' log-probabilities, plus
the fused embedding's head, which starts at zero: the network starts as the late fusion of its
inputs' unimodal heads and learns a correction from the embeddings).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rakuten.config import ConfigError
from rakuten.labels import NUM_CLASSES
from rakuten.models.registry import register_model

OPS = ("add", "concat", "average")
HEADS = ("linear", "dropout", "mlp")
NORMS = ("none", "l2", "layernorm")

# fusion.variant -> registry name
FUSION_MODELS = {"hierarchical": "fusion_hierarchical", "baseline": "fusion_baseline", "late": "fusion_late"}


def combine(xs: list[torch.Tensor], op: str, present: torch.Tensor | None = None) -> torch.Tensor:
    """Fuse [B, D_i] tensors: concat -> [B, sum D_i]; add / average -> [B, D] (equal widths).

    ``present`` [B, N] (1 present, 0 missing): add sums the present inputs, average divides by their
    count (a row with none gives zeros), concat puts zeros where an input is missing."""
    if present is not None:
        xs = [x * present[:, i:i + 1] for i, x in enumerate(xs)]
    if op == "concat":
        return torch.cat(xs, dim=1)
    s = torch.stack(xs, dim=0).sum(dim=0)
    if op == "add":
        return s
    return s / len(xs) if present is None else s / present.sum(1, keepdim=True).clamp_min(1.0)


def fused_width(widths: list[int], op: str) -> int:
    """Width of ``combine``'s output over inputs of ``widths``: their sum for concat, else the first width
    (add and average take equal widths)."""
    return sum(widths) if op == "concat" else widths[0]


def make_head(fcfg, width: int, num_classes: int) -> nn.Module:
    """The classifier head of ``fcfg["head"]`` on [B, ``width``] inputs: ``linear``; ``dropout`` (dropout,
    linear); any other value the MLP (dropout, linear to ``hidden`` (default 256), ReLU, linear)."""
    head = fcfg["head"]
    p = float(fcfg.get("dropout") or 0.0)
    if head == "linear":
        return nn.Linear(width, num_classes)
    if head == "dropout":
        return nn.Sequential(nn.Dropout(p), nn.Linear(width, num_classes))
    hidden = int(fcfg.get("hidden") or 256)
    return nn.Sequential(nn.Dropout(p), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class FusionNet(nn.Module):
    """Base: ``forward(batch)`` returns ``{"logits", "features"}``; ``class_weight`` is the buffer the
    fusion's loss reads (saved with the weights)."""

    variant = ""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("class_weight", torch.ones(num_classes))

    @classmethod
    def check_config(cls, fcfg, name: str) -> None:
        """Check the ``fusion:`` section ``fcfg`` for this network; raises ``ConfigError`` naming experiment
        ``name``. Each network implements it."""
        raise NotImplementedError

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        """(experiment, "embeddings" | "logits") pairs the network reads, in a fixed order."""
        raise NotImplementedError

    @staticmethod
    def key(name: str, field: str) -> str:
        """The batch key of experiment ``name``'s ``field`` (embeddings under the name itself)."""
        return name if field == "embeddings" else f"{name}:{field}"

    def fuse(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits [B, C], features [B, F] or None)`` of a batch; each network implements it."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"logits": [B, C], "features": [B, F] or None}`` from ``fuse``; no loss (the training loop's)."""
        logits, features = self.fuse(batch)                      # [B, C], [B, F] or None
        # no loss here: the fusion's training loop owns it (second_level.fusion, weighted by class_weight)
        return {"logits": logits, "features": features}


def _check_ops(name: str, **ops) -> None:
    for key, (value, allowed) in ops.items():
        if value not in allowed:
            raise ConfigError(f"{name}: fusion.{key} must be one of {', '.join(allowed)} (got {value!r})")


def _check_embedding_options(fcfg, name: str) -> None:
    _check_ops(name, normalize=(fcfg.get("normalize") or "none", NORMS))
    p = float(fcfg.get("modality_dropout") or 0.0)
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"{name}: fusion.modality_dropout must be in [0, 1) (got {p})")


def _embedding_inputs(names: list[str], fcfg) -> list[tuple[str, str]]:
    """Every input's embeddings, then (``residual``) every input's logits."""
    out = [(n, "embeddings") for n in names]
    return out + ([(n, "logits") for n in names] if fcfg.get("residual") else [])


@register_model("fusion_hierarchical")
class HierarchicalFusion(FusionNet):
    """Two-level intermediate fusion of thesis Fig. 6.1 (Fig. 6.3 with the ``mlp`` head).

    ``cfg``: the ``fusion:`` section; ``in_dims``: input name -> embedding width."""

    variant = "hierarchical"

    def __init__(self, cfg, in_dims: dict[str, int], num_classes: int = NUM_CLASSES,
                 groups: list[list[str]] | None = None, level1_op: str | None = None,
                 level2_op: str | None = None):
        super().__init__(num_classes)
        fcfg = cfg
        self.groups = [list(g) for g in (groups if groups is not None else fcfg["text_groups"])]
        self.image = fcfg.get("image")
        self.op1 = level1_op or fcfg["level1_op"]
        self.op2 = level2_op or fcfg["level2_op"]
        self.normalize = fcfg.get("normalize") or "none"
        self.masks = bool(fcfg.get("masks"))
        self.modality_dropout = float(fcfg.get("modality_dropout") or 0.0)
        self.residual = bool(fcfg.get("residual"))
        self.names = [m for g in self.groups for m in g] + ([self.image] if self.image else [])
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
        if self.residual:
            # the late fusion's weights (as LateFusion's logprob space: the plain mean to start) and a
            # correction head that starts at zero, so training starts from the late fusion's logits
            m = len(self.names)
            self.raw = nn.Parameter(torch.full((m,), float(np.log(np.expm1(1.0 / m)))))
            last = self.head if isinstance(self.head, nn.Linear) else self.head[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        else:
            self.raw = None

    @classmethod
    def check_config(cls, fcfg, name: str) -> None:
        """Require a non-empty ``text_groups`` of non-empty groups, level ops among ``OPS`` and valid embedding
        options; raises ``ConfigError``."""
        groups = fcfg.get("text_groups") or []
        if not groups or not all(isinstance(g, (list, tuple)) and g for g in groups):
            raise ConfigError(f"{name}: fusion.text_groups must list, per text backbone, its title and "
                              "description experiments")
        _check_ops(name, level1_op=(fcfg["level1_op"], OPS), level2_op=(fcfg["level2_op"], OPS))
        _check_embedding_options(fcfg, name)

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        """The text groups' experiments, then the image's (if any): their embeddings, then with ``residual``
        their logits."""
        names = [m for g in fcfg["text_groups"] for m in g] + ([fcfg["image"]] if fcfg.get("image") else [])
        return _embedding_inputs(names, fcfg)

    def _presence(self, batch, b: int, device) -> torch.Tensor | None:
        """[B, N] presence of every input (masks, then modality dropout in training), or None."""
        drop = self.training and self.modality_dropout > 0
        if not self.masks and not drop:
            return None
        ones = torch.ones(b, device=device)
        p = torch.stack([batch.get(f"{m}:present", ones).float() if self.masks else ones
                         for m in self.names], dim=1)                                  # [B, N]
        if drop:
            kept = p * (torch.rand_like(p) >= self.modality_dropout).float()
            # never drop every input of a row: such a row keeps what it had
            p = torch.where(kept.sum(1, keepdim=True) > 0, kept, p)
        return p

    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize == "l2":
            return F.normalize(x, dim=1)
        if self.normalize == "layernorm":
            return F.layer_norm(x, x.shape[1:])
        return x

    def fuse(self, batch):
        """Level 1 combines each text group (``level1_op``), level 2 the groups and the projected image
        (``level2_op``); returns (the head's logits [B, C], plus the late fusion with ``residual``; the fused
        vector [B, ``out_width``])."""
        first = batch[self.names[0]]
        present = self._presence(batch, first.shape[0], first.device)                  # [B, N] or None
        col = {m: i for i, m in enumerate(self.names)}
        level1, group_present = [], []
        for g, projs in zip(self.groups, self.l1_proj):
            pg = None if present is None else present[:, [col[m] for m in g]]
            level1.append(combine([p(self._normed(batch[m])) for m, p in zip(g, projs)], self.op1, pg))   # [B, W_g]
            if pg is not None:
                group_present.append(pg.amax(1))
        level2 = [p(x) for p, x in zip(self.l2_proj, level1)]
        if self.image_proj is not None:
            # Conv1d with kernel 1 on [B, D_img, 1] is x @ W.T + b; computed as that because CPU conv1d
            # on a length-1 sequence is ~7x slower than the matmul (identical result and parameters).
            w = self.image_proj.weight.squeeze(-1)                                    # [W, D_img]
            level2.append(F.linear(self._normed(batch[self.image]), w, self.image_proj.bias))   # [B, W]
            if present is not None:
                group_present.append(present[:, col[self.image]])
        p2 = torch.stack(group_present, dim=1) if present is not None else None
        fused = combine(level2, self.op2, p2)                                          # [B, F]
        logits = self.head(fused)
        if self.raw is not None:
            logits = logits + self._late(batch)
        return logits, fused

    def _late(self, batch) -> torch.Tensor:
        """Weighted sum of every input's log-probabilities [B, C]. Not masked: a unimodal head on a
        missing input predicts the classes of products without it (on rakuten_images_real, leaving
        the text head out of rows without text took the mean from 0.3793 to 0.3768 OOF macro-F1)."""
        logp = torch.stack([F.log_softmax(batch[f"{m}:logits"], dim=1) for m in self.names], dim=1)   # [B, N, C]
        return (F.softplus(self.raw).view(1, -1, 1) * logp).sum(1)

    def late_weights(self) -> torch.Tensor | None:
        """The residual late fusion's per-input weights (None without ``residual``)."""
        return None if self.raw is None else F.softplus(self.raw)


@register_model("fusion_baseline")
class BaselineFusion(HierarchicalFusion):
    """Verma et al. (2020): the title + description text model(s) fused once with the image."""

    variant = "baseline"

    def __init__(self, cfg, in_dims: dict[str, int], num_classes: int = NUM_CLASSES):
        fcfg = cfg
        # A one-member level 1 is the identity, so the baseline is the hierarchy with singleton groups.
        super().__init__(fcfg, in_dims, num_classes, groups=[[t] for t in fcfg["text"]],
                         level1_op="concat", level2_op=fcfg["op"])

    @classmethod
    def check_config(cls, fcfg, name: str) -> None:
        """Require ``fusion.text``, ``op`` among ``OPS`` and valid embedding options; raises ``ConfigError``."""
        if not fcfg.get("text"):
            raise ConfigError(f"{name}: fusion.text must name the text experiment(s) on the title + "
                              "description field")
        _check_ops(name, op=(fcfg["op"], OPS))
        _check_embedding_options(fcfg, name)

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        """The text experiments, then the image's (if any): their embeddings, then with ``residual`` their logits."""
        names = list(fcfg["text"]) + ([fcfg["image"]] if fcfg.get("image") else [])
        return _embedding_inputs(names, fcfg)


@register_model("fusion_late")
class LateFusion(FusionNet):
    """Decision-level fusion of the models' class probabilities (``in_dims`` is not used: every input
    is a [B, C] logit matrix)."""

    variant = "late"

    def __init__(self, cfg, in_dims: dict[str, int] | None = None, num_classes: int = NUM_CLASSES):
        super().__init__(num_classes)
        fcfg = cfg
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
        """Require ``fusion.inputs``, ``op`` average or weighted and ``space`` prob or logprob; raises
        ``ConfigError``."""
        if not fcfg.get("inputs"):
            raise ConfigError(f"{name}: fusion.inputs must name the experiments to late-fuse")
        _check_ops(name, op=(fcfg["op"], ("average", "weighted")),
                   space=(fcfg.get("space", "logprob"), ("prob", "logprob")))

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        """Every input experiment's logits."""
        return [(n, "logits") for n in fcfg["inputs"]]

    @staticmethod
    def key(name: str, field: str) -> str:
        """The experiment's name itself, whatever ``field``."""
        return name     # late fusion reads logits only, under the experiment's name

    def weights(self) -> torch.Tensor:
        """Per-input weights [M]: equal (1/M) for ``average``; learned for ``weighted``, softmax (summing to 1)
        in ``prob`` space, softplus (free scale) in ``logprob`` space."""
        m = len(self.names)
        if self.raw is None:
            return torch.full((m,), 1.0 / m)
        return torch.softmax(self.raw, 0) if self.space == "prob" else F.softplus(self.raw)

    def fuse(self, batch):
        """``(log-scores [B, C], None)``: the log of the weighted mean of the inputs' probabilities (``average``,
        or ``prob`` space), else the weighted sum of their log-probabilities."""
        logp = torch.stack([F.log_softmax(batch[n], dim=1) for n in self.names], dim=0)   # [M, B, C]
        # the inputs' device: equal weights are made on the CPU (no parameter to follow the model)
        w = self.weights().to(logp.device).view(-1, 1, 1)
        if self.op == "average" or self.space == "prob":
            # log of the weighted mean of probabilities, computed stably in log space
            out = torch.logsumexp(logp + torch.log(w), dim=0)
        else:
            out = (w * logp).sum(dim=0)
        return out, None
