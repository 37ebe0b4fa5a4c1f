"""The one prediction path of the torch members: a fold's run predicts its fold and test rows with
it, and a bundle (``rakuten.bundle``) predicts new products with it, so the two cannot drift apart.

``predict_rows`` runs a model over rows of an ``Inputs`` (tokens, decoded images or frozen
features), once per test-time view, and averages the views; ``eval_engine`` is the inference-only
engine a frozen backbone or a loaded fold model runs in. The scikit-learn members' counterpart is
``training.classic.predict_classic`` / ``predict_logreg_head``; the stacker's is
``second_level.stacker.stack_inputs`` + ``stack_predict``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from rakuten.errors import RakutenError
from rakuten.training.engine import Engine
from rakuten.training.inputs import Inputs, RowSubset
from rakuten.training.loaders import make_loader


def tta_views(cfg) -> list[str]:
    """The test-time views a config predicts through (``predict.tta``; ``identity`` alone by default)."""
    return list((cfg.get("predict") or {}).get("tta") or ["identity"])


def tta_predict(engine, loader_for_view, views) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and embeddings) averaged over the test-time ``views``; ``loader_for_view(v)`` yields
    the same rows, in the same order, as seen through view ``v``."""
    outs = [engine.predict(loader_for_view(v)) for v in views]
    logits = np.mean([o[0] for o in outs], axis=0).astype(np.float32)
    emb = None if any(o[1] is None for o in outs) else np.mean([o[1] for o in outs], axis=0).astype(np.float32)
    return logits, emb


def predict_rows(engine, cfg, inputs: Inputs, rows: np.ndarray, views: list[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits [n, C] float32, embeddings [n, D] or None) of ``engine``'s model on ``rows`` of
    ``inputs``, averaged over ``views`` (default: the config's ``predict.tta``), in row order.

    Eval batches are length-sorted when the inputs have token lengths (the engine restores the row
    order). A view is a dataset of its own for frozen features (``inputs.view_datasets``) and a batch
    transform of the images otherwise; the transform is set back to ``identity`` afterwards."""
    views = tta_views(cfg) if views is None else list(views)
    rows = np.asarray(rows)
    lengths = None if inputs.lengths is None else inputs.lengths[rows]
    transform = inputs.batch_transform if hasattr(inputs.batch_transform, "view") else None

    def loader(view: str):
        ds = inputs.dataset
        if inputs.view_datasets is not None:
            ds = inputs.view_datasets[view]
        elif view != "identity" and transform is None:
            raise RakutenError(f"{cfg.name}: predict.tta view {view!r} needs an image model")
        elif transform is not None:
            transform.view = view
        return make_loader(RowSubset(ds, rows, None), cfg, False, inputs.collate, lengths)[0]

    try:
        return tta_predict(engine, loader, views)
    finally:
        if transform is not None:
            transform.view = "identity"


def quantize_for_cpu(model):
    """Int8 dynamic quantisation of the Linear layers (``model.cpu_int8``), for frozen extraction on
    a CPU only: roughly halves CPU time for BERT-sized encoders; the e5 weights are 4-bit already, so
    little is lost."""
    # torch 2.14 warns that the quantized tensor API is deprecated; it is what runs here (measured
    # 2.7x faster), and the warning would repeat once per extraction.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


def eval_engine(model, cfg, inputs: Inputs | None, device, progress: bool = False) -> Engine:
    """An inference-only engine for ``model`` (no loss, no optimizer) with the inputs' batch
    transform and the config's precision and memory layout."""
    return Engine(model.to(device), None, device=device, precision=cfg.train.precision,
                  batch_transform=None if inputs is None else inputs.batch_transform,
                  channels_last=bool(cfg.train.channels_last), progress=progress)


__all__ = ["eval_engine", "predict_rows", "quantize_for_cpu", "tta_predict", "tta_views"]
