"""Registry-wide smoke tests: every registered model builds on tiny sizes; the torch unimodal models
run forward and backward and return logits [B, 27] and embeddings [B, D] with no NaN, the fusion
networks return logits, features and (given ``labels``) a loss, and the TF-IDF model fits a few rows;
losses behave."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rakuten.labels import NUM_CLASSES
from rakuten.models.registry import UnknownModelError, create_model, list_models
from rakuten.labels import class_weights
from rakuten.errors import RakutenError
from rakuten.training.losses import FocalLoss, class_weight_vector, difficulty_weights, make_loss

TEXTS = ["Lot de 3 coussins bleus", "Jeu PS4 course de voitures", "Livre de cuisine française",
         "Piscine gonflable ronde", "Figurine manga collector"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    from rakuten.models.backbones import load_tokenizer
    return load_tokenizer("tiny:bert", train_texts=TEXTS, vocab_size=200)


def _text_batch(tok, n=4, max_len=16):
    enc = tok(TEXTS[:n], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _batch_for(name, tok):
    if name.startswith("text_"):
        return _text_batch(tok)
    if name.startswith("image_"):
        return {"image": torch.randn(4, 3, 32, 32)}
    return {"features": torch.randn(4, 12)}


def _kwargs_for(name, tok, backbone):
    if name.startswith("text_"):
        return {"cfg": {"backbone": backbone, "max_len": 16, "head_dim": 8}, "tokenizer": tok}
    if name.startswith("image_"):
        return {"cfg": {"backbone": backbone, "pretrained": False}}
    return {"cfg": {"head_hidden": 6}, "in_dim": 12}


CASES = [(n, b) for n in ("text_flat_tanh", "text_cls", "text_mean") for b in ("tiny:bert", "tiny:flaubert", "tiny:camembert")]
CASES += [("image_timm", "tiny:cnn"), ("image_timm", "timm:test_efficientnet"), ("head_mlp", None)]


# the fusion networks: registry name -> (their ``fusion:`` section, input name -> width)
FUSION_CASES = {
    "fusion_hierarchical": ({"text_groups": [["t", "d"]], "image": "img", "level1_op": "concat",
                             "level2_op": "average", "head": "mlp", "dropout": 0.1, "hidden": 8},
                            {"t": 8, "d": 6, "img": 10}),
    "fusion_baseline": ({"text": ["t"], "image": "img", "op": "concat", "head": "dropout", "dropout": 0.1},
                        {"t": 8, "img": 10}),
    "fusion_late": ({"inputs": ["a", "b"], "op": "weighted", "space": "logprob"},
                    {"a": NUM_CLASSES, "b": NUM_CLASSES}),
}


# the scikit-learn style models: registry name -> how one is built, fitted and made to predict
# log-probabilities [n, 27] (tfidf_linear has its own test below)
STACK_CFG = {"stack": {"inputs": ["a", "b"]}, "lgbm": {"num_leaves": 4, "num_boost_round": 5,
                                                      "early_stopping_rounds": 0, "min_data_in_leaf": 2,
                                                      "num_threads": 1, "seed": 0},
             "logreg": {"C": 1.0}, "blend": {"l2_bias": 1e-3, "class_bias": True, "sample_weight_power": 0.0,
                                               "max_steps": 5, "metric": "macro_f1"}}
SKLEARN_CASES = {
    "head_logreg": {"cfg": {"head_C": 1.0}, "seed": 0},
    "knn": {"cfg": {"k": 3, "temperature": 0.1}},
    **{f"stacker_{m}": {"cfg": STACK_CFG} for m in ("lgbm", "logreg", "blend", "caruana")},
}


def test_registry_lists_every_case():
    assert ({n for n, _ in CASES} | set(FUSION_CASES) | set(SKLEARN_CASES) | {"tfidf_linear"}
            == set(list_models()))


@pytest.mark.parametrize("name", sorted(SKLEARN_CASES))
def test_sklearn_models_fit_and_predict(name):
    """Every scikit-learn style model in the registry fits a few separable rows and returns finite
    log-probabilities [n, 27] that recover the training labels."""
    from rakuten.second_level.stacker import predict_proba_full

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    X = rng.normal(0, 0.1, (60, 2 * NUM_CLASSES))
    X[np.arange(60), y] += 3.0                           # input model a: a confident, right score
    X[np.arange(60), NUM_CLASSES + y] += 3.0             # input model b: the same
    if name.startswith("stacker_"):
        X = np.log(np.exp(X) / np.exp(X).reshape(60, 2, NUM_CLASSES).sum(2).repeat(NUM_CLASSES, 1))  # log-probs
    if name == "knn":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    model = create_model(name, num_classes=NUM_CLASSES, **SKLEARN_CASES[name]).fit(X, y)
    logp = (model.predict_logits(X) if hasattr(model, "predict_logits")
            else np.log(np.clip(predict_proba_full(model, X), 1e-12, None)))
    assert logp.shape == (60, NUM_CLASSES) and np.isfinite(logp).all()
    assert (logp.argmax(1) == y).mean() == 1.0


@pytest.mark.parametrize("name,backbone", CASES)
def test_forward_backward(name, backbone, tokenizer):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, **_kwargs_for(name, tokenizer, backbone))
    batch = _batch_for(name, tokenizer)
    out = model(batch)
    assert out["logits"].shape == (4, NUM_CLASSES)
    assert out["embeddings"].shape[0] == 4 and out["embeddings"].shape[1] == model.embed_dim
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["embeddings"]).all()
    out["logits"].sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(FUSION_CASES))
def test_fusion_forward_backward(name):
    """A fusion network built by the registry reads its inputs from the batch, and a loss on its logits back-propagates."""
    from rakuten.models.fusion_nets import FUSION_MODELS
    torch.manual_seed(0)
    fcfg, dims = FUSION_CASES[name]
    model = create_model(name, cfg=fcfg, in_dims=dims, num_classes=NUM_CLASSES)
    assert FUSION_MODELS[model.variant] == name
    batch = {k: torch.randn(4, d) for k, d in dims.items()}
    with torch.no_grad():
        assert "loss" not in model(batch)
    batch["labels"] = torch.tensor([0, 1, 2, 26])
    out = model(batch)
    assert out["logits"].shape == (4, NUM_CLASSES) and torch.isfinite(out["logits"]).all()
    if out["features"] is not None:
        assert out["features"].shape == (4, model.out_width)
    assert "loss" not in out                           # the fusion's training loop owns the loss
    loss = torch.nn.functional.cross_entropy(out["logits"], batch["labels"], weight=model.class_weight)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(out["logits"], batch["labels"]))
    loss.backward()                                    # class weights are 1 until the trainer sets them
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name,fcfg", [(n, c[0]) for n, c in sorted(FUSION_CASES.items())]
                         + [("fusion_late", {"inputs": ["a", "b"], "op": "average", "space": "prob"})])
def test_fusion_nets_keep_every_tensor_on_the_inputs_device(name, fcfg):
    """No tensor made on the CPU meets the inputs on another device (a GPU's, here the meta device,
    which checks placement without one): the late average's equal weights did."""
    dims = FUSION_CASES[name][1]
    model = create_model(name, cfg=fcfg, in_dims=dims, num_classes=NUM_CLASSES).to("meta")
    with torch.no_grad():
        out = model({k: torch.empty(4, d, device="meta") for k, d in dims.items()})
    assert out["logits"].device.type == "meta" and out["logits"].shape == (4, NUM_CLASSES)


