"""Tokenizers built locally from the training text (no hub), cached by content hash: a WordPiece one
for the ``tiny:*`` backbones, and each reduced backbone's own architecture's tokenizer (below).

The ``tokenizers`` WordPiece trainer is not deterministic (ties in its merges depend on hash-map
order: two runs on the same text gave different vocabularies), which breaks reproducible OOF and
resume-after-kill. So the vocabulary is built here by counting: the most frequent words (ties broken
alphabetically) plus every character as a word start and as a ``##`` continuation, so any word still
tokenizes (greedy longest match falls back to characters).
"""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
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
    """A deterministic WordPiece vocabulary ``{token: id}``: the specials, every character of the normalised
    words as a word start and as a ``##`` continuation, then the most frequent words (at least 2
    occurrences, 2+ characters; ties alphabetical) that fit in ``vocab_size``. The characters are always
    kept, so the vocabulary can exceed ``vocab_size``."""
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
    """A ``PreTrainedTokenizerFast`` over ``build_vocab`` of the non-empty ``texts`` ([CLS] ... [SEP]);
    with ``cache_dir``, the tokenizer is read from / saved to ``wordpiece_<hash of texts and size>.json`` there."""
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


# ------------------------------------------------------------------ the architectures' own tokenizers
# A reduced backbone (``reduced:<source>``, see backbones.py) is tokenized by its architecture's own
# tokenizer class, built here from a small vocabulary learned on the training text: a user whose hub
# download works can still fail at tokenization (a missing ``sentencepiece`` or ``sacremoses``), and
# the reduced run must fail the same way. Both builders are deterministic and cached by content hash.

def _text_key(texts, *extra) -> str:
    return hashlib.sha256(("\x1f".join(texts) + "|" + "|".join(map(str, extra))).encode()).hexdigest()[:12]


def train_sentencepiece(texts, tokenizer_class: str, model_file: str, vocab_size: int = 8000,
                        cache_dir: Path | None = None, model_type: str = "unigram"):
    """A SentencePiece model trained on ``texts`` (``sentencepiece``, one thread: deterministic), saved as
    ``model_file`` in a folder that ``transformers.<tokenizer_class>.from_pretrained`` loads as it
    loads the hub's (CamemBERT: ``CamembertTokenizer`` + ``sentencepiece.bpe.model``; XLM-R,
    DeBERTa-v2 likewise). The vocabulary is a soft limit: small data gives fewer pieces."""
    # heavy: sentencepiece (a reduced text backbone only) and transformers
    import sentencepiece as spm
    import transformers

    texts = [t for t in texts if t]
    key = _text_key(texts, tokenizer_class, model_file, vocab_size, model_type)
    folder = Path(cache_dir or tempfile_dir()) / f"spm_{tokenizer_class}_{key}"
    if not (folder / model_file).exists():
        buf = io.BytesIO()
        # <unk>, <s>, </s> at 0-2 as in the hub's models: XLM-R's converter drops the first three pieces
        # (fairseq's layout), so without them it would drop two real ones (seen: words split into letters)
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, vocab_size=int(vocab_size),
                                       model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
                                       unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
                                       input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / model_file, suffix=".model") as tmp:
            Path(tmp).write_bytes(buf.getvalue())
    return getattr(transformers, tokenizer_class).from_pretrained(str(folder))


def tempfile_dir() -> Path:
    """A per-process scratch folder for tokenizers built without a cache dir (tests)."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="rakuten_tok_"))
    return _SCRATCH


_SCRATCH: Path | None = None
XLM_SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"] + [f"<special{i}>" for i in range(10)]


def learn_bpe(word_counts: dict, n_merges: int, min_count: int = 2) -> list[tuple[str, str]]:
    """XLM-style BPE merges (the last symbol of a word carries ``</w>``), greedily by pair frequency;
    ties go to the smaller pair, so the merges are the same on every run. Pair counts are updated
    only for the words a merge touches."""
    words = {w: [*w[:-1], w[-1] + "</w>"] for w in word_counts if w}
    pairs: Counter = Counter()
    where: dict = {}
    for w, syms in words.items():
        for p in zip(syms, syms[1:]):
            pairs[p] += word_counts[w]
            where.setdefault(p, set()).add(w)
    merges = []
    while len(merges) < n_merges and pairs:
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if best[1] < min_count:
            break
        (a, b), _ = best
        merges.append((a, b))
        for w in sorted(where.pop((a, b), ())):
            syms, n = words[w], word_counts[w]
            for p in zip(syms, syms[1:]):
                pairs[p] -= n
                if pairs[p] <= 0:
                    del pairs[p]
            out, i = [], 0
            while i < len(syms):
                if i < len(syms) - 1 and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
            for p in zip(out, out[1:]):
                pairs[p] += n
                where.setdefault(p, set()).add(w)
    return merges


def train_flaubert_bpe(texts, vocab_size: int = 8000, cache_dir: Path | None = None):
    """A ``FlaubertTokenizer`` (Moses pre-tokenisation through ``sacremoses``, then BPE) whose
    ``vocab.json`` and ``merges.txt`` are learned here on ``texts``: the files FlaubERT ships, small."""
    # heavy: transformers (and sacremoses, which FlaubertTokenizer imports)
    import transformers

    texts = [t for t in texts if t]
    key = _text_key(texts, "flaubert", vocab_size)
    folder = Path(cache_dir or tempfile_dir()) / f"flaubert_bpe_{key}"
    if not (folder / "merges.txt").exists():
        folder.mkdir(parents=True, exist_ok=True)
        probe_dir = folder / "probe"
        probe_dir.mkdir(exist_ok=True)
        (probe_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(XLM_SPECIALS)}))
        (probe_dir / "merges.txt").write_text("")
        probe = transformers.FlaubertTokenizer(str(probe_dir / "vocab.json"), str(probe_dir / "merges.txt"))
        counts: Counter = Counter()
        for t in texts:   # the tokenizer's own pre-tokenisation, so the words are those it will see
            counts.update(probe.moses_tokenize(probe.moses_pipeline(probe.preprocess_text(t), "fr"), "fr"))
        chars = sorted({c for w in counts for c in w})
        base = chars + [c + "</w>" for c in chars]
        merges = learn_bpe(counts, max(0, int(vocab_size) - len(XLM_SPECIALS) - len(base)))
        vocab = XLM_SPECIALS + base + [a + b for a, b in merges]
        vocab = list(dict.fromkeys(vocab))   # a merge can rebuild a base symbol
        with atomic_path(folder / "vocab.json", suffix=".json") as tmp:
            Path(tmp).write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
        with atomic_path(folder / "merges.txt", suffix=".txt") as tmp:
            Path(tmp).write_text("".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return transformers.FlaubertTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
