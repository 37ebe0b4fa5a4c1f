"""Engine, optimiser/schedule factories and samplers, on CPU with tiny models (seconds in total)."""
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rakuten.training.engine import (Engine, autocast_dtype, make_optimizer, make_scheduler, resolve_device,
                                     seed_everything)
from rakuten.training.samplers import (ClassBalancedSampler, LengthGroupedBatchSampler, class_balanced_weights,
                                       pad_collate)


@pytest.fixture(autouse=True)
def _torch_globals():
    """One CPU thread (OpenMP teams stall on a shared CPU) and torch's global flags restored after."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    bench, cdet = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, cdet


# ------------------------------------------------------------------------------------------ toy data
class ToyDataset(Dataset):
    """Four Gaussian blobs in 8-d; rows carry their index."""

    def __init__(self, n=256, seed=0):
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, 4, size=n)
        centres = rng.normal(0, 3, size=(4, 8))
        self.x = (centres[self.y] + rng.normal(0, 1, size=(n, 8))).astype(np.float32)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": torch.from_numpy(self.x[i]), "labels": int(self.y[i]), "index": i}


class MLP(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(16, 4)

    def forward(self, batch):
        emb = self.body(batch["x"])
        return {"logits": self.head(emb), "embeddings": emb}


class SeqDataset(Dataset):
    def __init__(self, n=37, seed=0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(1, 30, size=n)
        self.ids = [rng.integers(3, 50, size=int(L)) for L in self.lengths]
        self.y = rng.integers(0, 3, size=n)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": np.ones(len(self.ids[i]), np.int64),
                "labels": int(self.y[i]), "index": i}


class BagModel(nn.Module):
    """Masked mean of token embeddings: output independent of padding, so order checks are exact."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, batch):
        m = batch["attention_mask"].unsqueeze(-1).float()
        e = (self.emb(batch["input_ids"]) * m).sum(1) / m.sum(1).clamp(min=1)
        return {"logits": self.head(e), "embeddings": e}


def make_engine(model, lr=0.05, epochs=1, steps_per_epoch=8, **kw):
    opt = make_optimizer(model, "adamw", lr=lr, weight_decay=0.01)
    sched = make_scheduler(opt, total_steps=epochs * steps_per_epoch, warmup_ratio=0.1, kind="linear")
    kw.setdefault("progress", False)
    return Engine(model, nn.CrossEntropyLoss(), opt, sched, device="cpu", **kw)


def loader(ds, bs=32, seed=0):
    sampler = LengthGroupedBatchSampler(np.zeros(len(ds)), bs, shuffle=True, seed=seed)
    return DataLoader(ds, batch_sampler=sampler)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.state_dict().values() if p.is_floating_point()])


# -------------------------------------------------------------------------------------------- engine
def test_device_and_precision_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert autocast_dtype("cpu", "auto") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert autocast_dtype("cpu", "fp32") is None
    with pytest.raises(ValueError):
        autocast_dtype("cpu", "int8")


def test_engine_trains_toy_task_loss_goes_down():
    seed_everything(0)
    ds = ToyDataset()
    eng = make_engine(MLP(), epochs=6, steps_per_epoch=8)
    stats = [eng.train_epoch(loader(ds), epoch=e) for e in range(6)]
    assert stats[-1]["loss"] < 0.5 * stats[0]["loss"]
    assert all(s["samples"] == len(ds) and s["steps"] == 8 and s["nonfinite"] == 0 for s in stats)
    assert np.isfinite(stats[0]["grad_norm"]) and stats[-1]["lr"] < stats[0]["lr"]
    logits, emb = eng.predict(DataLoader(ds, batch_size=64))
    assert logits.dtype == np.float32 and logits.shape == (len(ds), 4) and emb.shape == (len(ds), 16)
    assert (logits.argmax(1) == ds.y).mean() > 0.9


def test_bf16_autocast_and_batch_transform_on_cpu():
    seed_everything(0)
    calls = []

    def transform(batch, train):
        calls.append(train)
        batch = dict(batch)
        batch["x"] = batch["x"] * 1.0
        return batch

    ds = ToyDataset(64)
    eng = make_engine(MLP(), precision="bf16", batch_transform=transform)
    assert eng.amp_dtype is torch.bfloat16 and eng.scaler is None
    s = eng.train_epoch(loader(ds), 0)
    logits, _ = eng.predict(DataLoader(ds, batch_size=32))
    assert np.isfinite(s["loss"]) and logits.dtype == np.float32
    assert calls == [True, True, False, False]