def test_tfidf_linear_fits_a_few_rows():
    labels = np.arange(len(TEXTS)) % 5                  # TEXTS[i] is text i % 5
    model = create_model("tfidf_linear", cfg={"C": 1.0, "max_features": 500}, num_classes=NUM_CLASSES, seed=0)
    logits = model.fit(TEXTS, labels).predict_logits(TEXTS[:5])
    assert logits.shape == (5, NUM_CLASSES) and np.isfinite(logits).all()
    assert logits.argmax(1).tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(np.exp(logits).sum(1), 1.0, atol=1e-6)


def test_flat_pooling_independent_of_padding(tokenizer):
    """Dynamic padding must not change the flattened head's output (masked positions are zeroed)."""
    torch.manual_seed(0)
    model = create_model("text_flat_tanh", num_classes=NUM_CLASSES, tokenizer=tokenizer,
                         cfg={"backbone": "tiny:bert", "max_len": 16, "head_dim": 8, "dropout": 0.0}).eval()
    b = _text_batch(tokenizer, n=1)
    L = b["input_ids"].shape[1]
    padded = {"input_ids": torch.nn.functional.pad(b["input_ids"], (0, 16 - L), value=tokenizer.pad_token_id),
              "attention_mask": torch.nn.functional.pad(b["attention_mask"], (0, 16 - L))}
    with torch.no_grad():
        assert torch.allclose(model(b)["logits"], model(padded)["logits"], atol=1e-5)


def test_unknown_model():
    with pytest.raises(UnknownModelError, match="registered:"):
        create_model("nope", cfg={}, num_classes=3)


