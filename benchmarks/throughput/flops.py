"""FLOPs of a training step, the card's measured matmul rate, and model FLOP utilisation.
"""
from __future__ import annotations

import re
import time

import torch
import torch.nn.functional as F
from torch import nn

from throughput.common import NOMINAL_BF16_TFLOPS, device_name, free_memory, sync


def count_step_flops(model: nn.Module, batch: dict) -> float:
    """FLOPs of one forward + backward (optimizer excluded) as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode
    model.train()
    with FlopCounterMode(display=False) as fc:
        out = model(batch)
        F.cross_entropy(out["logits"].float(), batch["labels"]).backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def measure_matmul_tflops(device: torch.device, tiny: bool) -> dict:
    """The card's achievable dense matmul rate (bf16 on CUDA, fp32 on CPU) and its nominal peak."""
    if device.type == "cuda":
        dtype, n, iters = torch.bfloat16, 8192, 100  # ~0.15 s of work on an H100: past clock ramp-up
    else:
        dtype, n, iters = torch.float32, 256 if tiny else 1024, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(10):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    dt = time.perf_counter() - t0
    measured = 2.0 * n ** 3 * iters / dt / 1e12
    name = device_name(device)
    nominal = None
    if device.type == "cuda":
        for pat, tf in NOMINAL_BF16_TFLOPS:
            if re.search(pat, name):
                nominal = tf
                break
    del a, b
    free_memory()
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "measured_tflops": measured,
            "nominal_bf16_tflops": nominal}


def mfu(flops: float, seconds: float, peak: dict) -> dict:
    rate = flops / seconds / 1e12 if seconds > 0 else float("nan")
    out = {"achieved_tflops": rate, "mfu_vs_measured": rate / peak["measured_tflops"]}
    if peak.get("nominal_bf16_tflops"):
        out["mfu_vs_nominal"] = rate / peak["nominal_bf16_tflops"]
    return out
