"""Sequence packing (``data.packing``) computes what padding computes, for the three thesis encoders'
architectures and every text head.

CamemBERT (RoBERTa: positions after the padding index), FlauBERT (XLM: its own attention, run here
through SDPA on a block mask) and e5 (BERT), built from small configs with random weights, fp32, no
dropout. A batch whose texts run from 1 token to ``max_len`` is collated twice, padded (``pad_collate``)
and packed (``PackCollate``); the per-product logits and every parameter's gradient of the same loss
must agree within ``ATOL``/``RTOL`` (measured differences are about 1e-6: float summation order only).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from rakuten.experiment import load_experiment as load_config
from rakuten.data.text_dataset import PackCollate, first_fit_decreasing
from rakuten.lineage import config_hash
from rakuten.models.encoder_kwargs import NO_KV_CACHE
from rakuten.models.packing import block_mask, position_offset
from rakuten.models.text import TextCls, TextFlatTanh, TextMean
from rakuten.training.engine import Engine, make_optimizer
from rakuten.training.samplers import PadCollate, pad_collate, text_collate

ATOL, RTOL = 2e-5, 1e-4       # fp32; what differs is only the order of float sums
MAX_LEN = 24
VOCAB = 300
LENGTHS = [5, 1, 24, 9, 13, 2, 24, 7, 3, 17]   # shortest (1) and longest (max_len, twice) included


def _encoder(arch: str, attn: str = "sdpa"):
    # 64 positions, more than a packed row (32): positions numbered per row instead of per text then
    # give wrong values (the test's assertion), not an index error
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                  intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if arch == "camembert":   # RoBERTa family; pad 1, so positions start at 2
        cfg = transformers.CamembertConfig(max_position_embeddings=66, pad_token_id=1, **common)
    elif arch == "bert":      # e5 = BertModel
        cfg = transformers.BertConfig(max_position_embeddings=64, pad_token_id=0, **common)
    else:                     # flaubert, or flaubert_prenorm (its pre-norm layer order)
        cfg = transformers.FlaubertConfig(vocab_size=VOCAB, emb_dim=32, n_layers=2, n_heads=4, pad_index=2,
                                          pad_token_id=2, dropout=0.0, attention_dropout=0.0,
                                          max_position_embeddings=64, pre_norm=arch == "flaubert_prenorm")
        attn = "eager"        # FlauBERT has no SDPA path in transformers
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(cfg, attn_implementation=attn).float()


PAD = {"camembert": 1, "bert": 0, "flaubert": 2, "flaubert_prenorm": 2}
HEADS = {"text_cls": TextCls, "text_mean": TextMean, "text_flat_tanh": TextFlatTanh}


def _rows(lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input_ids": torch.from_numpy(rng.integers(5, VOCAB, size=n)), "attention_mask": torch.ones(n, dtype=torch.long),
             "labels": int(rng.integers(0, 27)), "index": i} for i, n in enumerate(lengths)]


def _model(arch, head, attn="sdpa"):
    model = HEADS[head]({"max_len": MAX_LEN, "dropout": 0.0, "head_dim": 16}, num_classes=27,
                        backbone=_encoder(arch, attn))
    torch.manual_seed(1)
    for p in model.classifier.parameters():   # the head's init draws after the encoder's: same for both runs
        torch.nn.init.normal_(p, std=0.2)
    return model


def _logits_and_grads(model, batch):
    model.train()                      # training mode (dropouts are 0): the path a fold trains on
    model.zero_grad(set_to_none=True)
    out = model(batch)["logits"]
    F.cross_entropy(out, batch["labels"]).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


# every architecture x every head through SDPA (boolean block mask); the eager additive mask once
CASES = [(a, "sdpa", h) for a in ("camembert", "bert") for h in sorted(HEADS)] + \
    [("flaubert", "eager", h) for h in sorted(HEADS)] + [("camembert", "eager", "text_cls"),
                                                         ("flaubert_prenorm", "eager", "text_cls")]


@pytest.mark.parametrize("arch,attn,head", CASES)
def test_packed_forward_gives_the_padded_logits_and_gradients(arch, attn, head):
    rows = _rows()
    pad_id = PAD[arch]
    padded = pad_collate(pad_id, pad_to_multiple_of=8)(rows)
    packed = PackCollate(pad_id, pack_len=32, pad_to_multiple_of=8, max_length=MAX_LEN)(rows)
    assert packed["input_ids"].shape[0] < len(rows)            # texts really share rows
    model = _model(arch, head, attn)
    ref, g_ref = _logits_and_grads(model, padded)
    out, g_out = _logits_and_grads(model, packed)
    assert out.shape == (len(rows), 27)
    short, long = int(np.argmin(LENGTHS)), int(np.argmax(LENGTHS))
    for i in (short, long):   # named first, so a failure says which end of the batch broke
        torch.testing.assert_close(out[i], ref[i], atol=ATOL, rtol=RTOL, msg=f"product {i} ({LENGTHS[i]} tokens)")
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    assert set(g_out) == set(g_ref)
    assert sum(g.abs().sum() for g in g_ref.values()) > 0
    for name in g_ref:
        torch.testing.assert_close(g_out[name], g_ref[name], atol=ATOL, rtol=RTOL, msg=name)


def test_flaubert_packed_matches_its_own_forward_with_the_no_op_cache():
    """The padded reference above runs FlauBERT's own forward; the training path passes NO_KV_CACHE."""
    model = _model("flaubert", "text_cls")
    assert model._encoder_kwargs == {"cache": NO_KV_CACHE}
    rows = _rows(seed=3)
    ref = model.eval()(pad_collate(2)(rows))["logits"]
    out = model(PackCollate(2, pack_len=MAX_LEN, max_length=MAX_LEN)(rows))["logits"]
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_positions_restart_per_text_with_robertas_offset():
    assert position_offset(_encoder("camembert")) == 2          # padding_idx 1 + 1
    assert position_offset(_encoder("bert")) == 0
    assert position_offset(_encoder("flaubert")) == 0
    b = PackCollate(0, pack_len=16)(_rows([3, 4, 5]))
    assert b["input_ids"].shape == (1, 16)
    assert b["position_ids"][0, :12].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]
    assert b["sequence_ids"][0].tolist() == [1] * 5 + [2] * 4 + [3] * 3 + [0] * 4
    m = block_mask(b["sequence_ids"])[0, 0]
    assert m[0, 4] and not m[0, 5] and not m[4, 12] and m[12, 15]   # own text only; padding to padding


