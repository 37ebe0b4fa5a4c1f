"""The benchmarked architectures with random weights (no hub access): text encoders with a head on
the first token, timm image backbones with a linear head.
"""
from __future__ import annotations

from torch import nn

from rakuten.models.encoder_kwargs import encoder_kwargs
from rakuten.models.packing import is_packed, packed_states

from throughput.common import N_CLASSES, TEXT_MODELS, log


class TextClassifier(nn.Module):
    """Backbone + linear head on the first token: the model contract (``logits``, ``embeddings``)."""

    def __init__(self, backbone: nn.Module, hidden: int, n_classes: int = N_CLASSES):
        super().__init__()
        self.backbone = backbone
        self.encoder_kwargs = encoder_kwargs(backbone)  # FlauBERT: no per-forward KV cache
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, batch: dict) -> dict:
        if is_packed(batch):  # several texts per row (rakuten.models.packing): each one's first token
            emb = packed_states(self.backbone, batch, self.encoder_kwargs)[0][:, 0]
            return {"logits": self.head(self.dropout(emb)), "embeddings": emb}
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            **self.encoder_kwargs)
        h = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        emb = h[:, 0]
        return {"logits": self.head(self.dropout(emb)), "embeddings": emb}


class ImageClassifier(nn.Module):
    def __init__(self, name: str, n_classes: int = N_CLASSES):
        super().__init__()
        import timm
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0)
        self.head = nn.Linear(self.backbone.num_features, n_classes)

    def forward(self, batch: dict) -> dict:
        emb = self.backbone(batch["image"])
        return {"logits": self.head(emb), "embeddings": emb}


def build_text_model(name: str, attn: str, tiny: bool) -> tuple[nn.Module, str]:
    """Random-weight model of ``name``'s architecture; returns it and the attention actually used."""
    import transformers
    spec = TEXT_MODELS[name]
    cfg_cls = transformers.CamembertConfig if spec["family"] == "camembert" else transformers.FlaubertConfig
    kwargs = dict(spec["config"])
    if tiny:
        kwargs.update(spec["tiny"])
    config = cfg_cls(**kwargs)
    try:
        backbone = transformers.AutoModel.from_config(config, attn_implementation=attn)
    except (TypeError, ValueError, ImportError) as e:
        # transformers < 4.36 has no attn_implementation; FlauBERT has no SDPA path at all. The failed
        # call may have written the request into the config, so the fallback gets a fresh one.
        log(f"    note: attn_implementation={attn!r} unavailable for {name} ({type(e).__name__}); using eager")
        config = cfg_cls(**kwargs)
        try:
            backbone = transformers.AutoModel.from_config(config, attn_implementation="eager")
        except TypeError:
            backbone = transformers.AutoModel.from_config(config)
    used = getattr(backbone.config, "_attn_implementation", None) or "eager"
    hidden = getattr(config, "hidden_size", None) or getattr(config, "emb_dim")
    return TextClassifier(backbone.float(), hidden), used
