"""A WordPiece tokenizer trained locally on the training text (no hub), cached by content hash."""
from __future__ import annotations

import hashlib
from pathlib import Path


def train_wordpiece(texts, vocab_size: int = 8000, cache_dir: Path | None = None):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t]
    key = hashlib.sha256(("\n".join(texts[:50000]) + f"|{vocab_size}|{len(texts)}").encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"wordpiece_{key}.json" if cache_dir else None
    if path is not None and path.exists():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        # Accents matter in French (côté/cote) but case rarely does for product types.
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2,
                                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                            show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        from tokenizers.processors import TemplateProcessing
        tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                                ("[SEP]", tok.token_to_id("[SEP]"))])
        if path is not None:
            from rakuten.artifacts import atomic_path
            with atomic_path(path, suffix=".json") as tmp:
                tok.save(str(tmp))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
