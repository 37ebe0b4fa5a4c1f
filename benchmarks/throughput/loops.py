"""The naive loop of public notebooks, the variant runner (time budget, best variant, partial
saves) and the profiler, shared by the text and image benchmarks.
"""
from __future__ import annotations

import time
import traceback

import torch
import torch.nn.functional as F

from throughput.common import free_memory, log, sync


def naive_train_steps(model, loader, device, warmup: int, steps: int, batch_to_dict) -> dict:
    """The public-notebook loop: blocking copies, fp32, plain AdamW, ``loss.item()`` every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    model.train()
    it = iter(loader)
    running, times = 0.0, None
    for k in range(warmup + steps):
        if k == warmup:
            sync(device)
            times = time.perf_counter()
        batch = batch_to_dict(next(it), device)
        out = model(batch)
        loss = F.cross_entropy(out["logits"], batch["labels"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()  # the per-step host-device sync
    sync(device)
    dt = time.perf_counter() - times
    del opt
    return {"seconds": dt, "steps": steps}


def naive_predict(model, loader, device, steps: int, batch_to_dict) -> dict:
    model.eval()
    n, outs = 0, []
    it = iter(loader)
    with torch.no_grad():
        batch = batch_to_dict(next(it), device)  # warm-up batch
        model(batch)["logits"].cpu()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            try:
                raw = next(it)
            except StopIteration:
                break
            batch = batch_to_dict(raw, device)
            outs.append(model(batch)["logits"].cpu().numpy())  # per-batch copy back, as notebooks do
            n += int(batch["labels"].shape[0])
    sync(device)
    dt = time.perf_counter() - t0
    return {"samples": n, "seconds": dt, "samples_per_s": n / dt if dt > 0 else float("nan")}


def timed_epochs(engine, loader, device) -> tuple[float, dict, float]:
    """An untimed warm-up epoch (CUDA context, cuBLAS handles, cudnn autotuning, allocator, workers,
    compilation), then a timed one. Returns (warm-up seconds, the timed epoch's stats, its seconds)."""
    t_w = time.perf_counter()
    engine.train_epoch(loader, epoch=0)
    sync(device)
    warm_s = time.perf_counter() - t_w
    t0 = time.perf_counter()
    stats = engine.train_epoch(loader, epoch=1)
    sync(device)
    return warm_s, stats, time.perf_counter() - t0


def run_variants(args, name: str, res: dict, variants, same_batch: bool = False) -> None:
    """Run each ``(name, compiles, run)`` variant into ``res["variants"]`` within the time budget; a
    failure is recorded and the next one runs. After each: pick ``project``, save what is measured."""
    res["variants"] = {}
    for vname, compiles, run in variants:
        if over_budget(args, res, compiles):
            log(f"    {vname:22s}: skipped (time budget)")
            continue
        try:
            res["variants"][vname] = run()
        except Exception:
            tb = traceback.format_exc()
            log(f"    {vname:22s}: FAILED\n{tb}")
            res["variants"][vname] = {"error": tb}
        free_memory()
        pick_best(res, same_batch=same_batch)
        partial_save(args, name, res)


def over_budget(args, res: dict, compiles: bool) -> bool:
    """Skip a variant once the time budget is spent (never the first of a benchmark); a compiled
    variant (a minute or more of compilation) once less than ``--compile-reserve`` seconds are left."""
    if not args.time_budget or not res["variants"]:
        return False
    left = args.time_budget - (time.perf_counter() - args._t_start)
    return left < (args.compile_reserve if compiles else 0.0)


def pick_best(res: dict, same_batch: bool = False) -> None:
    """``project`` = the fastest variant so far (``same_batch``: among those at the benchmark's batch);
    speedups against the naive loop."""
    ok = {k: v for k, v in res.get("variants", {}).items() if "train_samples_per_s" in v}
    for v in ok.values():
        v["speedup_train"] = v["train_samples_per_s"] / res["naive"]["train_samples_per_s"]
    if same_batch:
        ok = {k: v for k, v in ok.items() if v.get("batch", res["batch"]) == res["batch"]}
    if not ok:
        return
    naive = res["naive"]
    best = max(ok, key=lambda k: ok[k]["train_samples_per_s"])
    res["project"] = dict(ok[best], variant=best)
    res["speedup_train"] = res["project"]["speedup_train"]
    res["speedup_eval"] = res["project"]["eval_samples_per_s"] / naive["eval_samples_per_s"]


def partial_save(args, name: str, res: dict) -> None:
    """Write what is measured so far: a suite killed in a long variant keeps the earlier ones."""
    cb = getattr(args, "_partial", None)
    if cb is not None:
        cb(name, res)


def profile_steps(engine, loader, steps: int, device) -> dict:
    """torch.profiler over ``steps`` training steps: where the wall time goes (host vs GPU kernels)."""
    import itertools
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        engine.train_epoch(itertools.islice(iter(loader), steps), epoch=99)
        sync(device)
        wall = time.perf_counter() - t0
    ka = prof.key_averages()

    def dev_self(e):
        for a in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(e, a):
                return float(getattr(e, a))
        return 0.0
    gpu_us = sum(dev_self(e) for e in ka)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = ka.table(sort_by=sort, row_limit=14, max_name_column_width=48)
    cpu_table = ka.table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=48)
    out = {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps, "gpu_kernel_ms_per_step": gpu_us / 1e3 / steps,
           "gpu_busy_frac": (gpu_us / 1e6) / wall if wall > 0 else float("nan"),
           "n_kernel_launches_per_step": sum(int(getattr(e, "count", 0)) for e in ka
                                             if "cudaLaunchKernel" in e.key or "cuLaunchKernel" in e.key) / steps}
    log(f"    profile : {out['wall_ms_per_step']:.1f} ms/step wall, {out['gpu_kernel_ms_per_step']:.1f} ms/step "
        f"GPU kernels (busy {100 * out['gpu_busy_frac']:.0f}%), {out['n_kernel_launches_per_step']:.0f} launches/step")
    log(table)
    log(cpu_table)
    out["table"] = table
    out["cpu_table"] = cpu_table
    return out
