"""Sequence packing on the model side: run a transformers encoder on packed rows, each text isolated.

A packed batch (``rakuten.data.text_dataset.PackCollate``) holds several texts per row of ``T``
tokens: ``input_ids`` [R, T], ``position_ids`` [R, T] (0, 1, ... restarted at every text; the
architecture's offset is added here), ``sequence_ids`` [R, T] (1, 2, ... per text within its row, 0 on
padding), and per product ``unpack_index`` [B, Lb] (the flat position ``row * T + offset`` of each of
its tokens) with ``unpack_mask`` [B, Lb]. :func:`packed_states` returns the product-major states
[B, Lb, H] and their mask, which the heads pool exactly as a padded batch.

Isolation: every token attends only to the tokens of its own text (a block-diagonal mask built on
the device from ``sequence_ids``); padding tokens attend to each other only, so no softmax row is
empty (an all-masked row gives NaN in some SDPA kernels). Positions restart per text, so each text
sees the embeddings it would see alone.

Per architecture (transformers 5.x, read from its source):

- BERT (e5) and RoBERTa/CamemBERT accept ``position_ids`` and an already built 4-D mask, which
  ``masking_utils.create_bidirectional_mask`` returns as is: a boolean mask (True = attend) for
  ``sdpa``, an additive float mask for ``eager`` (``eager_attention_forward`` adds it to the scores).
  RoBERTa/CamemBERT number positions from ``padding_idx + 1`` (``create_position_ids_from_input_ids``),
  so that offset is added; BERT's start at 0.
- FlauBERT/XLM build their own 2-D padding mask (``get_masks`` asserts a [B, L] mask) and take no 4-D
  one, so :func:`_flaubert_packed` runs the same layers in the same order itself, with the
  block-diagonal mask given to SDPA through the attention module's own projections (FlauBERT has no
  SDPA path in transformers; the math is its eager attention's). The padded forward stays the model's
  own; tests/test_packing.py checks both give the same logits and gradients.

Flash-attention varlen and FlexAttention are not used: flash-attn is not installed here, and a dense
mask over ``T <= 256`` costs little beside the linear layers. Other attention implementations are
refused with a one-line error instead of silently mixing texts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PACKED_KEYS = ("position_ids", "sequence_ids", "unpack_index", "unpack_mask")
_FLAUBERT_TYPES = ("flaubert", "xlm")


def is_packed(batch: dict) -> bool:
    """Whether ``batch`` is a packed text batch (it carries ``sequence_ids``)."""
    return "sequence_ids" in batch


def position_offset(encoder: nn.Module) -> int:
    """What to add to 0-based positions: ``padding_idx + 1`` for RoBERTa-style embeddings (CamemBERT,
    XLM-R), which number positions after the padding index; 0 for BERT and FlauBERT."""
    emb = getattr(encoder, "embeddings", None)
    if emb is not None and hasattr(emb, "create_position_ids_from_input_ids"):
        return int(emb.padding_idx) + 1
    return 0


def block_mask(sequence_ids: torch.Tensor) -> torch.Tensor:
    """[R, 1, T, T] boolean: token i may attend to token j of its row iff both have the same id."""
    return (sequence_ids[:, :, None] == sequence_ids[:, None, :]).unsqueeze(1)


def _attn_implementation(encoder: nn.Module) -> str:
    return str(getattr(encoder.config, "_attn_implementation", None) or "eager")


def packed_encode(encoder: nn.Module, batch: dict, encoder_kwargs: dict | None = None) -> torch.Tensor:
    """Last hidden states [R, T, H] of a packed batch, every text attending only to itself."""
    ids, seq = batch["input_ids"], batch["sequence_ids"]                   # [R, T]
    pos = batch["position_ids"] + position_offset(encoder)
    mask = block_mask(seq)                                                  # [R, 1, T, T]
    if getattr(encoder.config, "model_type", "") in _FLAUBERT_TYPES:
        return _flaubert_packed(encoder, ids, pos, seq > 0, mask)
    impl = _attn_implementation(encoder)
    if impl == "eager":
        # eager attention adds the mask to the scores: 0 where allowed, the dtype's minimum elsewhere
        # (fp32 here: under autocast the bf16 scores are promoted, as transformers' own masks do)
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=ids.device).masked_fill_(
            ~mask, torch.finfo(torch.float32).min)
    elif impl != "sdpa":
        raise ValueError(f"data.packing supports sdpa and eager attention, not {impl!r}: set "
                         f"model.attn_implementation=sdpa or data.packing=false")
    out = encoder(input_ids=ids, attention_mask=mask, position_ids=pos, **(encoder_kwargs or {}))
    return out.last_hidden_state


def _flaubert_packed(enc: nn.Module, ids: torch.Tensor, pos: torch.Tensor, real: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """FlauBERT/XLM ``forward`` (transformers 5.x: embeddings, layer norm, dropout, zeroed padding, then
    per layer attention + FFN, post- or pre-norm, LayerDrop) with a block-diagonal attention mask."""
    if getattr(enc, "causal", False) or getattr(enc, "is_decoder", False):
        raise ValueError("data.packing: a causal/decoder FlauBERT cannot be packed")
    keep = real.unsqueeze(-1)                                              # [R, T, 1]
    # XLM has neither LayerDrop nor pre-norm; FlauBERT has both
    layerdrop, pre_norm = float(getattr(enc, "layerdrop", 0.0)), bool(getattr(enc, "pre_norm", False))
    x = enc.embeddings(ids) + enc.position_embeddings(pos)
    x = enc.layer_norm_emb(x)
    x = F.dropout(x, p=enc.dropout, training=enc.training)
    x = x * keep.to(x.dtype)
    for i in range(enc.n_layers):
        if enc.training and layerdrop > 0.0 and torch.rand([]) < layerdrop:
            continue
        if not pre_norm:
            a = _mha_sdpa(enc.attentions[i], x, mask)
            x = enc.layer_norm1[i](x + F.dropout(a, p=enc.dropout, training=enc.training))
            x = enc.layer_norm2[i](x + enc.ffns[i](x))
        else:
            a = _mha_sdpa(enc.attentions[i], enc.layer_norm1[i](x), mask)
            x = x + F.dropout(a, p=enc.dropout, training=enc.training)
            x = x + enc.ffns[i](enc.layer_norm2[i](x))
        x = x * keep.to(x.dtype)
    return x


def _mha_sdpa(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FlauBERT's ``MultiHeadAttention`` (self-attention, no cache) through SDPA: the same projections,
    scaling 1/sqrt(head_dim), softmax and attention dropout, on a [R, 1, T, T] boolean mask."""
    bs, qlen, _ = x.shape
    nh, hd = attn.n_heads, attn.head_dim

    def heads(t):
        return t.view(bs, qlen, nh, hd).transpose(1, 2)                    # [R, nh, T, hd]
    q, k, v = heads(attn.q_lin(x)), heads(attn.k_lin(x)), heads(attn.v_lin(x))
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(hd),
                                         dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_lin(ctx.transpose(1, 2).reshape(bs, qlen, nh * hd))


def packed_states(encoder: nn.Module, batch: dict, encoder_kwargs: dict | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(states [B, Lb, H], mask [B, Lb]) per product, in batch order, from a packed batch: the same
    tensors a padded batch gives (padding positions hold some token's state; the mask zeroes them)."""
    packed = packed_encode(encoder, batch, encoder_kwargs)                  # [R, T, H]
    flat = packed.reshape(-1, packed.shape[-1])                             # [R*T, H]
    return flat[batch["unpack_index"]], batch["unpack_mask"]
