"""Image benchmarks: the input pipeline alone (JPEG decode vs the uint8 cache) and the naive loop
vs the project's Engine with GPU augmentation, one run per ``--image-variants`` entry.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from rakuten.data.image_cache import (CachedImageDataset, GpuImageAugment, IMAGENET_MEAN, IMAGENET_STD,
                                      build_image_cache, load_image_cache, make_image_batch_transform)
from rakuten.training.engine import Engine, make_optimizer, seed_everything

from throughput.common import N_CLASSES, free_memory, log, sync
from throughput.flops import count_step_flops, mfu
from throughput.loops import naive_predict, naive_train_steps, run_variants, timed_epochs
from throughput.models import ImageClassifier


def _write_synthetic_jpeg(task) -> int:
    """A product-like photo: white background, a shaded object with texture, some 'label' stripes."""
    path, seed, side = task
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.full((side, side, 3), 255.0, dtype=np.float32)
    cx, cy = rng.uniform(0.35, 0.65, 2)
    rx, ry = rng.uniform(0.15, 0.4, 2)
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
    colour = rng.uniform(20, 235, 3).astype(np.float32)
    shade = (xx * rng.uniform(-90, 90) + yy * rng.uniform(-90, 90))[..., None]
    obj = colour + shade + rng.normal(0, 8, (side, side, 3)).astype(np.float32)
    stripes = (np.sin(yy * rng.uniform(40, 120)) > 0.6)[..., None] * rng.uniform(-60, 60, 3)
    obj = obj + stripes
    img[mask] = obj[mask]
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return os.path.getsize(path)


class ImageData:
    """Synthetic JPEGs and their cache, made once per process and shared by the image benchmarks."""

    def __init__(self, root: Path, n: int, cache_size: int, workers: int, side: int):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.paths = [str(root / f"{i:06d}.jpg") for i in range(n)]
        tasks = [(p, 1000 + i, side) for i, p in enumerate(self.paths)]
        t0 = time.perf_counter()
        if workers > 0 and n > 64:
            with mp.get_context().Pool(workers) as pool:
                sizes = pool.map(_write_synthetic_jpeg, tasks, chunksize=16)
        else:
            sizes = [_write_synthetic_jpeg(t) for t in tasks]
        self.gen_seconds = time.perf_counter() - t0
        self.mean_jpeg_kb = float(np.mean(sizes)) / 1024
        self.labels = np.random.default_rng(0).integers(0, N_CLASSES, size=n)
        self.cache_file = root / f"cache_{cache_size}.npy"
        t0 = time.perf_counter()
        counts = build_image_cache(self.paths, cache_size, self.cache_file, workers=workers, progress=False)
        self.cache_seconds = time.perf_counter() - t0
        self.cache_counts = counts
        self.cache = load_image_cache(self.cache_file, paths=self.paths, size=cache_size)


class NaiveJpegDataset(Dataset):
    """Decode + augment with PIL each time, as torchvision ``RandomResizedCrop``/flip/rotation/
    ``ToTensor``/``Normalize`` pipelines do (implemented with PIL so torchvision is not needed).
    ``length`` may exceed the number of files: rows wrap around."""

    def __init__(self, paths, labels, size: int, train: bool = True, length: int | None = None):
        self.paths, self.labels, self.size, self.train = paths, labels, size, train
        self.length = length or len(paths)
        self.mean = np.asarray(IMAGENET_MEAN, np.float32)
        self.std = np.asarray(IMAGENET_STD, np.float32)

    def __len__(self):
        return self.length

    def _crop_box(self, w, h):
        area = w * h
        for _ in range(10):
            target = area * random.uniform(0.6, 1.0)
            ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
                return (x0, y0, x0 + cw, y0 + ch)
        return (0, 0, w, h)

    def __getitem__(self, i):
        j = i % len(self.paths)
        with Image.open(self.paths[j]) as im:
            im = im.convert("RGB")
            if self.train:
                im = im.resize((self.size, self.size), Image.BILINEAR, box=self._crop_box(*im.size))
                if random.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                im = im.rotate(random.uniform(-15, 15), Image.BILINEAR, fillcolor=(255, 255, 255))
            else:
                im = im.resize((self.size, self.size), Image.BILINEAR)
            arr = (np.asarray(im, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()), int(self.labels[j])


def image_batch(raw, device):
    x, y = raw
    return {"image": x.to(device), "labels": y.to(device)}


def _loader_rate(loader, warmup: int, steps: int, device=None, augment=None) -> dict:
    """Images/s of a DataLoader alone (optionally + copy to ``device`` and GPU augmentation)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    if device is not None:
        sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        b = next(it)
        x = b["image"] if isinstance(b, dict) else b[0]
        if device is not None:
            x = x.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, True)
        n += int(x.shape[0])
    if device is not None:
        sync(device)
    dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, "images": n, "seconds": dt}