def test_compile_modes_parse_and_bad_mode_is_rejected():
    from rakuten.training.engine import _compile_mode
    assert _compile_mode(False) is None and _compile_mode("false") is None and _compile_mode(None) is None
    assert _compile_mode(True) == "default" and _compile_mode("true") == "default"
    assert _compile_mode("reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="unknown compile mode"):
        _compile_mode("fastest")
    with pytest.warns(UserWarning, match="compile"):
        eng = make_engine(MLP(), compile="reduce-overhead")
    assert eng._compiled is False and eng._cudagraphs is False


def test_compile_on_cpu_is_skipped_with_warning():
    with pytest.warns(UserWarning, match="compile"):
        eng = make_engine(MLP(), compile=True)
    assert eng._compiled is False


def test_grad_accumulation_matches_large_batch():
    ds = ToyDataset(64)

    def run(bs, accum):
        seed_everything(0)
        model = MLP()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        eng = Engine(model, nn.CrossEntropyLoss(), opt, device="cpu", grad_accum=accum, clip_grad=None,
                     progress=False)
        eng.train_epoch(DataLoader(ds, batch_size=bs), 0)
        return flat_params(model), eng.global_step

    big, steps_big = run(16, 1)
    acc, steps_acc = run(8, 2)
    assert steps_big == steps_acc == 4
    torch.testing.assert_close(big, acc, rtol=1e-5, atol=1e-6)
    # a short last group (5 micro-batches, accum 2 -> groups 2, 2, 1) still takes 3 steps
    model = MLP()
    eng = Engine(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), device="cpu",
                 grad_accum=2, progress=False)
    assert eng.train_epoch(DataLoader(ToyDataset(40), batch_size=8), 0)["steps"] == 3


def test_predict_restores_dataset_order_from_length_sorted_batches():
    seed_everything(0)
    ds = SeqDataset()
    model = BagModel()
    eng = Engine(model, nn.CrossEntropyLoss(), device="cpu", progress=False)
    sampler = LengthGroupedBatchSampler(ds.lengths, 8, shuffle=False)
    first = next(iter(sampler))
    assert first != sorted(first) or len(first) == 1  # batches really are out of dataset order
    logits, emb = eng.predict(DataLoader(ds, batch_sampler=sampler, collate_fn=pad_collate(0)))
    np.testing.assert_array_equal(eng.last_predict_index, np.arange(len(ds)))
    with torch.no_grad():
        for i in range(len(ds)):
            b = pad_collate(0)([ds[i]])
            out = model(b)
            np.testing.assert_allclose(logits[i], out["logits"][0].numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(emb[i], out["embeddings"][0].numpy(), rtol=1e-5, atol=1e-6)


def test_predict_without_index_keeps_loader_order_and_rejects_duplicates():
    ds = ToyDataset(20)
    eng = Engine(MLP(), nn.CrossEntropyLoss(), device="cpu", progress=False)

    def collate_noindex(rows):
        return {"x": torch.stack([r["x"] for r in rows])}

    order = list(range(19, -1, -1))
    rev, _ = eng.predict(DataLoader(ds, batch_size=5, sampler=order, collate_fn=collate_noindex))
    fwd, _ = eng.predict(DataLoader(ds, batch_size=5, collate_fn=collate_noindex))
    np.testing.assert_allclose(rev[::-1], fwd, rtol=1e-5, atol=1e-6)
    assert eng.last_predict_index is None
    with pytest.raises(ValueError, match="twice"):
        eng.predict(DataLoader(ds, batch_size=5, sampler=[0, 1, 2, 2]))


def test_state_dict_round_trip_resumes_identically():
    ds = ToyDataset(96)

    def fresh():
        model = MLP(dropout=0.3)
        return make_engine(model, epochs=2, steps_per_epoch=3)

    seed_everything(1)
    straight = fresh()
    for e in range(2):
        straight.train_epoch(loader(ds), e)

    seed_everything(1)
    first = fresh()
    first.train_epoch(loader(ds), 0)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    del first
    torch.manual_seed(12345)  # a resumed process starts from some other RNG state
    resumed = fresh()
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert resumed.global_step == 3
    resumed.train_epoch(loader(ds), 1)
    torch.testing.assert_close(flat_params(straight.model), flat_params(resumed.model), rtol=0, atol=0)
    assert resumed.scheduler.last_epoch == straight.scheduler.last_epoch


def test_an_unusable_checkpoint_leaves_the_engine_as_it_was(tmp_path):
    """``epochs.resume``: a checkpoint that fails part way (here a counter missing after a loadable
    engine state) must not leave its weights in the engine that then trains "from scratch"."""
    from rakuten.training.epochs import resume
    from rakuten.training.fold_state import rng_state

    ds = ToyDataset(96)
    seed_everything(2)
    trained = make_engine(MLP(), epochs=2, steps_per_epoch=3)
    trained.train_epoch(loader(ds), 0)
    good = {"engine": trained.state_dict(), "rng": rng_state(), "epoch": 0, "best": 0.5, "bad": 0,
            "history": [{"epoch": 0}], "signature": {"k": 1}}
    torch.save(good, tmp_path / "good.pt")
    torch.save({k: v for k, v in good.items() if k != "history"}, tmp_path / "broken.pt")

    fresh = make_engine(MLP(), epochs=2, steps_per_epoch=3)
    init = flat_params(fresh.model).clone()
    assert resume(fresh, tmp_path / "broken.pt", {"k": 1}) == (0, -1.0, 0, [])
    torch.testing.assert_close(flat_params(fresh.model), init, rtol=0, atol=0)
    assert fresh.global_step == 0 and not fresh.optimizer.state
    assert resume(fresh, tmp_path / "good.pt", {"k": 2}) == (0, -1.0, 0, [])    # another config
    torch.testing.assert_close(flat_params(fresh.model), init, rtol=0, atol=0)
    assert resume(fresh, tmp_path / "good.pt", {"k": 1}) == (1, 0.5, 0, [{"epoch": 0}])
    torch.testing.assert_close(flat_params(fresh.model), flat_params(trained.model), rtol=0, atol=0)


def test_two_seeded_runs_give_identical_weights():
    ds = ToyDataset(96)

    def run():
        seed_everything(7, deterministic=True)
        eng = make_engine(MLP(dropout=0.2), epochs=2, steps_per_epoch=3)
        for e in range(2):
            eng.train_epoch(loader(ds, seed=3), e)
        return flat_params(eng.model)

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)
    assert torch.are_deterministic_algorithms_enabled()


