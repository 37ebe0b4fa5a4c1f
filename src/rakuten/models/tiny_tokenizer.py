"""A WordPiece tokenizer built locally from the training text (no hub), cached by content hash.

The ``tokenizers`` WordPiece trainer is not deterministic (ties in its merges depend on hash-map
order: two runs on the same text gave different vocabularies), which breaks reproducible OOF and
resume-after-kill. So the vocabulary is built here by counting: the most frequent words (ties broken
alphabetically) plus every character as a word start and as a ``##`` continuation, so any word still
tokenizes (greedy longest match falls back to characters).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing

from rakuten.artifacts import atomic_path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _base_tokenizer(vocab: dict):
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    # Accents matter in French (côté/cote) but case rarely does for product types.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok


def build_vocab(texts, vocab_size: int) -> dict:
    probe = _base_tokenizer({t: i for i, t in enumerate(SPECIALS)})
    words: Counter = Counter()
    for t in texts:
        norm = probe.normalizer.normalize_str(t)
        words.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(norm))
    chars = sorted({c for w in words for c in w})
    pieces = chars + ["##" + c for c in chars]
    budget = max(0, vocab_size - len(SPECIALS) - len(pieces))
    top = [w for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if n >= 2 and len(w) > 1][:budget]
    ordered = SPECIALS + pieces + sorted(top)
    return {t: i for i, t in enumerate(ordered)}


def train_wordpiece(texts, vocab_size: int = 8000, cache_dir: Path | None = None):
    # heavy: transformers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t]
    key = hashlib.sha256(("\x1f".join(texts) + f"|{vocab_size}").encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"wordpiece_{key}.json" if cache_dir else None
    if path is not None and path.exists():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = _base_tokenizer(build_vocab(texts, vocab_size))
        if path is not None:
            with atomic_path(path, suffix=".json") as tmp:
                tok.save(str(tmp))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