def test_class_weights_favour_rare_classes():
    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 1.0, 2)
    assert w[1] > w[0] and np.isclose((w * np.array([90, 10])).sum(), 100)
    assert np.allclose(class_weights(labels, 0.0, 2), 1.0)
    assert make_loss({"name": "ce", "class_weight_power": 0.0}, labels, 2).weight is None


def test_class_weights_of_absent_classes():
    """A class with no row takes no part in the normalisation (the mean over the labels stays 1)
    and gets the rarest present class's weight: finite, never 0 (a batch of it would divide by
    zero) and never above every real class (as a class of one row would)."""
    labels = np.array([0] * 90 + [2] * 10)          # class 1 and 3 absent
    for power in (0.5, 1.0):
        w = class_weights(labels, power, 4)
        assert np.isclose(w[labels].mean(), 1.0)
        assert w[1] == w[3] == w[2] == w.max() and w[0] < w[2]
    # the same rule in the unimodal loss: weighted CE on a row of an absent class is finite
    loss = make_loss({"name": "ce", "class_weight_power": 1.0}, labels, 4)
    assert np.isclose(loss.weight.numpy(), class_weights(labels, 1.0, 4)).all()
    out = loss(torch.zeros(1, 4), torch.tensor([3]))
    assert torch.isfinite(out)


def test_focal_reduces_easy_example_loss():
    logits = torch.tensor([[5.0, 0.0], [0.2, 0.0]])
    target = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    fl = FocalLoss(gamma=2.0)
    easy, hard = fl(logits[:1], target[:1]), fl(logits[1:], target[1:])
    assert easy / ce[0] < hard / ce[1]
    assert make_loss({"name": "ce", "label_smoothing": 0.1}, [0, 1], 2)(logits, target) > 0


def test_freeze_layers_trains_only_the_upper_layers(tokenizer):
    """model.freeze_layers=1 on a 2-layer encoder: a step moves layer 1 and the head, never the
    embeddings or layer 0; the optimiser is given no frozen parameter."""
    from rakuten.training.engine import param_groups
    torch.manual_seed(0)
    model = create_model("text_mean", num_classes=NUM_CLASSES, tokenizer=tokenizer,
                         cfg={"backbone": "tiny:bert", "max_len": 16, "freeze_layers": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for g in param_groups(model, 0.0) for p in g["params"]], lr=1.0)
    model(_text_batch(tokenizer))["logits"].logsumexp(1).sum().backward()
    opt.step()
    moved = {k for k, v in model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])}
    assert moved and not any(k.startswith(("encoder.embeddings.", "encoder.encoder.layer.0.")) for k in moved)
    assert any(k.startswith("encoder.encoder.layer.1.") for k in moved) and "classifier.weight" in moved
    from rakuten.errors import RakutenError
    with pytest.raises(RakutenError, match="has 2 layers"):
        create_model("text_mean", num_classes=NUM_CLASSES, tokenizer=tokenizer,
                     cfg={"backbone": "tiny:bert", "max_len": 16, "freeze_layers": 3})


def test_difficulty_weights_favour_weak_classes_not_rare_ones():
    """``loss.class_weights: difficulty`` weighs a class by how badly the starting features separate
    it (inner CV of the training rows), so on a balanced set, where frequency weights are all 1, the
    confusable classes get the larger weights."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 60)                       # balanced: frequency weights are all 1
    centres = np.array([[6.0, 0.0], [-6.0, 0.0], [0.0, 0.3], [0.0, -0.3]])   # 2 and 3 overlap
    feats = centres[labels] + rng.normal(size=(len(labels), 2))
    assert np.allclose(class_weights(labels, 1.0, 4), 1.0)
    w = class_weight_vector({"class_weights": "difficulty", "class_weight_power": 1.0}, labels, 4, feats)
    assert min(w[2], w[3]) > 2 * max(w[0], w[1])
    assert np.isclose(w[labels].mean(), 1.0)
    assert class_weight_vector({"class_weights": "difficulty", "class_weight_power": 0.0}, labels, 4, feats) is None
    loss = make_loss({"class_weights": "difficulty", "class_weight_power": 0.5}, labels, 4, feats)
    assert np.allclose(loss.weight.numpy(), difficulty_weights(feats, labels, 0.5, 4))
    with pytest.raises(RakutenError, match="difficulty needs embeddings"):
        class_weight_vector({"class_weights": "difficulty", "class_weight_power": 1.0}, labels, 4)
    with pytest.raises(RakutenError, match="choose frequency or difficulty"):
        make_loss({"class_weights": "rare"}, labels, 4)
