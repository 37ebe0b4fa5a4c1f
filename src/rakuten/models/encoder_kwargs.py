"""Extra keyword arguments for a transformers encoder's forward in training and inference.

Imports only torch and (lazily) transformers: the GPU benchmark uses it on machines with nothing else.

FlauBERT (and XLM, whose code it copies) in transformers 5 build a key/value cache
(``EncoderDecoderCache`` of two ``DynamicCache``) on every forward when none is passed, and store
each layer's keys and values in it. A classifier never decodes, so that is wasted work and memory,
and under ``torch.compile`` the cache's per-layer ``is_initialized`` flags become guards that hit
dynamo's recompile limit (seen on an H200: the compiled FlauBERT fell back to eager). Passing
:data:`NO_KV_CACHE`, a stateless stand-in whose ``update`` returns the keys and values untouched,
computes the same outputs without the cache.
"""
from __future__ import annotations

import inspect


class NoKVCache:
    """A cache that caches nothing: ``get_seq_length() == 0``, ``update(k, v, ...) -> (k, v)``."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Always 0: nothing is cached."""
        return 0

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        """``(key_states, value_states)`` unchanged; nothing is stored."""
        return key_states, value_states

    def __getitem__(self, layer_idx):  # the pre-norm path indexes the cache per layer
        return self

    def __repr__(self) -> str:
        return "NoKVCache()"


NO_KV_CACHE = NoKVCache()
_CACHE_TYPES = ("flaubert", "xlm")


def encoder_kwargs(encoder) -> dict:
    """``{"cache": NO_KV_CACHE}`` for FlauBERT/XLM under transformers >= 5 (whose attention calls
    ``cache.update``); ``{}`` for every other encoder and for older transformers (dict caches)."""
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    if model_type not in _CACHE_TYPES:
        return {}
    try:
        # heavy: transformers
        import transformers
        major = int(str(transformers.__version__).split(".")[0])
        params = inspect.signature(encoder.forward).parameters
    except (ImportError, ValueError, TypeError):
        return {}
    return {"cache": NO_KV_CACHE} if major >= 5 and "cache" in params else {}
