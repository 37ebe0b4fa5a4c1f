"""XLM-R's Unigram tokenizer (multilingual-e5's) in about a quarter of the memory, with the same ids.

The ``tokenizers`` library holds a Unigram vocabulary in a byte trie with a hash map per node: for
XLM-R's 250,002 pieces that is 280 MiB resident, the largest single item of a served cpu bundle
(measured in ``benchmarks/bundle_bench.py``). This class keeps one dict (piece -> id) and a list of
scores, about 60 MiB, and segments each word with the Viterbi search ``tokenizers`` runs
(``Unigram::encode_optimized``): scores summed in float64, a later candidate replaces the best path to
a position only when strictly better (the earlier, shorter-starting piece wins a tie), a character
that is no piece becomes ``<unk>`` at ``min(score) - 10``, and runs of unknown characters fuse into one
``<unk>``. Everything around the model stays the library's own: the special tokens are split out of
the raw text first (leftmost-longest, never normalised), then each remaining span goes through the
file's normaliser and Metaspace pre-tokeniser objects (which cost little memory), and the template
adds ``<s> ... </s>``.

The ids equal ``PreTrainedTokenizerFast``'s on every text tested (the real product texts under
``../shared`` and edge cases: ``tests/test_unigram_tokenizer.py``). SentencePiece itself (which also
takes little memory) was tried first and rejected: it sums scores in float32, and 3 of 48,623 real
texts then tie differently (``Dati`` -> ``Da ti`` instead of ``D ati``).

Only what this project's text path reads is implemented: ``tok(texts, truncation=, max_length=,
add_special_tokens=)``, the special ids, ``len``, ``get_vocab`` and ``save_pretrained`` (the folder it
writes loads with ``AutoTokenizer`` too, as the fast tokenizer with the same ids).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from rakuten.errors import RakutenError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# written into tokenizer_config.json by save_pretrained: load_tokenizer reads a saved folder back as this class
CONFIG_KEY = "rakuten_tokenizer"
CONFIG_VALUE = "compact_unigram"
# the Rust model's penalty under the lowest piece score for a character that is no piece (K_UNK_PENALTY)
UNK_PENALTY = 10.0
# words kept with their ids (the Rust model caches 10,000); ~150 bytes each, so at most ~15 MiB
WORD_CACHE = 100_000
_SPECIAL_NAMES = {"<s>": ("bos", "cls"), "</s>": ("eos", "sep"), "<pad>": ("pad",), "<unk>": ("unk",),
                  "<mask>": ("mask",)}


def _tokenizer_config(folder: Path) -> dict:
    """The folder's ``tokenizer_config.json`` ({} when there is none or it is not a JSON object)."""
    cfg_file = folder / CONFIG_FILE
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    return cfg if isinstance(cfg, dict) else {}