def test_pack_collate_layout_round_trips_every_token():
    rows = _rows()
    b = PackCollate(3, pack_len=32, pad_to_multiple_of=8, max_length=MAX_LEN)(rows)
    flat = b["input_ids"].reshape(-1)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert b["unpack_mask"][i].sum() == n
        assert torch.equal(flat[b["unpack_index"][i, :n]], r["input_ids"])
    assert b["unpack_index"].shape == (len(rows), MAX_LEN)       # longest 24, a multiple of 8
    assert b["labels"].tolist() == [r["labels"] for r in rows] and b["index"].tolist() == list(range(len(rows)))
    assert (b["input_ids"] != 3).sum() == sum(LENGTHS)            # nothing lost, nothing repeated
    bins = first_fit_decreasing(LENGTHS, 32)
    assert sorted(i for bn in bins for i in bn) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in bn) <= 32 for bn in bins)
    # a batch with a text longer than pack_len gets rows of that length (rounded up, at most max_len)
    long = PackCollate(0, pack_len=8, pad_to_multiple_of=8, max_length=MAX_LEN)(_rows([21, 3]))
    assert long["input_ids"].shape[1] == 24


def test_packing_switch_and_config_hash():
    cfg = load_config("text_tiny_title")
    assert isinstance(text_collate(cfg.data, 0), PadCollate)
    on = load_config("text_tiny_title", overrides=["data.packing=true"])
    c = text_collate(on.data, 0)
    assert isinstance(c, PackCollate) and c.pack_len == -(-int(on.data.max_len) // 8) * 8
    n = text_collate(load_config("text_tiny_title", overrides=["data.packing=100"]).data, 0)
    assert n.pack_len == 104                                     # rounded up to pad_to_multiple_of
    assert config_hash(on) == config_hash(cfg)                   # speed only: artifacts stay valid
    with pytest.raises(Exception):
        load_config("text_tiny_title", overrides=["data.packing=-3"])


def test_engine_trains_the_same_weights_on_packed_batches():
    """Two optimiser steps through the Engine (loss, clipping, AdamW): packed == padded weights."""
    finals = []
    for collate in (pad_collate(1, pad_to_multiple_of=8), PackCollate(1, 32, pad_to_multiple_of=8, max_length=MAX_LEN)):
        model = _model("camembert", "text_mean")
        opt = make_optimizer(model, "adamw", lr=1e-3, weight_decay=0.01)
        eng = Engine(model, torch.nn.CrossEntropyLoss(), opt, device="cpu", precision="fp32", progress=False)
        batches = [collate(_rows(seed=s)) for s in (0, 1)]
        stats = eng.train_epoch(batches, epoch=0)
        assert stats["samples"] == 2 * len(LENGTHS)
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        logits, _ = eng.predict([collate(_rows(seed=2))])
        finals.append(torch.from_numpy(logits))
    torch.testing.assert_close(finals[2], finals[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(finals[3], finals[1], atol=1e-4, rtol=1e-4)


def test_bucket_sampler_batches_share_one_padded_length():
    """train.sampler=bucket: every row once per epoch, full batches, one bucket per batch (except
    where a bucket's remainder joins the next), longest batch first, order a function of (seed, epoch)."""
    from rakuten.training.samplers import BucketBatchSampler
    lengths = np.random.default_rng(0).integers(1, 120, size=1000)
    s = BucketBatchSampler(lengths, 32, width=32, seed=3)
    batches = s.batches()
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert sum(len(b) < 32 for b in batches) <= 1                   # only the final remainder is short
    buckets = [set(-(-lengths[b] // 32)) for b in batches]
    assert sum(len(bk) > 1 for bk in buckets) <= 4                  # at most one mixed batch per bucket edge
    assert lengths[batches[0]].max() == lengths.max()
    assert all(np.array_equal(a, b) for a, b in zip(batches, BucketBatchSampler(lengths, 32, width=32, seed=3).batches()))
    s.set_epoch(1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, s.batches()))
