"""Figures of the leaderboard: our OOF scores beside the published anchors; a confusion matrix; the
per-epoch learning curves of the torch models; per-class F1 of the submitted model beside its best input.
Classes are labelled ``code - name`` (``rakuten.labels.code_label``).

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
from rakuten.labels import code_label

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
    """Confusion matrix [num_classes, num_classes] (rows: true class, columns: predicted) with each row
    divided by its support; a class with no true row gets a zero row."""
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
    ax.set_xticklabels([code_label(c) for c in codes], rotation=90, fontsize=7)
    ax.set_yticklabels([code_label(c) for c in codes], fontsize=7)
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


def plot_learning_curves(curves: dict, path: str | Path) -> Path:
    """Per-epoch curves of each torch experiment: training loss (left) and the macro-F1 that training
    monitors (right: ``val_macro_f1``, on the inner early-stopping split of the training folds, or
    fold k's rows under fixed epochs), one line per fold, a circle on the epoch each fold kept. ``curves``: experiment -> {fold:
    its ``summary_fold<k>.csv`` as a DataFrame with ``epoch``, ``train_loss``, ``val_macro_f1``, ``best``}."""
    names = sorted(curves)
    fig = Figure(figsize=(10, 2.6 * max(1, len(names)) + 0.6))
    for i, name in enumerate(names):
        ax_loss = fig.add_subplot(len(names), 2, 2 * i + 1)
        ax_f1 = fig.add_subplot(len(names), 2, 2 * i + 2)
        for fold, df in sorted(curves[name].items()):
            line, = ax_loss.plot(df["epoch"], df["train_loss"], marker=".", label=f"fold {fold}")
            ax_f1.plot(df["epoch"], df["val_macro_f1"], marker=".", color=line.get_color(), label=f"fold {fold}")
            kept = df[df["best"].astype(str).str.lower() == "true"]
            if len(kept):
                last = kept.iloc[-1]   # the last improvement is the checkpoint the fold predicts with
                ax_f1.plot([last["epoch"]], [last["val_macro_f1"]], "o", color=line.get_color(), markersize=7,
                           markerfacecolor="none")
        ax_loss.set_title(f"{name}: training loss", fontsize=9)
        ax_f1.set_title(f"{name}: monitored macro-F1 (circle: epoch kept)", fontsize=9)
        for ax in (ax_loss, ax_f1):
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax_f1.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_per_class_f1(codes: list[int], f1: np.ndarray, name: str, ref_f1: np.ndarray, ref_name: str,
                      path: str | Path, title: str) -> Path:
    """Per-class F1 of ``name`` (dark) beside ``ref_name`` (light), one pair of bars per class,
    classes ordered by ``name``'s F1 (weakest on top); the difference is written at the right."""
    f1, ref_f1 = np.asarray(f1, float), np.asarray(ref_f1, float)
    order = np.argsort(-f1, kind="stable")
    fig = Figure(figsize=(9, 0.3 * len(codes) + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(codes))
    ax.barh(y + 0.2, f1[order], height=0.4, color="#C44E52", label=name)
    ax.barh(y - 0.2, ref_f1[order], height=0.4, color="#8DA0CB", label=ref_name)
    for i, j in enumerate(order):
        d = f1[j] - ref_f1[j]
        ax.text(1.02, i, f"{d:+.3f}", va="center", fontsize=6, color="#2F7D32" if d > 0 else "#B22222" if d < 0 else "#555555")
    ax.set_yticks(y)
    ax.set_yticklabels([code_label(codes[j]) for j in order], fontsize=7)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("out-of-fold F1 per class (right: difference)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2)   # below: no bar hidden
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, Path(path))