def test_nonfinite_loss_is_counted_not_averaged():
    calls = {"n": 0}

    def criterion(logits, labels):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(logits, labels)
        # a NaN that carries no gradient: the weights stay finite, only the reported loss is poisoned
        return loss + torch.tensor(float("nan")) if calls["n"] == 2 else loss

    model = MLP()
    eng = Engine(model, criterion, torch.optim.SGD(model.parameters(), lr=0.0), device="cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = eng.train_epoch(DataLoader(ToyDataset(32), batch_size=8), 0)
    assert s["nonfinite"] == 1 and np.isfinite(s["loss"])


def test_optimizer_groups_and_schedules():
    model = MLP()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.05)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.ndim >= 2 and not name.endswith(".bias")), name
    assert not opt.defaults.get("fused")  # CPU parameters: no fused kernel
    for kind in ("linear", "cosine", "constant"):
        o = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        s = make_scheduler(o, total_steps=100, warmup_ratio=0.1, kind=kind)
        lrs = []
        for _ in range(100):
            lrs.append(o.param_groups[0]["lr"])
            o.step()
            s.step()
        assert lrs[0] < lrs[5] < lrs[10] and max(lrs) == pytest.approx(1.0)
        if kind == "constant":
            assert lrs[-1] == pytest.approx(1.0)
        else:
            assert lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


# ------------------------------------------------------------------------------------------ samplers
def test_length_grouped_sampler_covers_each_index_once_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.lognormal(3.5, 1.0, size=1003).astype(int) + 1
    s = LengthGroupedBatchSampler(lengths, 16, shuffle=True, seed=5, mega_batch_mult=10)
    batches = list(s)
    assert len(batches) == len(s) == 63
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))
    # grouped: the padding a batch needs is far below what random batches need
    pad = np.mean([lengths[b].max() * len(b) - lengths[b].sum() for b in batches])
    rnd = rng.permutation(1003)
    pad_random = np.mean([lengths[b].max() * len(b) - lengths[b].sum() for b in np.array_split(rnd, 63)])
    assert pad < 0.3 * pad_random
    # the longest row is in the first batch (an OOM shows at step 1)
    assert lengths.argmax() in batches[0]


