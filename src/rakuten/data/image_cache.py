"""Decode every product image once into a uint8 array on disk; augment on the GPU.

Why: decoding a 500x500 JPEG and resizing it with PIL costs a few milliseconds of CPU per image per
epoch, so a loader that decodes each epoch needs many cores to keep a modern GPU busy (the
benchmark measures it, ``benchmarks/``). Decoded once, an image is a 196 KB memory read (256 px);
the random resized crop, flip and rotation are then one batched ``grid_sample`` on the device.

Cache layout: ``<name>.npy`` holds ``uint8 [N, size, size, 3]`` (a normal ``.npy``, memory-mapped
when read) and ``<name>.npy.json`` (the sidecar) records the source paths (and their hash), the size,
the byte size of the ``.npy`` and which rows are blank. The ``.npy`` is written under a temporary name
and renamed; the sidecar is removed before that rename and written after it, so an interrupted build
leaves either the old complete pair or a cache without a sidecar, which :func:`load_image_cache`
refuses. Missing, empty, truncated or undecodable images become a mid-grey square (``BLANK_VALUE``,
close to the dataset mean, i.e. "no information" after normalisation) and are counted.

Only torch, numpy and PIL are needed (plus tqdm if installed).
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from concurrent.futures import ThreadPoolExecutor
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from rakuten.artifacts import ArtifactError, atomic_path, atomic_write_json, read_json
from rakuten.experiment import TTA_VIEWS

try:
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None

CACHE_VERSION = 1
BLANK_VALUE = 128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHUNK = 64  # images per task handed to a worker process


class ImageCacheError(ArtifactError):
    """The image cache is missing, truncated, stale or corrupt: rebuild it."""


def sidecar_path(cache_file: str | Path) -> Path:
    """The JSON sidecar of an image cache file (counts, blank rows, paths)."""
    cache_file = Path(cache_file)
    return cache_file.with_name(cache_file.name + ".json")


def paths_digest(paths: Sequence[str | os.PathLike | None]) -> str:
    """SHA-256 of the image paths a cache was built from, in order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(b"\x00" if p is None else os.fsencode(str(p)))
        h.update(b"\n")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- decoding
