"""A small registry + one factory for every trainable model.

    @register_model("text_cls")
    class TextCls(nn.Module): ...

    model = create_model("text_cls", cfg=model_cfg, num_classes=27, tokenizer=tok)

Configs name models by string; the training loop never knows which one it runs: every model's
``forward(batch: dict) -> dict`` returns ``logits`` [B, C] and ``embeddings`` [B, D].
"""
from __future__ import annotations

from typing import Callable

from rakuten.errors import RakutenError

_MODELS: dict[str, Callable] = {}


class UnknownModelError(RakutenError, KeyError):
    pass


def register_model(name: str):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        fn.registry_name = name
        return fn
    return deco


def list_models() -> list[str]:
    _import_all()
    return sorted(_MODELS)


def create_model(name: str, **kwargs):
    """Build the registered model ``name``.

    Args:
        name: registry name (``text_flat_tanh``, ``text_cls``, ``text_mean``, ``image_timm``, ``head_mlp``).
        **kwargs: forwarded to the model's constructor; every model takes ``cfg`` (the ``model:``
            section of an experiment config) and ``num_classes``.
    Raises:
        UnknownModelError: naming the registered models.
    """
    _import_all()
    try:
        ctor = _MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}") from None
    return ctor(**kwargs)


def _import_all() -> None:
    # Registration happens at import; importing here keeps callers from needing to know the modules.
    from rakuten.models import heads, image, text  # noqa: F401
