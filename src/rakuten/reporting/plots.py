"""Figures of the leaderboard: our OOF scores beside the published anchors; a confusion matrix.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, so nothing depends on (or
changes) pyplot's global backend and it runs on machines without a display.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from rakuten.artifacts import atomic_path

METRIC_LABEL = {"macro_f1": "macro-F1", "weighted_f1": "weighted-F1", "accuracy": "accuracy"}
KIND_COLOR = {"unimodal": "#4C72B0", "fusion": "#55A868", "stack": "#C44E52"}
ANCHOR_COLOR = "#BBBBBB"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def plot_leaderboard(rows: list[dict], anchors: list, path: str | Path, metric: str = "macro_f1") -> Path:
    """Horizontal bars, best on top: ours coloured by kind, anchors grey and hatched ("other data")."""
    items = [(r["experiment"], float(r[metric]), KIND_COLOR.get(r.get("kind"), "#8172B2"), False) for r in rows]
    items += [(f"{a.name} [{a.table}; other data]", float(a.value), ANCHOR_COLOR, True)
              for a in anchors if a.metric == metric]
    items.sort(key=lambda t: t[1])
    fig = Figure(figsize=(10, 0.32 * len(items) + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(items))
    for i, (label, value, color, is_anchor) in enumerate(items):
        ax.barh(i, value, color=color, hatch="//" if is_anchor else None,
                edgecolor="#666666" if is_anchor else color)
        ax.text(value + 0.005, i, f"{value:.3f}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([t[0] for t in items], fontsize=7)
    for tick, item in zip(ax.get_yticklabels(), items):
        if not item[3]:
            tick.set_fontweight("bold")
    ax.set_xlim(0, 1.08)
    ax.set_xlabel(f"{METRIC_LABEL.get(metric, metric)} (ours: out-of-fold over all folds)")
    ax.set_title("Our experiments (bold) beside published figures (grey, hatched: measured on other data "
                 "and splits)", fontsize=9)
    handles = [Patch(color=c, label=k) for k, c in KIND_COLOR.items() if any(r.get("kind") == k for r in rows)]
    handles.append(Patch(facecolor=ANCHOR_COLOR, hatch="//", edgecolor="#666666", label="published (other data)"))
    ax.legend(handles=handles, loc="lower right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, Path(path))


def row_normalised_confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1.0)
    support = cm.sum(1, keepdims=True)
    return np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)


def plot_confusion(y_true, y_pred, codes: list[int], path: str | Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: true prdtypecode; each row sums to 1 = recall view)."""
    cm = row_normalised_confusion(y_true, y_pred, len(codes))
    fig = Figure(figsize=(11, 10))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(codes)))
    ax.set_yticks(range(len(codes)))
    ax.set_xticklabels([str(c) for c in codes], rotation=90, fontsize=7)
    ax.set_yticklabels([str(c) for c in codes], fontsize=7)
    ax.set_xlabel("predicted prdtypecode")
    ax.set_ylabel("true prdtypecode")
    for i in range(len(codes)):
        for j in range(len(codes)):
            if cm[i, j] >= 0.05:
                ax.text(j, i, f"{cm[i, j]:.2f}"[1:] if cm[i, j] < 1 else "1", ha="center", va="center",
                        fontsize=5, color="white" if cm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))
