"""Constants of the challenge and the benchmark (sizes, text length fit, known GPU peaks, the
models benchmarked), and the small helpers every benchmark uses.
"""
from __future__ import annotations

import gc
import json
import math
import statistics
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]   # the repository

N_TRAIN = 84_916          # labelled products
N_TEST = 13_812           # products of the challenge's test set
N_FOLDS = 5
N_CLASSES = 27            # prdtypecode values
IMAGE_SIDE = 500          # every catalogue image is a 500x500 JPEG

# length fit (see the docstring of benchmarks/train_throughput.py)
MEDIAN_WORDS = 35.0
MAX_WORDS = 2000.0
TOKENS_PER_WORD = 1.4
SPECIAL_TOKENS = 2

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name pattern, first match wins
NOMINAL_BF16_TFLOPS = [
    (r"GH200|H200", 989.0),
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100|H800", 989.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
]

TEXT_MODELS = {
    # base dimensions of the published checkpoints; weights are random (no hub access needed)
    "camembert-base": {
        "family": "camembert", "pad_id": 1, "vocab": 32005,
        "config": dict(vocab_size=32005, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                       pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5),
        "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64),
    },
    "flaubert/flaubert_base_cased": {
        "family": "flaubert", "pad_id": 2, "vocab": 68729,
        "config": dict(vocab_size=68729, emb_dim=768, n_layers=12, n_heads=12, max_position_embeddings=512,
                       pad_index=2, pad_token_id=2, layer_norm_eps=1e-6),
        "tiny": dict(vocab_size=1000, emb_dim=32, n_layers=2, n_heads=2),
    },
}
ALIASES = {
    "camembert": "camembert-base", "camembert/camembert-base": "camembert-base",
    "almanach/camembert-base": "camembert-base",
    "flaubert": "flaubert/flaubert_base_cased", "flaubert_base_cased": "flaubert/flaubert_base_cased",
    "flaubert-base-cased": "flaubert/flaubert_base_cased",
    "seresnext50": "seresnext50_32x4d", "image_loader": "image-loader", "loader": "image-loader",
}
IMAGE_MODEL = "seresnext50_32x4d"
# --all order: the image model before FlauBERT, so a tight time budget drops FlauBERT's extra variants
# first (CamemBERT's figures stand for both: same dimensions)
ALL_BENCHMARKS = ["image-loader", "camembert-base", IMAGE_MODEL, "flaubert/flaubert_base_cased"]


def log(msg: str = "") -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lognormal_fit(median_words: float = MEDIAN_WORDS, max_words: float = MAX_WORDS, n: int = N_TRAIN):
    """(mu, sigma) of ln(words): median -> mu; the longest of n rows sits at the 1 - 1/n quantile."""
    z = statistics.NormalDist().inv_cdf(1.0 - 1.0 / n)
    return math.log(median_words), math.log(max_words / median_words) / z


def sample_token_lengths(n: int, seq_len: int, rng: np.random.Generator, tokens_per_word: float = TOKENS_PER_WORD,
                         lengths_file: str | None = None) -> np.ndarray:
    if lengths_file:
        real = load_lengths(lengths_file)
        return np.clip(rng.choice(real, size=n, replace=True), 1, seq_len)
    mu, sigma = lognormal_fit()
    words = np.maximum(1.0, rng.lognormal(mu, sigma, size=n))
    tokens = np.ceil(words * tokens_per_word).astype(np.int64) + SPECIAL_TOKENS
    return np.clip(tokens, SPECIAL_TOKENS + 1, seq_len)


def load_lengths(spec: str) -> np.ndarray:
    """Token counts from ``FILE.npy``, or from a length histogram of ``benchmarks/padding_lengths.py``'s
    JSON: ``FILE.json:SET`` (``SET`` defaults to ``rakuten_text_fr_title``, the real titles)."""
    path, _, set_name = str(spec).partition(".json:")
    if spec.endswith(".json") or set_name:
        path = path if spec.endswith(".json") and not set_name else path + ".json"
        hist = json.loads(open(path).read())["sets"][set_name or "rakuten_text_fr_title"]["length_hist"]
        return np.repeat(np.asarray([int(k) for k in hist], dtype=np.int64), [int(v) for v in hist.values()])
    return np.load(spec).astype(np.int64).reshape(-1)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