def _get_image_data(args, state: dict) -> ImageData:
    if "image_data" not in state:
        root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="rakuten_bench_"))
        state["image_root"] = root
        t0 = time.perf_counter()
        state["image_data"] = ImageData(root / "jpeg", args.n_images, args.cache_size, args.workers,
                                        args.image_side)
        d = state["image_data"]
        log(f"    synthetic data: {len(d.paths)} JPEGs ({d.mean_jpeg_kb:.1f} KB mean) in {d.gen_seconds:.1f}s; "
            f"cache {args.cache_size}px built in {d.cache_seconds:.1f}s "
            f"({len(d.paths) / d.cache_seconds:.0f} img/s, {args.workers} workers) "
            f"[{time.perf_counter() - t0:.1f}s]")
    return state["image_data"]


def bench_image_loader(args, device: torch.device, peak: dict, state: dict) -> dict:
    d = _get_image_data(args, state)
    bs, w = args.batch_image, args.workers
    pin = device.type == "cuda"
    steps, warm = args.loader_steps, 2
    need = (steps + warm) * bs
    naive_ds = NaiveJpegDataset(d.paths, d.labels, args.image_size, train=True, length=need)
    naive_loader = DataLoader(naive_ds, batch_size=bs, shuffle=True, num_workers=w, pin_memory=pin, drop_last=True)
    r_naive = _loader_rate(naive_loader, warm, steps)
    del naive_loader
    idx = np.resize(np.random.default_rng(0).permutation(len(d.paths)), need)
    cached_ds = Subset(CachedImageDataset(d.cache, d.labels), idx.tolist())
    cached_loader = DataLoader(cached_ds, batch_size=bs, shuffle=True, num_workers=w, pin_memory=pin,
                               drop_last=True, persistent_workers=w > 0)
    r_cached = _loader_rate(cached_loader, warm, steps)
    aug = GpuImageAugment(args.image_size, channels_last=True)
    r_dev = _loader_rate(cached_loader, warm, steps, device=device, augment=aug)
    del cached_loader
    res = {
        "batch": bs, "workers": w, "image_size": args.image_size, "cache_size": args.cache_size,
        "mean_jpeg_kb": d.mean_jpeg_kb,
        "cache_build_images_per_s": len(d.paths) / d.cache_seconds, "cache_counts": d.cache_counts,
        "naive_jpeg_images_per_s": r_naive["images_per_s"],
        "cached_uint8_images_per_s": r_cached["images_per_s"],
        "cached_plus_device_augment_images_per_s": r_dev["images_per_s"],
        "speedup": r_cached["images_per_s"] / r_naive["images_per_s"],
        "cpu_count": os.cpu_count(),
    }
    log(f"    loader  : naive JPEG+PIL {r_naive['images_per_s']:9.1f} img/s | cached uint8 "
        f"{r_cached['images_per_s']:9.1f} img/s | cached + {device.type} augment {r_dev['images_per_s']:9.1f} img/s "
        f"({w} workers)")
    return res


def bench_image(name: str, args, device: torch.device, peak: dict, state: dict) -> dict:
    d = _get_image_data(args, state)
    bs, w, size = args.batch_image, args.workers, args.image_size
    pin = device.type == "cuda"
    res: dict = {"image_size": size, "cache_size": args.cache_size, "batch": bs, "workers": w}
    free_memory()

    # ---- naive: JPEG decode + PIL augmentation in workers, fp32, NCHW
    seed_everything(0, deterministic=args.deterministic)
    model = ImageClassifier(name).to(device)
    res["params"] = sum(p.numel() for p in model.parameters())
    fb = 2
    fl_batch = {"image": torch.randn(fb, 3, size, size, device=device),
                "labels": torch.zeros(fb, dtype=torch.long, device=device)}
    flops_img = count_step_flops(model, fl_batch) / fb
    res["flops"] = {"per_image_train_step": flops_img}
    need = (args.warmup_steps + args.naive_image_steps) * bs
    loader = DataLoader(NaiveJpegDataset(d.paths, d.labels, size, train=True, length=need), batch_size=bs,
                        shuffle=True, num_workers=w, pin_memory=pin, drop_last=True)
    r = naive_train_steps(model, loader, device, args.warmup_steps, args.naive_image_steps, image_batch)
    sps = args.naive_image_steps * bs / r["seconds"]
    naive = {"precision": "fp32", "memory_format": "contiguous", "train_samples_per_s": sps,
             "train_seconds": r["seconds"], "train_steps": args.naive_image_steps,
             **{f"train_{k}": v for k, v in mfu(args.naive_image_steps * bs * flops_img, r["seconds"], peak).items()}}
    del loader
    n_eval = (args.eval_steps + 1) * 2 * bs
    ev_loader = DataLoader(NaiveJpegDataset(d.paths, d.labels, size, train=False, length=n_eval),
                           batch_size=2 * bs, shuffle=False, num_workers=w, pin_memory=pin)
    ev = naive_predict(model, ev_loader, device, args.eval_steps, image_batch)
    naive["eval_samples_per_s"] = ev["samples_per_s"]
    res["naive"] = naive
    log(f"    naive   : {sps:9.1f} train img/s  {ev['samples_per_s']:9.1f} eval img/s  (fp32, JPEG decode per epoch)")
    del model, ev_loader
    free_memory()

    # ---- project: uint8 cache, GPU augmentation, bf16, channels_last, fused AdamW; one run per variant
    res["cache_build_images_per_s"] = len(d.paths) / d.cache_seconds
    variants = [(_image_variant_name(vb, vmode), bool(vmode),
                 lambda vb=vb, vmode=vmode: _project_image_variant(name, args, device, peak, d, flops_img, vb, vmode))
                for vb, vmode in args.image_variants]
    run_variants(args, name, res, variants)
    if "project" not in res:
        raise RuntimeError(f"every project variant failed: {list(res['variants'])}")
    return res


