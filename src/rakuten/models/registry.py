"""A small registry + one factory for every trainable model.

    @register_model("text_cls")
    class TextCls(nn.Module): ...

    model = create_model("text_cls", cfg=model_cfg, num_classes=27, tokenizer=tok)

Configs name models by string; the training loop never knows which one it runs: every unimodal torch
model's ``forward(batch: dict) -> dict`` returns ``logits`` [B, C] and ``embeddings`` [B, D]; the
fusion networks (``fusion_*``) return ``logits`` and ``features``; ``tfidf_linear`` is a scikit-learn
model (``fit(texts, labels)``, ``predict_logits(texts)``). Labels travel in a batch as ``labels``.
"""
from __future__ import annotations

from typing import Callable

from rakuten.errors import RakutenError

_MODELS: dict[str, Callable] = {}


class UnknownModelError(RakutenError, KeyError):
    """A model name the registry does not know; the message lists the registered ones."""
    pass


def register_model(name: str):
    """Class or factory decorator: register it as ``name`` (a second registration of a name is an error)."""
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        fn.registry_name = name
        return fn
    return deco


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    _import_all()
    return sorted(_MODELS)


def model_class(name: str):
    """The constructor registered as ``name`` (for class-level helpers such as a fusion network's
    ``check_config``/``inputs``); raises UnknownModelError like ``create_model``."""
    _import_all()
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}") from None


def create_model(name: str, **kwargs):
    """Build the registered model ``name``.

    Args:
        name: registry name (``text_flat_tanh``, ``text_cls``, ``text_mean``, ``image_timm``, ``head_mlp``,
            ``head_logreg``, ``fusion_hierarchical``, ``fusion_baseline``, ``fusion_late``, ``tfidf_linear``,
            ``knn``, ``stacker_lgbm``, ``stacker_logreg``, ``stacker_blend``, ``stacker_caruana``).
        **kwargs: forwarded to the model's constructor; every model takes ``cfg`` (its config section:
            ``model:`` for the torch unimodal models and the heads, ``fusion:`` for the fusion networks,
            which also take ``in_dims``, ``tfidf:`` for ``tfidf_linear``, ``knn:`` for ``knn``, the whole
            stack config for the ``stacker_*`` estimators) and ``num_classes``.
    Raises:
        UnknownModelError: naming the registered models.
    """
    return model_class(name)(**kwargs)


def _import_all() -> None:
    # Registration happens at import; importing here keeps callers from needing to know the modules.
    from rakuten.models import fusion_nets, heads, image, knn, stackers, text, tfidf  # noqa: F401