def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited over white (the catalogue's background)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits first
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = np.clip(arr * (255.0 / (hi if hi > 255 else 255.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")  # L, 1, P, CMYK (PIL undoes Adobe's inverted CMYK), YCbCr, F
    return im


def decode_image(path: str | os.PathLike | None, size: int) -> tuple[np.ndarray | None, str]:
    """``(uint8 [size, size, 3], "ok")`` or ``(None, "missing" | "unreadable")``.

    The whole image is resized to ``size`` x ``size`` (catalogue images are 500x500 squares); a
    non-square image is resized to fit and centred on white, so its aspect ratio is kept. JPEGs are
    decoded at a reduced DCT scale when much larger than ``size`` (``Image.draft``: a 5000x5000 photo
    is decoded at 625x625, 64x less work) and other formats shrink via ``reduce`` before resampling.
    EXIF orientation is applied.
    """
    if path is None or str(path) == "":
        return None, "missing"
    try:
        if os.stat(path).st_size == 0:
            return None, "missing"
    except OSError:
        return None, "missing"
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4, 1/8 scale when large enough
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            w, h = im.size
            if w == h:
                im = im.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
            else:
                scale = size / max(w, h)
                nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
                im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
                canvas = Image.new("RGB", (size, size), (255, 255, 255))
                canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
                im = canvas
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError, EOFError):
        return None, "unreadable"
    if arr.shape != (size, size, 3):
        return None, "unreadable"
    return arr, "ok"


# ---------------------------------------------------------------------------------------- building
_WORKER_ARRAY: np.ndarray | None = None


def _worker_init(tmp_file: str) -> None:
    global _WORKER_ARRAY
    _WORKER_ARRAY = np.load(tmp_file, mmap_mode="r+")


def _fill_rows(arr: np.ndarray, start: int, paths: Sequence, size: int) -> list[str]:
    statuses = []
    for k, p in enumerate(paths):
        img, status = decode_image(p, size)
        arr[start + k] = img if img is not None else BLANK_VALUE
        statuses.append(status)
    return statuses


def _worker_task(task: tuple[int, list, int]) -> tuple[int, list[str]]:
    start, paths, size = task
    return start, _fill_rows(_WORKER_ARRAY, start, paths, size)


def decode_images(paths: Sequence[str | os.PathLike | None], size: int) -> np.ndarray:
    """Decode ``paths`` (``None`` or "" = no image) in memory: uint8 ``[N, size, size, 3]``, the rows
    ``build_image_cache`` would write (blank = ``BLANK_VALUE``), for a few products at a time (a
    bundle's request) where a cache file per call would cost more than the decoding."""
    arr = np.empty((len(paths), int(size), int(size), 3), dtype=np.uint8)
    paths = [p or None for p in paths]
    threads = min(len(paths), os.cpu_count() or 1, 4)
    if threads < 2:
        _fill_rows(arr, 0, paths, int(size))
        return arr
    # PIL releases the GIL while it decodes and resizes, so threads share the cores without a process
    # pool's start-up; each image is decoded on its own, so the rows are those of one thread
    parts = [c for c in np.array_split(np.arange(len(paths)), threads) if len(c)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda c: _fill_rows(arr, int(c[0]), paths[int(c[0]):int(c[-1]) + 1], int(size)), parts))
    return arr


def build_image_cache(paths: Sequence[str | os.PathLike | None], size: int, cache_file: str | Path,
                      workers: int = 0, progress: bool = True) -> dict:
    """Decode ``paths`` (``None`` = no image) into ``cache_file`` (uint8 ``[N, size, size, 3]``).

    ``workers > 0`` decodes in a process pool; each worker writes its rows straight into the
    memory-mapped output, so no pixels travel through pipes. Returns ``{"n", "missing",
    "unreadable"}`` (also recorded in the sidecar, with the blank row numbers and the build time).
    """
    cache_file = Path(cache_file)
    paths = [None if p is None else str(p) for p in paths]
    n, size = len(paths), int(size)
    statuses: list[str] = [""] * n
    t0 = time.perf_counter()
    bar = _tqdm(total=n, desc=f"image cache {size}px", unit="img", dynamic_ncols=True) \
        if (progress and _tqdm is not None) else None
    with atomic_path(cache_file, suffix=".npy.tmp") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        tasks = [(s, paths[s:s + _CHUNK], size) for s in range(0, n, _CHUNK)]
        if workers and workers > 0 and n > _CHUNK:
            arr.flush()
            with mp.get_context().Pool(int(workers), initializer=_worker_init, initargs=(str(tmp),)) as pool:
                for start, st in pool.imap_unordered(_worker_task, tasks):
                    statuses[start:start + len(st)] = st
                    if bar is not None:
                        bar.update(len(st))
        else:
            for start, chunk, _ in tasks:
                st = _fill_rows(arr, start, chunk, size)
                statuses[start:start + len(st)] = st
                if bar is not None:
                    bar.update(len(st))
        arr.flush()
        del arr
        # the old sidecar must not outlive the old array: an interruption between the rename below
        # and the new sidecar must read as "no sidecar", never as "old sidecar with new pixels"
        sidecar_path(cache_file).unlink(missing_ok=True)
    if bar is not None:
        bar.close()
    status = np.asarray(statuses)
    counts = {"n": n, "missing": int((status == "missing").sum()),
              "unreadable": int((status == "unreadable").sum())}
    atomic_write_json(sidecar_path(cache_file), {
        "version": CACHE_VERSION,
        **counts,
        "size": size,
        "shape": [n, size, size, 3],
        "dtype": "uint8",
        "nbytes": cache_file.stat().st_size,
        "blank_value": BLANK_VALUE,
        "blank_index": np.flatnonzero(status != "ok").tolist(),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "paths_sha256": paths_digest(paths),
        "paths": paths,
    })
    return counts


def image_cache_info(cache_file: str | Path) -> dict:
    """The sidecar of ``cache_file`` (counts, blank rows, paths)."""
    try:
        return read_json(sidecar_path(cache_file))
    except ArtifactError as e:
        raise ImageCacheError(f"{e}: rebuild the image cache") from None


def load_image_cache(cache_file: str | Path, paths: Sequence | None = None, size: int | None = None) -> np.ndarray:
    """The cache as a read-only memory map ``uint8 [N, size, size, 3]``.

    Raises :class:`ImageCacheError` (rebuild) when the file or its sidecar is missing, when the file's
    byte size differs from the one recorded (truncated copy, interrupted build), when the array does
    not parse, or, if given, when ``paths`` / ``size`` differ from what the cache was built from.
    """
    cache_file = Path(cache_file)
    if not cache_file.exists():
        raise ImageCacheError(f"{cache_file}: missing; build it with build_image_cache")
    if not sidecar_path(cache_file).exists():
        raise ImageCacheError(f"{cache_file}: no sidecar {sidecar_path(cache_file).name} "
                              "(interrupted build?): rebuild the image cache")
    meta = image_cache_info(cache_file)
    actual = cache_file.stat().st_size
    if meta.get("version") != CACHE_VERSION or actual != meta.get("nbytes"):
        raise ImageCacheError(f"{cache_file}: {actual} bytes on disk, sidecar says {meta.get('nbytes')} "
                              f"(version {meta.get('version')}): truncated or stale; rebuild the image cache")
    try:
        arr = np.load(cache_file, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise ImageCacheError(f"{cache_file}: unreadable ({e}); rebuild the image cache") from None
    if arr.dtype != np.uint8 or list(arr.shape) != list(meta["shape"]):
        raise ImageCacheError(f"{cache_file}: array {arr.dtype}{list(arr.shape)} does not match the sidecar "
                              f"{meta['shape']}; rebuild the image cache")
    if size is not None and int(size) != int(meta["size"]):
        raise ImageCacheError(f"{cache_file}: built at {meta['size']} px, {size} px wanted; rebuild")
    if paths is not None and paths_digest([None if p is None else str(p) for p in paths]) != meta["paths_sha256"]:
        raise ImageCacheError(f"{cache_file}: built from other image paths (stale); rebuild the image cache")
    return arr


def ensure_image_cache(paths: Sequence, size: int, cache_file: str | Path, workers: int = 0,
                       progress: bool = True) -> np.ndarray:
    """Load the cache if it is valid for ``paths`` and ``size``; otherwise (re)build it first."""
    try:
        return load_image_cache(cache_file, paths=paths, size=size)
    except ImageCacheError:
        build_image_cache(paths, size, cache_file, workers=workers, progress=progress)
        return load_image_cache(cache_file, paths=paths, size=size)


# ------------------------------------------------------------------------------------------ dataset
class CachedImageDataset(torch.utils.data.Dataset):
    """Rows of an image cache: ``{"image": uint8 [3, S, S], "labels": int, "index": i}``.

    ``cache_array`` is the array from :func:`load_image_cache` (or a path to the cache). Items are a
    memory read and a transpose, so two loader workers feed thousands of images per second. A
    memory-mapped cache pickles as its file name (workers re-open it) rather than as its pixels.
    ``labels=None`` (test set) leaves the key out. ``index`` is the row in the cache; wrap in a
    ``Subset`` for a fold and ``Engine.predict`` still returns rows sorted by it.
    """

    def __init__(self, cache_array: np.ndarray | str | Path, labels: Sequence[int] | None = None):
        if isinstance(cache_array, (str, Path)):
            cache_array = load_image_cache(cache_array)
        self.array = cache_array
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(cache_array):
            raise ValueError(f"{len(self.labels)} labels for {len(cache_array)} images")

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        img = torch.from_numpy(np.ascontiguousarray(self.array[i].transpose(2, 0, 1)))
        item = {"image": img, "index": i}
        if self.labels is not None:
            item["labels"] = int(self.labels[i])
        return item

    def __getstate__(self):
        state = self.__dict__.copy()
        fname = getattr(self.array, "filename", None)
        if isinstance(self.array, np.memmap) and fname:
            state["array"] = None
            state["_mmap_file"] = str(fname)
        return state

    def __setstate__(self, state):
        fname = state.pop("_mmap_file", None)
        self.__dict__.update(state)
        if fname is not None:
            self.array = np.load(fname, mmap_mode="r")


# ------------------------------------------------------------------------------------- augmentation
class GpuImageAugment:
    """Batched augmentation + normalisation on whatever device the batch is on.

    ``augment(x, train)`` with ``x`` uint8 ``[B, 3, S, S]`` returns float32 ``[B, 3, out, out]``,
    normalised with ``mean`` / ``std`` (0-1 scale, e.g. ImageNet's), channels_last if asked.

    train: per-image random resized crop (area fraction in ``train_crop_scale``, aspect ratio in
    ``ratio``), horizontal flip and rotation up to ``max_rotate_deg``, composed into one affine
    matrix per image and applied with a single ``affine_grid`` + ``grid_sample`` over the batch;
    out-of-image pixels repeat the border (product photos sit on white backgrounds, so a rotated
    corner stays white instead of turning black).
    eval: the whole image resized to ``out`` (antialiased bilinear), no randomness.

    Randomness comes from torch's global RNG of the batch's device (seeded by ``seed_everything``),
    or from ``generator`` (which must live on that device).
    """

    def __init__(self, out_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 train_crop_scale: tuple[float, float] = (0.6, 1.0), hflip: bool = True,
                 max_rotate_deg: float = 15.0, channels_last: bool = True,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None):
        self.out_size = int(out_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        lo, hi = train_crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"train_crop_scale {train_crop_scale} must satisfy 0 < lo <= hi <= 1")
        self.crop_scale = (float(lo), float(hi))
        self.log_ratio = (float(np.log(ratio[0])), float(np.log(ratio[1])))
        self.hflip = bool(hflip)
        self.max_rotate = float(max_rotate_deg)
        self.channels_last = bool(channels_last)
        self.generator = generator
        self._consts: dict = {}

    def _rand(self, n: int, device) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator)

    def affine(self, batch_size: int, device) -> torch.Tensor:
        """Random ``[B, 2, 3]`` matrices mapping output to input coordinates (``affine_grid``'s)."""
        B = batch_size
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * self._rand(B, device)
        logr = self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * self._rand(B, device)
        r = torch.exp(logr)
        # half-extents of the crop in [-1, 1] coordinates; clamped rather than re-drawn (torchvision
        # retries up to 10 times), which slightly favours full-width crops at extreme ratios
        w = torch.sqrt(area * r).clamp(max=1.0)
        h = torch.sqrt(area / r).clamp(max=1.0)
        tx = (2 * self._rand(B, device) - 1) * (1 - w)
        ty = (2 * self._rand(B, device) - 1) * (1 - h)
        flip = torch.where(self._rand(B, device) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(B, device=device)
        ang = (2 * self._rand(B, device) - 1) * (self.max_rotate * np.pi / 180.0)
        c, s = torch.cos(ang), torch.sin(ang)
        theta = torch.stack([
            torch.stack([c * w * flip, -s * h, tx], dim=1),
            torch.stack([s * w * flip, c * h, ty], dim=1),
        ], dim=1)
        return theta

    def _constants(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # cached per device: building them from Python lists every batch would be a blocking
        # host-to-device copy, i.e. a stream synchronisation per step
        key = (str(device), dtype)
        if key not in self._consts:
            scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], dtype=dtype).view(1, 3, 1, 1)
            shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], dtype=dtype).view(1, 3, 1, 1)
            self._consts[key] = (scale.to(device), shift.to(device))
        return self._consts[key]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """0-255 float to ``(x / 255 - mean) / std`` in one fused multiply-add per channel."""
        scale, shift = self._constants(x.device, x.dtype)
        return torch.addcmul(shift, x, scale)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected [B, 3, H, W] images, got {tuple(x.shape)}")
        x = x.float()
        out = self.out_size
        if train:
            theta = self.affine(x.shape[0], x.device)
            grid = F.affine_grid(theta, [x.shape[0], 3, out, out], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        elif x.shape[-2:] != (out, out):
            x = F.interpolate(x, size=(out, out), mode="bilinear", align_corners=False, antialias=True)
        x = self.normalise(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


# Test-time views (``predict.tta``): deterministic, applied after the eval resize and normalisation.


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """The test-time ``view`` of an image batch (identity or horizontal flip)."""
    if view == "identity":
        return x
    if view == "hflip":
        return torch.flip(x, dims=[-1])
    raise ValueError(f"unknown test-time view {view!r} (known: {', '.join(TTA_VIEWS)})")


class ImageBatchTransform:
    """``Engine(batch_transform=...)`` adapter: applies ``augment`` to ``batch[key]`` on the device;
    at eval time, then the test-time ``view`` (set by the TTA loop; identity otherwise)."""

    def __init__(self, augment: GpuImageAugment, key: str = "image"):
        self.augment = augment
        self.key = key
        self.view = "identity"

    def __call__(self, batch: dict, train: bool) -> dict:
        batch = dict(batch)
        x = self.augment(batch[self.key], train)
        if not train and self.view != "identity":
            x = apply_view(x, self.view)
        batch[self.key] = x
        return batch


def make_image_batch_transform(augment: GpuImageAugment, key: str = "image") -> ImageBatchTransform:
    """The ``Engine(batch_transform=...)`` of ``augment`` (see ImageBatchTransform)."""
    return ImageBatchTransform(augment, key)
