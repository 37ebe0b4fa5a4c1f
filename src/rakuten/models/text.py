"""Text classifiers: a transformers encoder, a pooling, an optional dense layer, a linear classifier.

The three poolings reproduce the thesis's base models:

- ``text_flat_tanh``: CamemBERT in Verma et al. / the thesis -- every token state flattened
  ([B, L*H]), dense, tanh, classifier. The encoder runs on dynamically padded batches; the hidden
  states are zero-padded to ``max_len`` before flattening (masked positions are zeroed), so the
  dense layer always sees a fixed width.
- ``text_cls``: FlauBERT -- the first token's state.
- ``text_mean``: E5 -- mean over the attention mask (E5 has no pooler).

Packed batches (``data.packing``; ``rakuten.models.packing``): the encoder runs on rows holding several
texts, each isolated; the states are then gathered back per product ([B, Lb, H] with its mask), so every
pooling reads the same tensors as on a padded batch. For ``text_flat_tanh`` that means: each product's
own first ``max_len`` token states (all of them: its tokens were cut to ``max_len``), zero-padded to
``max_len``, exactly the padded path's input to the dense layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rakuten.defaults import EXPERIMENT_DEFAULTS
from rakuten.errors import RakutenError
from rakuten.models.backbones import load_text_backbone
from rakuten.models.encoder_kwargs import encoder_kwargs
from rakuten.models.packing import is_packed, packed_states
from rakuten.models.registry import register_model

# a model section given without a key (a test's dict) gets the experiment default, as a config does
_M = EXPERIMENT_DEFAULTS["model"]


class TextClassifier(nn.Module):
    """A text encoder (hub, tiny:* or pypi:*), a pooling of its token states and a linear classifier;
    subclasses choose the pooling."""
    pooling = "cls"

    def __init__(self, cfg, num_classes: int, tokenizer=None, backbone=None):
        super().__init__()
        self.max_len = int(cfg.get("max_len", 128))
        self.encoder = backbone if backbone is not None else load_text_backbone(
            cfg["backbone"], tokenizer=tokenizer, max_len=self.max_len,
            attn_implementation=cfg.get("attn_implementation", "sdpa"), pretrained=cfg.get("pretrained", _M["pretrained"]))
        if getattr(self.encoder, "pooler", None) is not None:
            # BERT/CamemBERT's pooler is never used by these heads: dropping it saves its weights and
            # keeps DDP from waiting for gradients that never come.
            self.encoder.pooler = None
        freeze_lower_layers(self.encoder, int(cfg.get("freeze_layers", _M["freeze_layers"]) or 0))
        if cfg.get("grad_checkpointing", _M["grad_checkpointing"]) and hasattr(self.encoder, "gradient_checkpointing_enable"):
            self.encoder.gradient_checkpointing_enable()
        hidden = _hidden_size(self.encoder.config)
        self._encoder_kwargs = encoder_kwargs(self.encoder)  # FlauBERT: no KV cache (see encoder_kwargs)
        self.dropout = nn.Dropout(float(cfg.get("dropout", _M["dropout"])))
        if self.pooling == "flat":
            head_dim = int(cfg.get("head_dim", hidden))
            self.dense = nn.Linear(self.max_len * hidden, head_dim)
            self.embed_dim = head_dim
        else:
            self.dense = None
            self.embed_dim = hidden
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The embedding [B, D] of token states [B, L, H] under ``attention_mask`` [B, L]."""
        # states [B, L, H], mask [B, L]
        if self.pooling == "cls":
            return states[:, 0]
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(states.dtype)
            return (states * m).sum(1) / m.sum(1).clamp_min(1.0)
        # flat: zero masked positions, pad to max_len so the dense layer's width is fixed
        states = states * mask.unsqueeze(-1).to(states.dtype)
        pad = self.max_len - states.shape[1]
        if pad > 0:
            states = F.pad(states, (0, 0, 0, pad))
        return torch.tanh(self.dense(self.dropout(states[:, : self.max_len].flatten(1))))

    def forward(self, batch: dict) -> dict:
        """batch ``input_ids``/``attention_mask`` [B, L] -> ``logits`` [B, C], ``embeddings`` [B, D]."""
        if is_packed(batch):
            # input_ids [R, T] packed rows -> per product states [B, Lb, H] and mask [B, Lb]
            states, mask = packed_states(self.encoder, batch, self._encoder_kwargs)
        else:
            ids, mask = batch["input_ids"], batch["attention_mask"]      # [B, L]
            states = self.encoder(input_ids=ids, attention_mask=mask, **self._encoder_kwargs).last_hidden_state  # [B, L, H]
        emb = self.pool(states, mask)                                    # [B, D]
        return {"logits": self.classifier(self.dropout(emb)), "embeddings": emb}

    def backbone_parameters(self):
        """The encoder's parameters (a lower learning rate may apply to them)."""
        return self.encoder.parameters()


def freeze_lower_layers(encoder: nn.Module, n: int) -> None:
    """Fix the token embeddings and the lower ``n`` transformer layers of a BERT-layout encoder
    (BERT, RoBERTa/CamemBERT, E5): only the upper layers and the head train.

    On 2 CPU cores the backward pass through the lower layers is most of a step's cost; nothing below
    the first trainable layer needs a gradient, so autograd stores no activations for it.
    """
    if n <= 0:
        return
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if getattr(encoder, "embeddings", None) is None or layers is None:
        raise RakutenError(f"model.freeze_layers: {type(encoder).__name__} has no BERT-style "
                           f"embeddings + encoder.layer; set model.freeze_layers=0")
    if n > len(layers):
        raise RakutenError(f"model.freeze_layers={n}, but the encoder has {len(layers)} layers")
    for module in [encoder.embeddings, *layers[:n]]:
        for p in module.parameters():
            p.requires_grad_(False)


def _hidden_size(config) -> int:
    for attr in ("hidden_size", "emb_dim", "dim", "d_model"):
        if hasattr(config, attr):
            return int(getattr(config, attr))
    raise ValueError(f"cannot find the hidden size of {type(config).__name__}")


@register_model("text_flat_tanh")
class TextFlatTanh(TextClassifier):
    """``text_flat_tanh``: every token state flattened, dense, tanh (the thesis's CamemBERT head)."""
    pooling = "flat"


@register_model("text_cls")
class TextCls(TextClassifier):
    """``text_cls``: the first token's state (the thesis's FlauBERT head)."""
    pooling = "cls"


@register_model("text_mean")
class TextMean(TextClassifier):
    """``text_mean``: the mean of the unmasked token states (E5)."""
    pooling = "mean"