def _image_variant_name(bs: int, mode) -> str:
    return f"b{bs}" + (f"-{mode}" if mode else "")


def _project_image_variant(name, args, device, peak, d, flops_img, bs: int, mode) -> dict:
    """The project image loop at batch ``bs``; ``mode``: None (eager) or a torch.compile mode."""
    w, size = args.workers, args.image_size
    pin = device.type == "cuda"
    t_v = time.perf_counter()
    seed_everything(0, deterministic=args.deterministic)
    model = ImageClassifier(name).to(device)
    opt = make_optimizer(model, "adamw", lr=3e-4, weight_decay=0.01)
    aug = GpuImageAugment(size, channels_last=True)
    engine = Engine(model, nn.CrossEntropyLoss(), opt, device=device, precision=args.precision, clip_grad=1.0,
                    batch_transform=make_image_batch_transform(aug), compile=mode or False,
                    channels_last=True, progress=False)
    # the same number of images per epoch whatever the batch (at least 10 steps)
    steps = max(10 if not args.tiny else 1, args.project_image_steps * args.batch_image // bs)
    n_train = steps * bs
    idx = np.resize(np.random.default_rng(1).permutation(len(d.paths)), n_train)
    ds = Subset(CachedImageDataset(d.cache, d.labels), idx.tolist())
    loader = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=w, pin_memory=pin, drop_last=True,
                        persistent_workers=w > 0)
    warm_s, stats, dt = timed_epochs(engine, loader, device)
    sps_p = stats["samples"] / dt
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    proj = {"precision": str(engine.amp_dtype).replace("torch.", "") if engine.amp_dtype else "fp32",
            "memory_format": "channels_last", "fused_adamw": bool(opt.defaults.get("fused")), "batch": bs,
            "compile": engine.compile_mode if engine._compiled else False, "train_samples_per_s": sps_p,
            "train_seconds": dt, "train_steps": stats["steps"], "ms_per_step": 1e3 * dt / max(1, stats["steps"]),
            "warmup_epoch_seconds": warm_s, "max_memory_gb": mem,
            **{f"train_{k}": v for k, v in mfu(stats["samples"] * flops_img, dt, peak).items()}}
    del loader
    eval_idx = list(range(min(len(d.paths), args.eval_steps * 2 * args.batch_image)))
    ev_ds = Subset(CachedImageDataset(d.cache, d.labels), eval_idx)
    ev_loader = DataLoader(ev_ds, batch_size=2 * bs, shuffle=False, num_workers=w, pin_memory=pin)
    if engine._compiled:
        engine.predict(ev_loader)  # every eval shape compiles once, untimed
    else:
        engine.predict(DataLoader(Subset(ev_ds, range(min(len(ev_ds), 2 * bs))), batch_size=2 * bs))
    sync(device)
    t0 = time.perf_counter()
    engine.predict(ev_loader)
    sync(device)
    proj["eval_samples_per_s"] = len(ev_ds) / (time.perf_counter() - t0)
    proj["variant_seconds"] = time.perf_counter() - t_v
    vname = _image_variant_name(bs, mode)
    log(f"    {vname:22s}: {sps_p:9.1f} train img/s ({proj['ms_per_step']:.1f} ms/step, MFU "
        f"{100 * proj['train_mfu_vs_measured']:.1f}%)  {proj['eval_samples_per_s']:9.1f} eval img/s  "
        f"({proj['precision']}, channels_last, cache + GPU augment; warm-up {warm_s:.0f}s, "
        f"variant {proj['variant_seconds']:.0f}s" + (f", peak {mem:.1f} GB)" if mem else ")"))
    del engine, model, opt, ev_loader
    return proj
