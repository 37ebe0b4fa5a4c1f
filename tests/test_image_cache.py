"""Image cache build/load, the cached dataset and GPU augmentation (run on CPU)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch import nn
from torch.utils.data import DataLoader

from rakuten.data.image_cache import (BLANK_VALUE, IMAGENET_MEAN, IMAGENET_STD, CachedImageDataset,
                                      GpuImageAugment, ImageCacheError, build_image_cache, ensure_image_cache,
                                      image_cache_info, load_image_cache, make_image_batch_transform,
                                      sidecar_path)
from rakuten.training.engine import Engine, make_optimizer, seed_everything

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)  # strict decoding, whatever others set
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Every kind of file the catalogue could throw at the cache, with what each row must become."""
    d = tmp_path_factory.mktemp("imgs")
    paths, expect = [], []

    def add(p, kind, colour=None):
        paths.append(None if p is None else str(p))
        expect.append((kind, colour))

    for i, c in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250)]):
        p = d / f"ok{i}.jpg"
        Image.new("RGB", (500, 500), c).save(p, quality=95)
        add(p, "ok", c)
    add(d / "does_not_exist.jpg", "missing")
    add(None, "missing")
    (d / "empty.jpg").write_bytes(b"")
    add(d / "empty.jpg", "missing")
    noisy = d / "noisy.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (500, 500, 3), dtype=np.uint8)).save(noisy)
    data = noisy.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    add(d / "truncated.jpg", "unreadable")
    (d / "garbage.jpg").write_bytes(b"this is not an image" * 50)
    add(d / "garbage.jpg", "unreadable")
    Image.new("L", (500, 500), 77).save(d / "grey.jpg", quality=95)
    add(d / "grey.jpg", "ok", (77, 77, 77))
    Image.new("CMYK", (500, 500), (0, 255, 255, 0)).save(d / "cmyk.jpg", quality=95)  # pure red
    add(d / "cmyk.jpg", "ok", (255, 0, 0))
    Image.new("RGBA", (500, 500), (0, 0, 0, 0)).save(d / "transparent.png")  # transparent -> white
    add(d / "transparent.png", "ok", (255, 255, 255))
    Image.new("RGB", (5000, 5000), (40, 120, 200)).save(d / "huge.jpg", quality=90)
    add(d / "huge.jpg", "ok", (40, 120, 200))
    Image.new("RGB", (400, 100), (0, 0, 0)).save(d / "wide.png")  # black band centred on white
    add(d / "wide.png", "ok", None)
    return d, paths, expect


