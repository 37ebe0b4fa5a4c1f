"""The training engine every model in the project runs through, and the pieces it is built from.

Contract with the models (see ``rakuten.models``): ``model(batch) -> {"logits": [B, C], "embeddings":
[B, D], ...}``; the loss lives outside the model, ``criterion(logits, batch["labels"])``. Batches are
dicts of tensors (plus anything else, e.g. ``"index"``); text batches carry ``input_ids`` /
``attention_mask``, image batches a ``uint8`` ``image`` that ``batch_transform`` turns into the model's
normalised float input on the device.

Speed rules the engine keeps, because each one was measured to matter (``benchmarks/``):

* no host-device synchronisation per step: the loss is summed into a device tensor and read once per
  epoch (the progress bar reads it at most every ``log_every`` steps);
  ``loss.item()`` every step stalls the CPU until the GPU drains, so the next batch is never queued
  while the current one runs;
* host-to-device copies are ``non_blocking`` (pair them with ``pin_memory=True`` loaders) and images
  travel as ``uint8`` (4x fewer bytes than float32); augmentation happens on the device;
* bf16 autocast on GPUs that have it (no GradScaler needed), fused AdamW, ``set_to_none`` gradients.

Only torch, numpy and (optionally) tqdm are imported: the benchmark runs this module on GPU machines
that have nothing else installed.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import warnings
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)
# Notes said once per process: a GPU preset run on CPU (``--backbones reduced``) builds one engine per fold.
_NOTED: set = set()

try:  # tqdm is a nicety, never a requirement
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised only where tqdm is absent
    _tqdm = None

BatchTransform = Callable[[dict, bool], dict]


# ------------------------------------------------------------------------------------------ helpers
def progress_bar(iterable: Iterable, enabled: bool = True, **kwargs):
    """A tqdm bar when tqdm is installed and ``enabled``; otherwise a no-op wrapper with the same API."""
    if enabled and _tqdm is not None:
        return _tqdm(iterable, **kwargs)
    return _NullBar(iterable)


class _NullBar:
    def __init__(self, iterable):
        self._it = iterable

    def __iter__(self):
        return iter(self._it)

    def set_postfix(self, *args, **kwargs):
        """Do nothing (tqdm's API)."""
        pass

    def update(self, n=1):
        """Do nothing (tqdm's API)."""
        pass

    def close(self):
        """Do nothing (tqdm's API)."""
        pass


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally make torch deterministic.

    ``deterministic=True`` asks torch for deterministic kernels (``warn_only`` so an op without one
    warns instead of failing a long run), sets ``CUBLAS_WORKSPACE_CONFIG`` (needed by cuBLAS for
    reproducible GEMMs; it must be set before the first cuBLAS call, so call this early) and turns
    cudnn autotuning off (the autotuner may pick different algorithms run to run).
    ``deterministic=False`` turns autotuning on: faster convolutions, run-to-run noise in the weights.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA device if there is one, else CPU; anything else is passed to torch."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


def autocast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32.

    ``auto``: bf16 on CUDA cards that support it (Ampere and newer), fp16 on older CUDA cards (the
    engine then adds a GradScaler), fp32 on CPU (CPU bf16 autocast is slower than fp32 on most hosts).
    ``bf16`` / ``fp16`` / ``fp32`` force the choice.
    """
    device = torch.device(device)
    precision = (precision or "auto").lower()
    if precision in ("fp32", "float32", "32", "no", "none"):
        return None
    if precision in ("bf16", "bfloat16"):
        return torch.bfloat16
    if precision in ("fp16", "float16", "16", "half"):
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r} (auto, bf16, fp16, fp32)")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (also inside dicts/lists/tuples) to ``device`` with ``non_blocking``; others untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------- optimiser & schedule
def param_groups(model: nn.Module, weight_decay: float, head_lr: float | None = None) -> list[dict]:
    """Weights with decay; biases and every 1-d parameter (norm scales) without.

    Decaying a LayerNorm/BatchNorm scale pulls it towards 0, i.e. towards switching the layer off;
    decaying a bias has no regularising effect worth having. Frozen parameters are left out.
    ``head_lr`` (``train.head_lr``): for a model that names its pretrained part
    (``backbone_parameters``), everything else (the new head, randomly initialised) gets its own
    groups at this learning rate, the backbone keeping the optimiser's. Without it, two groups.
    """
    backbone = set()
    if head_lr is not None and hasattr(model, "backbone_parameters"):
        backbone = {id(p) for p in model.backbone_parameters()}
    buckets: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = bool(backbone) and id(p) not in backbone
        decay = not (p.ndim <= 1 or name.endswith(".bias"))
        buckets.setdefault((head, decay), []).append(p)
    groups = []
    for head in (False, True):
        for decay in (True, False):
            if buckets.get((head, decay)):
                g = {"params": buckets[(head, decay)], "weight_decay": weight_decay if decay else 0.0}
                if head:
                    g["lr"] = float(head_lr)
                groups.append(g)
    return groups


def make_optimizer(model: nn.Module, name: str = "adamw", lr: float = 3e-5, weight_decay: float = 0.01,
                   betas: tuple[float, float] = (0.9, 0.999), fused: bool | str = "auto",
                   device: torch.device | str | None = None, eps: float = 1e-8,
                   momentum: float = 0.9, head_lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW (default) or SGD over :func:`param_groups` (``head_lr``: the new head's learning rate).

    ``fused="auto"`` uses the single-kernel fused AdamW when the model trains on CUDA: ``device`` if
    given, else the parameters' device, else (parameters still on the CPU of a CUDA machine) CUDA,
    since ``Engine(device="auto")`` is about to move them there. ``Engine`` moves the model in place,
    so the parameter objects the optimiser holds stay the same.
    """
    groups = param_groups(model, weight_decay, head_lr)
    if device is None:
        p0 = next((p for g in groups for p in g["params"]), None)
        device = p0.device if p0 is not None else torch.device("cpu")
        if device.type == "cpu" and torch.cuda.is_available():
            device = torch.device("cuda")
    device = torch.device(device)
    if fused == "auto":
        fused = device.type == "cuda"
    name = name.lower()
    if name == "adamw":
        kwargs = dict(lr=lr, betas=tuple(betas), eps=eps)
        if fused:
            try:
                return torch.optim.AdamW(groups, fused=True, **kwargs)
            except (TypeError, RuntimeError) as e:  # old torch, or params not on a supported device
                warnings.warn(f"fused AdamW unavailable ({e}); using the foreach implementation")
        return torch.optim.AdamW(groups, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer {name!r} (adamw, sgd)")


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1,
                   kind: str = "linear", min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimiser-step schedule: linear warm-up over ``warmup_ratio * total_steps`` steps, then
    ``linear`` decay to ``min_lr_ratio``, ``cosine`` decay to it, or ``constant``.

    ``total_steps`` counts optimiser steps (batches / grad_accum), which is what :class:`Engine` steps.
    """
    total_steps = max(1, int(total_steps))
    warmup = int(round(total_steps * warmup_ratio))
    kind = kind.lower()
    if kind not in ("linear", "cosine", "constant"):
        raise ValueError(f"unknown schedule {kind!r} (linear, cosine, constant)")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _make_grad_scaler():
    try:
        return torch.amp.GradScaler("cuda")
    except (AttributeError, TypeError):  # torch < 2.3
        return torch.cuda.amp.GradScaler()


def _set_epoch(loader, epoch: int) -> None:
    """Call ``set_epoch`` on whatever in the loader has one (sampler, batch sampler, dataset)."""
    seen = set()
    candidates = [getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None),
                  getattr(loader, "dataset", None)]
    for obj in candidates:
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compile_mode(compile: bool | str | None) -> str | None:
    """``compile`` option -> a torch.compile mode name, or ``None`` for eager."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    mode = str(compile).lower()
    if mode in ("false", "no", "none", "off", "0", ""):
        return None
    if mode in ("true", "yes", "on", "1"):
        return "default"
    if mode not in _COMPILE_MODES:
        raise ValueError(f"unknown compile mode {compile!r} (false, true, {', '.join(_COMPILE_MODES)})")
    return mode


def _safe_len(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


# ------------------------------------------------------------------------------------------- engine
class Engine:
    """Trains and predicts with one model; owns mixed precision, accumulation, clipping and devices.

    Parameters
    ----------
    model, criterion
        ``model(batch) -> {"logits", "embeddings", ...}``; ``criterion(logits, labels) -> scalar``.
    optimizer, scheduler
        ``None`` for a predict-only engine. The scheduler is stepped once per optimiser step.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``; the model is moved there.
    precision
        See :func:`autocast_dtype`. fp16 gets a GradScaler; bf16 and fp32 need none.
    grad_accum
        Micro-batches per optimiser step. The loss of each micro-batch is divided by the number of
        micro-batches in its group, so a short last group at the end of an epoch still averages right.
    clip_grad
        Max global grad norm (``None``/``0`` = no clipping; the norm is still not read on the host).
    batch_transform
        ``f(batch, train) -> batch``, run on the device after the transfer (GPU augmentation and
        normalisation of images, see ``rakuten.data.image_cache.make_image_batch_transform``).
    compile
        ``torch.compile`` the forward on CUDA; on CPU, or where compilation fails, a warning and eager.
        ``True``/``"default"``: inductor kernels (fused elementwise ops, fewer launches).
        ``"reduce-overhead"``: the same plus CUDA graphs, which replay a whole forward/backward as one
        launch: the cure when small batches leave the GPU waiting on the host to launch kernels. A
        graph is recorded per input shape, so pair it with bucketed padding (few distinct lengths,
        ``pad_to_multiple_of``) and fixed-size batches. ``"max-autotune-no-cudagraphs"`` also works.
    compile_dynamic
        ``torch.compile(dynamic=...)``: ``None`` (default) lets dynamo mark a dimension dynamic after
        its first recompile; ``False`` compiles one static graph per shape (fastest kernels, one
        compile per bucket); ``True`` compiles once for all shapes.
    channels_last
        Model (and any 4-d ``"image"`` in the batch) in NHWC memory format: faster convs under bf16.
    progress, log_every
        tqdm bar; its running loss is read from the device every ``log_every`` steps (a sync) only.
    """

    def __init__(self, model: nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer | None = None,
                 scheduler=None, device: str | torch.device = "auto", precision: str = "auto",
                 grad_accum: int = 1, clip_grad: float | None = 1.0,
                 batch_transform: BatchTransform | None = None, compile: bool | str = False,
                 channels_last: bool = False, progress: bool = True, log_every: int = 50,
                 compile_dynamic: bool | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.amp_dtype = autocast_dtype(self.device, precision)
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            warnings.warn("fp16 autocast is only supported on CUDA here; using fp32")
            self.amp_dtype = None
        if self.amp_dtype is None and self.device.type != "cuda" and ("precision", self.device.type) not in _NOTED:
            _NOTED.add(("precision", self.device.type))
            log.info("precision %s on %s: fp32 (mixed precision is for CUDA cards)", precision, self.device.type)
        self.scaler = _make_grad_scaler() if (self.amp_dtype is torch.float16 and optimizer is not None) else None
        self.grad_accum = max(1, int(grad_accum))
        self.clip_grad = clip_grad if clip_grad else None
        self.batch_transform = batch_transform
        self.progress = progress
        self.log_every = max(1, int(log_every))
        self.global_step = 0          # optimiser steps taken, across epochs (resumable)
        self.last_predict_index: np.ndarray | None = None
        self._forward_model: Callable = self.model
        self._compiled = False
        self._compile_checked = False  # the first compiled call succeeded
        self.compile_mode = _compile_mode(compile)
        self.compile_dynamic = compile_dynamic
        # CUDA-graph modes reuse the graph's output buffers on the next replay: the engine marks each
        # step's start and copies what it keeps (predict) so nothing is overwritten under it.
        self._cudagraphs = False
        if self.compile_mode is not None:
            self._try_compile()

    # ------------------------------------------------------------------ internals
    def _try_compile(self) -> None:
        if self.device.type != "cuda":
            warnings.warn(f"compile=True ignored on {self.device.type}: torch.compile pays off on CUDA only")
            return
        if not hasattr(torch, "compile"):
            warnings.warn("compile=True ignored: this torch has no torch.compile")
            return
        try:
            # dynamic=None lets dynamo mark the sequence dimension dynamic after the first recompile,
            # which dynamic padding (a new length almost every batch) needs.
            mode = None if self.compile_mode == "default" else self.compile_mode
            self._forward_model = torch.compile(self.model, mode=mode, dynamic=self.compile_dynamic)
            self._compiled = True
            self._cudagraphs = mode in ("reduce-overhead", "max-autotune")
        except Exception as e:  # unsupported python/platform
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); running eager")

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _forward(self, batch: dict) -> dict:
        if not self._compiled:
            return self.model(batch)
        if self._cudagraphs:
            # a new step: the previous replay's outputs may now be overwritten (they were consumed)
            mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
            if mark is not None:
                mark()
        if self._compile_checked:
            return self._forward_model(batch)
        try:
            out = self._forward_model(batch)
            self._compile_checked = True
            return out
        except Exception as e:  # compilation happens lazily, on the first call: fall back once
            if isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            # a genuine model error raises again from the eager call below, so nothing is hidden
            warnings.warn(f"torch.compile failed at run time ({type(e).__name__}: {e}); running eager")
            self._compiled = self._cudagraphs = False
            self._forward_model = self.model
            return self.model(batch)

    def _prepare(self, batch: dict, train: bool) -> dict:
        batch = move_to_device(batch, self.device)
        if self.batch_transform is not None:
            batch = self.batch_transform(batch, train)
        if self.channels_last:
            img = batch.get("image")
            if isinstance(img, torch.Tensor) and img.ndim == 4 and img.is_floating_point():
                batch["image"] = img.contiguous(memory_format=torch.channels_last)
        return batch

    def _optimizer_step(self) -> torch.Tensor | None:
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_step += 1
        return grad_norm

    # ------------------------------------------------------------------ public API
    def train_epoch(self, loader: Iterable, epoch: int) -> dict:
        """One pass over ``loader``; returns ``loss`` (sample-weighted mean), ``samples``, ``steps``
        (optimiser steps), ``lr`` (after the last step), ``grad_norm`` (mean pre-clip norm, NaN
        without clipping), ``nonfinite`` (batches whose loss was NaN/inf; they are left out of the
        mean but their gradients were applied: the caller decides whether to stop), ``time_s`` and
        ``samples_per_s``.

        ``epoch`` seeds the samplers' order (``set_epoch``), so resuming at an epoch reproduces it.
        """
        if self.optimizer is None:
            raise RuntimeError("train_epoch needs an optimizer")
        _set_epoch(loader, epoch)
        self.model.train()
        dev = self.device
        loss_sum = torch.zeros((), device=dev, dtype=torch.float32)
        norm_sum = torch.zeros((), device=dev, dtype=torch.float32)
        nonfinite = torch.zeros((), device=dev, dtype=torch.int64)
        good = torch.zeros((), device=dev, dtype=torch.int64)  # samples in batches with a finite loss
        n_samples, n_norms, steps_before = 0, 0, self.global_step
        n_batches = _safe_len(loader)
        accum = self.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        bar = progress_bar(loader, self.progress, total=n_batches, desc=f"epoch {epoch}", leave=False,
                           dynamic_ncols=True)
        t0 = time.perf_counter()
        micro = 0  # micro-batches in the current accumulation group
        i = -1
        for i, batch in enumerate(bar):
            batch = self._prepare(batch, train=True)
            labels = batch["labels"]
            bs = int(labels.shape[0])
            # the divisor of this micro-batch's loss: the size of its accumulation group
            group_start = (i // accum) * accum
            group_size = accum if n_batches is None else min(accum, n_batches - group_start)
            with self._autocast():
                out = self._forward(batch)
                loss = self.criterion(out["logits"], labels)
            scaled = loss / group_size
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            with torch.no_grad():
                lf = loss.detach().float()
                finite = torch.isfinite(lf)
                loss_sum += torch.where(finite, lf * bs, torch.zeros_like(lf))
                nonfinite += (~finite).long()
                good += finite.long() * bs
            n_samples += bs
            micro += 1
            if micro == group_size:
                gn = self._optimizer_step()
                micro = 0
                if gn is not None:
                    norm_sum += gn.detach().float()
                    n_norms += 1
            if self.progress and (i + 1) % self.log_every == 0:
                bar.set_postfix(loss=f"{(loss_sum / good.clamp(min=1)).item():.4f}")  # one sync / N steps
        if micro > 0:  # unknown-length loader: flush the last partial group
            gn = self._optimizer_step()
            if gn is not None:
                norm_sum += gn.detach().float()
                n_norms += 1
        bar.close()
        # the only host-device synchronisation of the epoch
        stats = torch.stack([loss_sum, norm_sum, nonfinite.float(), good.float()]).tolist()
        loss_total, norm_total, n_bad, n_good = stats[0], stats[1], int(stats[2]), int(stats[3])
        elapsed = time.perf_counter() - t0
        mean_loss = loss_total / n_good if n_good else float("nan")
        if n_bad:
            warnings.warn(f"epoch {epoch}: {n_bad} batch(es) had a non-finite loss")
        return {
            "epoch": epoch,
            "loss": mean_loss,
            "samples": n_samples,
            "batches": i + 1,
            "steps": self.global_step - steps_before,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "grad_norm": norm_total / n_norms if n_norms else float("nan"),
            "nonfinite": n_bad,
            "time_s": elapsed,
            "samples_per_s": n_samples / elapsed if elapsed > 0 else float("nan"),
        }

    def predict(self, loader: Iterable) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and embeddings (float32 numpy) for every row ``loader`` yields.

        Order: when every batch carries ``"index"`` (the datasets in this project yield their row
        number), rows are returned sorted by it, i.e. in dataset order, whatever order the batches
        came in (length-sorted eval batches, see ``LengthGroupedBatchSampler(shuffle=False)``); the
        sorted indices are kept in ``self.last_predict_index``. Without ``"index"``, rows come in
        loader order. A repeated index (a padded distributed sampler, say) is an error.
        ``embeddings`` is ``None`` when the model returns none. Results are gathered on the device
        and copied to the host once.
        """
        self.model.eval()
        logits, embs, index = [], [], []
        has_emb = has_index = None
        with torch.inference_mode():
            for batch in progress_bar(loader, self.progress, total=_safe_len(loader), desc="predict",
                                      leave=False, dynamic_ncols=True):
                batch = self._prepare(batch, train=False)
                with self._autocast():
                    out = self._forward(batch)
                # copy=True: under CUDA graphs the outputs live in buffers the next replay reuses
                logits.append(out["logits"].to(torch.float32, copy=self._cudagraphs))
                e = out.get("embeddings")
                has_emb = (e is not None) if has_emb is None else has_emb and e is not None
                if e is not None:
                    embs.append(e.to(torch.float32, copy=self._cudagraphs))
                idx = batch.get("index") if isinstance(batch, Mapping) else None
                has_index = (idx is not None) if has_index is None else has_index and idx is not None
                if idx is not None:
                    index.append(torch.as_tensor(idx).reshape(-1))
        if not logits:
            self.last_predict_index = np.zeros(0, dtype=np.int64)
            return np.zeros((0, 0), np.float32), None
        lg = torch.cat(logits).cpu().numpy()
        em = torch.cat(embs).cpu().numpy() if has_emb else None
        self.last_predict_index = None
        if has_index:
            idx = torch.cat(index).to("cpu", torch.int64).numpy()
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
            if len(idx) > 1 and np.any(idx[1:] == idx[:-1]):
                raise ValueError("predict: a row index appears twice in the loader (padded sampler?)")
            lg = lg[order]
            em = em[order] if em is not None else None
            self.last_predict_index = idx
        return np.ascontiguousarray(lg, dtype=np.float32), (
            None if em is None else np.ascontiguousarray(em, dtype=np.float32))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, include_rng: bool = True) -> dict:
        """Model, optimiser, scheduler, GradScaler (if used), step counter and, by default, the RNG
        states (python, numpy, torch CPU and CUDA), so that a resumed run draws the same dropout masks
        and augmentations as an uninterrupted one."""
        state = {"model": self.model.state_dict(), "global_step": self.global_step}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if include_rng:
            state["rng"] = {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            }
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore what ``state_dict`` saved: the model (``strict``), the optimiser, scheduler and GradScaler
        where both the engine and ``state`` have them, the step counter, and the RNG states when saved (a
        CUDA state that does not fit this machine's GPUs only warns)."""
        self.model.load_state_dict(state["model"], strict=strict)
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state.get("global_step", 0))
        rng = state.get("rng")
        if rng:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(torch.as_tensor(rng["torch"], dtype=torch.uint8).cpu())
            if rng.get("cuda") is not None and torch.cuda.is_available():
                try:
                    torch.cuda.set_rng_state_all(rng["cuda"])
                except (RuntimeError, IndexError):  # checkpoint from a machine with more GPUs
                    warnings.warn("could not restore the CUDA RNG state; continuing with the current one")
