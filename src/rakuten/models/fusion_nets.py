"""The fusion networks of ``kind: fusion`` experiments, registered like every other model.

``fusion.variant`` names one of them (``FUSION_MODELS`` maps it to its registry name):
``hierarchical`` (thesis Fig. 6.1), ``baseline`` (Verma et al. 2020; thesis Fig. 6.2) and ``late``
(decision-level fusion of class probabilities). Training, alignment and the K-fold loop live in
``rakuten.second_level.fusion``; this module only defines the networks.

    net = create_model("fusion_hierarchical", cfg=fusion_cfg, in_dims={"title": 768, ...}, num_classes=27)

Each network's ``forward(batch)`` returns ``logits`` [B, C] and ``features`` (the fused vector, or None
for late fusion), plus ``loss`` when the batch carries ``labels``.
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

# fusion.variant -> registry name
FUSION_MODELS = {"hierarchical": "fusion_hierarchical", "baseline": "fusion_baseline", "late": "fusion_late"}


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
    """Base: ``forward(batch)`` returns ``{"logits", "features"}`` (+ ``"loss"`` when the batch has
    ``labels``, the batch key of the whole project)."""

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
        if "labels" in batch:
            out["loss"] = F.cross_entropy(logits, batch["labels"], weight=self.class_weight)
        return out


def _check_ops(name: str, **ops) -> None:
    for key, (value, allowed) in ops.items():
        if value not in allowed:
            raise ConfigError(f"{name}: fusion.{key} must be one of {', '.join(allowed)} (got {value!r})")


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
        if not fcfg.get("text"):
            raise ConfigError(f"{name}: fusion.text must name the text experiment(s) on the title + "
                              "description field")
        _check_ops(name, op=(fcfg["op"], OPS))

    @classmethod
    def inputs(cls, fcfg) -> list[tuple[str, str]]:
        names = list(fcfg["text"]) + ([fcfg["image"]] if fcfg.get("image") else [])
        return [(n, "embeddings") for n in names]


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