def is_compact_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a tokenizer that ``UnigramTokenizer.save_pretrained`` wrote."""
    try:
        return _tokenizer_config(Path(folder)).get(CONFIG_KEY) == CONFIG_VALUE
    except (OSError, ValueError):   # no folder, or a config that is not JSON
        return False


class UnigramTokenizerError(RakutenError):
    """A tokenizer.json this class cannot reproduce exactly (another model, pre-tokeniser or template)."""


class UnigramTokenizer:
    """Compact tokenizer of a Unigram ``tokenizer.json`` with a Metaspace pre-tokeniser (XLM-R, e5)."""

    def __init__(self, spec: dict, source: Path | None = None, model_max_length: int = 512):
        # heavy: tokenizers (the normaliser and pre-tokeniser objects of the file)
        from tokenizers import Tokenizer

        model = spec.get("model") or {}
        pre = spec.get("pre_tokenizer") or {}
        if model.get("type") != "Unigram" or model.get("byte_fallback"):
            raise UnigramTokenizerError(f"{source}: not a Unigram model without byte fallback")
        if pre.get("type") != "Metaspace" or not pre.get("split") or pre.get("prepend_scheme") != "always":
            raise UnigramTokenizerError(f"{source}: pre-tokeniser {pre.get('type')} is not Metaspace(split, always)")
        added = spec.get("added_tokens") or []
        if any(not a.get("special") or a.get("normalized") or a.get("lstrip") or a.get("rstrip")
               or a.get("single_word") for a in added):
            raise UnigramTokenizerError(f"{source}: only raw special tokens are supported as added tokens")
        self.source = source
        vocab = model["vocab"]
        self._ids = {piece: i for i, (piece, _) in enumerate(vocab)}
        self._scores = [float(s) for _, s in vocab]
        if len(self._ids) != len(vocab):
            raise UnigramTokenizerError(f"{source}: duplicate pieces")
        self._max_piece = max(len(p) for p in self._ids)
        self._unk_id = int(model["unk_id"])
        self._unk_score = min(self._scores) - UNK_PENALTY
        self._specials = {a["content"]: int(a["id"]) for a in added}
        # leftmost-longest, as the library's added-vocabulary matcher
        self._special_re = re.compile("|".join(re.escape(s) for s in sorted(self._specials, key=len, reverse=True))) \
            if self._specials else None
        for content, names in _SPECIAL_NAMES.items():
            for n in names:
                setattr(self, f"{n}_token_id", self._specials.get(content))
                setattr(self, f"{n}_token", content if content in self._specials else None)
        self._template = self._parse_template((spec.get("post_processor") or {}).get("single") or [], source)
        # the file's own normaliser and pre-tokeniser, on a one-piece model (the vocabulary is ours)
        helper = dict(spec, model={"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]], "byte_fallback": False},
                      added_tokens=[], post_processor=None)
        tok = Tokenizer.from_str(json.dumps(helper))
        self._normalizer, self._pre_tokenizer = tok.normalizer, tok.pre_tokenizer
        self._cache: dict[str, list[int]] = {}
        self.model_max_length = int(model_max_length)

    def _parse_template(self, single: list, source) -> tuple[list[int], list[int]]:
        """(ids before, ids after) the text of the post-processor's single-sequence template."""
        if not single:
            return [], []
        before, after, seen = [], [], False
        for part in single:
            if "Sequence" in part:
                seen = True
            elif "SpecialToken" in part and part["SpecialToken"]["id"] in self._specials:
                (after if seen else before).append(self._specials[part["SpecialToken"]["id"]])
            else:
                raise UnigramTokenizerError(f"{source}: post-processor part {part} not supported")
        return before, after

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "UnigramTokenizer":
        """The tokenizer of a folder with ``tokenizer.json`` (and optionally ``tokenizer_config.json``)."""
        folder = Path(folder)
        with open(folder / TOKENIZER_FILE, encoding="utf-8") as f:
            spec = json.load(f)
        max_len = _tokenizer_config(folder).get("model_max_length")
        return cls(spec, folder, max_len if isinstance(max_len, int) else 512)

    def save_pretrained(self, out: str | Path) -> None:
        """The source folder's tokenizer files, marked so that ``load_tokenizer`` reads them back as this
        class (``AutoTokenizer`` reads them as the fast tokenizer, with the same ids)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if self.source is None:
            raise UnigramTokenizerError("a tokenizer built from a dict has no files to save")
        for name in (TOKENIZER_FILE, "special_tokens_map.json"):
            if (self.source / name).is_file():
                shutil.copyfile(self.source / name, out / name)
        cfg = {**_tokenizer_config(self.source), CONFIG_KEY: CONFIG_VALUE}
        (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")

    # ----------------------------------------------------------------------------------- encoding
    def __len__(self) -> int:
        return len(self._ids)

    def get_vocab(self) -> dict[str, int]:
        """A copy of the piece -> id table (what ``tokenizer_key`` fingerprints)."""
        return dict(self._ids)

    def __call__(self, texts, truncation: bool = False, max_length: int | None = None,
                 add_special_tokens: bool = True) -> dict:
        """``{"input_ids", "attention_mask"}`` of one text or a list, as the fast tokenizer returns them
        (truncation keeps the first ``max_length`` ids, the template's included)."""
        single = isinstance(texts, str)
        rows = [self.encode(t, truncation, max_length, add_special_tokens) for t in ([texts] if single else texts)]
        masks = [[1] * len(r) for r in rows]
        return {"input_ids": rows[0] if single else rows, "attention_mask": masks[0] if single else masks}

    def encode(self, text: str, truncation: bool = False, max_length: int | None = None,
               add_special_tokens: bool = True) -> list[int]:
        """The ids of one text: its spans around special tokens normalised, pre-tokenised and
        segmented word by word, truncated to ``max_length`` with the template's ids included."""
        before, after = self._template if add_special_tokens else ([], [])
        limit = None
        if truncation and max_length is not None:
            limit = max(0, int(max_length) - len(before) - len(after))
        ids: list[int] = []
        for span in self._spans(text):
            if isinstance(span, int):
                ids.append(span)
            else:
                for word, _ in self._pre_tokenizer.pre_tokenize_str(self._normalizer.normalize_str(span)):
                    ids.extend(self._word(word))
                    if limit is not None and len(ids) >= limit:
                        break     # words segment independently: the rest cannot change the kept ids
            if limit is not None and len(ids) >= limit:
                ids = ids[:limit]
                break
        return before + ids + after

    def _spans(self, text: str) -> list:
        """The raw text split around the special tokens (their ids) into spans to normalise."""
        if self._special_re is None:
            return [text]
        out, pos = [], 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                out.append(text[pos:m.start()])
            out.append(self._specials[m.group()])
            pos = m.end()
        if pos < len(text):
            out.append(text[pos:])
        return out

    def _word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = self._viterbi(word)
            if len(self._cache) < WORD_CACHE:
                self._cache[word] = ids
        return ids

    def _viterbi(self, w: str) -> list[int]:
        """The best-scoring segmentation of one pre-tokenised word (see the module docstring)."""
        n, get, scores, unk = len(w), self._ids.get, self._scores, self._unk_id
        best: list[float | None] = [0.0] + [None] * n
        start = [0] * (n + 1)
        piece = [0] * (n + 1)
        for i in range(n):
            here, single = best[i], False
            for length in range(1, min(self._max_piece, n - i) + 1):
                t = get(w[i:i + length])
                if t is None:
                    continue
                j, cand = i + length, scores[t] + here
                if best[j] is None or cand > best[j]:
                    best[j], start[j], piece[j] = cand, i, t
                single = single or length == 1
            if not single:
                j, cand = i + 1, self._unk_score + here
                if best[j] is None or cand > best[j]:
                    best[j], start[j], piece[j] = cand, i, unk
        out, end = [], n
        while end > 0:
            t = piece[end]
            if not (t == unk and out and out[-1] == unk):   # a run of unknown characters is one <unk>
                out.append(t)
            end = start[end]
        out.reverse()
        return out