def test_build_counts_shapes_and_pixels(images, tmp_path):
    _, paths, expect = images
    cache = tmp_path / "c.npy"
    counts = build_image_cache(paths, SIZE, cache, workers=0, progress=False)
    assert counts == {"n": len(paths), "missing": 3, "unreadable": 2}
    arr = load_image_cache(cache, paths=paths, size=SIZE)
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint8 and arr.shape == (len(paths), SIZE, SIZE, 3)
    for row, (kind, colour) in zip(arr, expect):
        if kind != "ok":
            assert (row == BLANK_VALUE).all()
        elif colour is not None:
            np.testing.assert_allclose(row.reshape(-1, 3).mean(0), colour, atol=4)
    wide = arr[-1]
    assert (wide[0] == 255).all() and (wide[SIZE // 2, SIZE // 2] < 10).all()  # aspect kept, padded white
    info = image_cache_info(cache)
    assert info["blank_index"] == [k for k, (kind, _) in enumerate(expect) if kind != "ok"]
    assert info["paths"] == paths and info["size"] == SIZE
    assert sorted(os.listdir(tmp_path)) == ["c.npy", "c.npy.json"]  # no temporary left behind


def test_worker_pool_gives_the_same_cache(images, tmp_path):
    _, paths, _ = images
    many = paths * 6  # > one chunk of 64, so the pool path runs
    build_image_cache(many, SIZE, tmp_path / "serial.npy", workers=0, progress=False)
    counts = build_image_cache(many, SIZE, tmp_path / "pool.npy", workers=2, progress=False)
    assert counts == {"n": len(many), "missing": 18, "unreadable": 12}
    np.testing.assert_array_equal(load_image_cache(tmp_path / "serial.npy"), load_image_cache(tmp_path / "pool.npy"))


def test_in_memory_decoding_gives_the_cache_rows(images, tmp_path, monkeypatch):
    """A bundle's request decodes in memory, in threads: the rows a cache file holds, in order
    (missing and unreadable images blank), whatever the number of threads."""
    from rakuten.data import image_cache
    _, paths, _ = images
    many = paths * 3
    build_image_cache(many, SIZE, tmp_path / "c.npy", workers=0, progress=False)
    want = load_image_cache(tmp_path / "c.npy")
    got = {}
    for cpus in (4, 2, 1):      # every result kept: a freed one's memory must not refill the next
        monkeypatch.setattr(image_cache.os, "cpu_count", lambda: cpus)
        got[cpus] = image_cache.decode_images(many, SIZE)
    for cpus, arr in got.items():
        np.testing.assert_array_equal(arr, want, err_msg=f"{cpus} threads")


def test_stale_truncated_and_orphan_caches_are_refused(images, tmp_path):
    _, paths, _ = images
    cache = tmp_path / "c.npy"
    build_image_cache(paths, SIZE, cache, progress=False)
    with pytest.raises(ImageCacheError, match="other image paths"):
        load_image_cache(cache, paths=paths[::-1])
    with pytest.raises(ImageCacheError, match="px"):
        load_image_cache(cache, size=SIZE * 2)
    raw = cache.read_bytes()
    cache.write_bytes(raw[: len(raw) - 1000])  # a truncated copy
    with pytest.raises(ImageCacheError, match="truncated or stale"):
        load_image_cache(cache)
    cache.write_bytes(raw)
    load_image_cache(cache)
    sidecar_path(cache).unlink()  # an interrupted build: array without sidecar
    with pytest.raises(ImageCacheError, match="sidecar"):
        load_image_cache(cache)
    sidecar_path(cache).write_text("{\"version\": 1, \"nbyt")  # a half-written sidecar
    with pytest.raises(ImageCacheError):
        load_image_cache(cache)
    arr = ensure_image_cache(paths, SIZE, cache, progress=False)  # rebuilds
    assert arr.shape[0] == len(paths)
    assert json.loads(sidecar_path(cache).read_text())["nbytes"] == cache.stat().st_size
    with pytest.raises(ImageCacheError, match="missing"):
        load_image_cache(tmp_path / "nope.npy")


def test_cached_dataset_items_and_pickling(images, tmp_path):
    _, paths, _ = images
    cache = tmp_path / "c.npy"
    build_image_cache(paths, SIZE, cache, progress=False)
    arr = load_image_cache(cache)
    ds = CachedImageDataset(arr, labels=np.arange(len(paths)) % 3)
    item = ds[2]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, SIZE, SIZE)
    assert item["labels"] == 2 and item["index"] == 2
    assert torch.equal(item["image"], torch.from_numpy(np.array(arr[2])).permute(2, 0, 1))
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000  # the memmap travels as its file name, not its pixels
    assert torch.equal(pickle.loads(blob)[2]["image"], item["image"])
    assert "labels" not in CachedImageDataset(cache)[0]


def test_gpu_augment_shapes_dtype_and_normalisation():
    aug = GpuImageAugment(24, IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
    x = torch.full((5, 3, SIZE, SIZE), 200, dtype=torch.uint8)
    want = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for train in (False, True):
        y = aug(x, train)
        assert y.shape == (5, 3, 24, 24) and y.dtype == torch.float32
        assert y.is_contiguous(memory_format=torch.channels_last)
        # a constant image stays constant under crop/flip/rotation (border padding) and resize
        torch.testing.assert_close(y.mean(dim=(0, 2, 3)), want, rtol=0, atol=1e-4)
        torch.testing.assert_close(y.amax(dim=(0, 2, 3)), want, rtol=0, atol=1e-4)
    # eval is deterministic and a plain resize; train draws a different view per image
    ramp = torch.arange(SIZE, dtype=torch.float32).mul(255 / (SIZE - 1)).round().to(torch.uint8)
    img = ramp.view(1, 1, 1, SIZE).expand(4, 3, SIZE, SIZE).contiguous()
    assert torch.equal(aug(img, False), aug(img, False))
    torch.manual_seed(0)
    t = aug(img, True)
    assert not torch.allclose(t[0], t[1])
    torch.manual_seed(0)
    assert torch.equal(t, aug(img, True))  # reproducible from the seed
    flip = GpuImageAugment(SIZE, train_crop_scale=(1.0, 1.0), max_rotate_deg=0, channels_last=False,
                           ratio=(1.0, 1.0))
    torch.manual_seed(1)
    out = flip(img, True)
    lr = out[:, 0, 0, 0] < out[:, 0, 0, -1]  # left-to-right ramp kept, or mirrored
    assert lr.any() and (~lr).any()  # seed 1 draws both
    same = flip.normalise(img.float())
    for k in range(4):
        torch.testing.assert_close(out[k], same[k] if lr[k] else same[k].flip(-1), rtol=0, atol=1e-4)


def test_engine_on_cached_images_with_batch_transform(images, tmp_path):
    _, paths, _ = images
    cache = tmp_path / "c.npy"
    build_image_cache(paths, SIZE, cache, progress=False)
    seed_everything(0)
    ds = CachedImageDataset(load_image_cache(cache), labels=np.arange(len(paths)) % 2)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)
            self.head = nn.Linear(4, 2)

        def forward(self, batch):
            e = self.conv(batch["image"]).mean(dim=(2, 3))
            return {"logits": self.head(e), "embeddings": e}

    model = Tiny()
    eng = Engine(model, nn.CrossEntropyLoss(), make_optimizer(model, lr=1e-2), device="cpu", channels_last=True,
                 batch_transform=make_image_batch_transform(GpuImageAugment(16)), progress=False)
    s = eng.train_epoch(DataLoader(ds, batch_size=4, shuffle=True), 0)
    assert np.isfinite(s["loss"]) and s["samples"] == len(paths)
    order = list(range(len(ds)))[::-1]
    logits, emb = eng.predict(DataLoader(ds, batch_size=4, sampler=order))
    ref, _ = eng.predict(DataLoader(ds, batch_size=4))
    assert logits.shape == (len(ds), 2) and emb.shape == (len(ds), 4)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