def test_length_grouped_sampler_epochs_are_deterministic():
    lengths = np.arange(200) % 37
    s = LengthGroupedBatchSampler(lengths, 8, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0 and e0 != e1
    other = LengthGroupedBatchSampler(lengths, 8, seed=1)
    other.set_epoch(1)
    assert list(other) == e1
    assert list(LengthGroupedBatchSampler(lengths, 8, seed=2)) != e0
    dl = LengthGroupedBatchSampler(lengths, 8, seed=1, drop_last=True)
    assert len(dl) == 25 and all(len(b) == 8 for b in dl)
    dl = LengthGroupedBatchSampler(np.ones(203), 8, drop_last=True)
    assert len(list(dl)) == len(dl) == 25


def test_length_grouped_sampler_eval_sorts_longest_first():
    lengths = np.array([3, 9, 1, 9, 4, 7, 2])
    batches = list(LengthGroupedBatchSampler(lengths, 3, shuffle=False))
    assert batches == [[1, 3, 5], [4, 0, 6], [2]]


def test_pad_collate_pads_to_batch_max():
    rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1, "index": 0, "name": "a"},
            {"input_ids": np.array([8]), "attention_mask": np.array([1]), "labels": 0, "index": 1, "name": "b"}]
    b = pad_collate(pad_id=1)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].dtype == torch.int64 and b["labels"].tolist() == [1, 0]
    assert b["index"].tolist() == [0, 1] and b["name"] == ["a", "b"]
    b8 = pad_collate(pad_id=1, pad_to_multiple_of=8)(rows)
    assert b8["input_ids"].shape == (2, 8) and b8["attention_mask"][0].sum() == 3
    bt = pad_collate(pad_id=0, max_length=2)(rows)
    assert bt["input_ids"].tolist() == [[5, 6], [8, 0]]
    x = pad_collate(0)([{"image": torch.zeros(3, 2, 2, dtype=torch.uint8)}] * 2)["image"]
    assert x.shape == (2, 3, 2, 2)


def test_class_balanced_weights_and_sampler_oversample_rare_classes():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = class_balanced_weights(labels, power=1.0)
    assert w.sum() == pytest.approx(1.0)
    for c in range(3):
        assert w[labels == c].sum() == pytest.approx(1 / 3)
    np.testing.assert_allclose(class_balanced_weights(labels, power=0.0), np.full(100, 0.01))
    s = ClassBalancedSampler(labels, power=1.0, num_samples=3000, seed=0)
    drawn = labels[np.fromiter(iter(s), dtype=np.int64)]
    freq = np.bincount(drawn, minlength=3) / len(drawn)
    assert freq[2] > 0.25 and freq[0] < 0.45  # rare class ~1/3 instead of 1%
    s.set_epoch(0)
    a = s.indices()
    s.set_epoch(1)
    b = s.indices()
    s.set_epoch(0)
    np.testing.assert_array_equal(a, s.indices())
    assert not np.array_equal(a, b)
    assert len(s) == 3000


def test_progress_bar_with_and_without_tqdm(monkeypatch):
    import rakuten.training.engine as engine_mod

    ds = ToyDataset(64)
    for tq in (engine_mod._tqdm, None):
        monkeypatch.setattr(engine_mod, "_tqdm", tq)
        eng = make_engine(MLP(), progress=True, log_every=1)
        assert np.isfinite(eng.train_epoch(loader(ds, bs=16), 0)["loss"])
        assert eng.predict(DataLoader(ds, batch_size=16))[0].shape == (64, 4)


def test_head_lr_gives_the_new_head_its_own_rate():
    """train.head_lr: the parameters outside ``backbone_parameters`` (the new head) train at head_lr,
    the pretrained encoder at lr; without it every parameter shares lr (the loop once ignored it,
    so a fine-tuned model's random head crawled at the encoder's 1e-5..1e-4)."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
            self.classifier = torch.nn.Linear(4, 3)

        def backbone_parameters(self):
            return self.encoder.parameters()

    net = Net()
    opt = make_optimizer(net, lr=1e-5, weight_decay=0.01, head_lr=1e-3)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {lr_of[id(p)] for p in net.encoder.parameters()} == {1e-5}
    assert {lr_of[id(p)] for p in net.classifier.parameters()} == {1e-3}
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(net.classifier.weight) in decayed and id(net.classifier.bias) not in decayed
    plain = make_optimizer(net, lr=1e-5, weight_decay=0.01)
    assert {g["lr"] for g in plain.param_groups} == {1e-5} and len(plain.param_groups) == 2


def test_epoch_shuffle_draws_from_the_samplers_one_seeding_rule():
    """``EpochShuffleSampler`` (the distributed shuffle) seeds like every sampler (``epoch_rng``): the
    permutations of seeds in 0..2^32-1 are those it always gave, and a negative seed is valid."""
    from rakuten.training.distributed import EpochShuffleSampler

    s = EpochShuffleSampler(50, seed=3)
    s.set_epoch(2)
    assert list(s) == np.random.default_rng([3, 2]).permutation(50).tolist()
    neg = EpochShuffleSampler(50, seed=-1)
    assert list(neg) == list(EpochShuffleSampler(50, seed=2 ** 32 - 1)) and sorted(neg) == list(range(50))
