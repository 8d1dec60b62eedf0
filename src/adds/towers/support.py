"""Which open_clip towers ADDS can use, decided from the model config before any weights are fetched.

ADDS needs, per image crop, a global image embedding aligned with the text embeddings *and* the patch tokens in the
same space (token 0 and tokens ``1..`` of :meth:`~adds.towers.Towers.encode_image_tokens`, Eq. 3-4). Every image
tower open_clip builds falls in one of these groups (``tests/test_towers_pooling.py`` checks that every config
open_clip ships is classified, and each supported group on a tiny config):

=================================================  ==========  ====================================================
image tower (``vision_cfg``)                       ADDS        why
=================================================  ==========  ====================================================
ViT, ``pool_type="tok"`` (OpenAI, LAION, DFN,      supported   token 0 = the class token after ``ln_post``
MetaCLIP, worldwide...), also ``no_ln_pre`` /
``final_ln_after_pool`` / sin-cos positions
ViT, ``pool_type="avg"`` (the CLIPA family)        supported   token 0 = the mean of the patch tokens, normalised
                                                               as open_clip does (the class token is untrained)
ViT, ``pool_type="none"``                          refused     no single global embedding to align
ViT with ``attentional_pool`` (CoCa)               refused     its output tokens are pooler queries, not patches
CoCa (``multimodal_cfg``)                          refused     the contrastive embedding comes from the captioning
                                                               model's pooler, not from a CLIP image tower
ResNet (``layers`` is a list: RN50...)             refused     attention-pooled CNN: no class token, and its
                                                               feature map is not in the joint space
timm (``timm_model_name``: SigLIP, EVA,            refused     timm trunks pool with their own heads and open_clip
ConvNeXt, MobileCLIP, ViTamin...)                              projects only the pooled vector; aligning patch
                                                               tokens would need per-trunk work (not done)
=================================================  ==========  ====================================================

Text towers: the built-in text transformer (``CLIP``, any ``pool_type`` but ``"none"``) and ``CustomTextCLIP`` with
either the built-in transformer (``custom_text``) or a Hugging Face encoder (``hf_model_name``: xlm-roberta, mt5,
nllb, roberta -- multilingual labels; needs the optional ``transformers`` package).
"""

from __future__ import annotations

__all__ = ["SUPPORTED_POOLS", "missing_dependency", "reason_text", "refusal_reason", "tower_kind"]

#: Image-tower pool types whose global embedding ADDS can put in token 0.
SUPPORTED_POOLS = ("tok", "avg")


def tower_kind(model_cfg: dict) -> str:
    """A short name of the image tower an open_clip model config builds: ``vit-tok``, ``vit-avg``, ``resnet``..."""
    vision = model_cfg.get("vision_cfg", {}) or {}
    if "multimodal_cfg" in model_cfg:
        return "coca"
    if vision.get("timm_model_name"):
        return "timm"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "resnet"
    if vision.get("attentional_pool"):
        return "vit-attn"
    return f"vit-{vision.get('pool_type', 'tok')}"


_REASONS = {
    "coca": "is a CoCa model: its image embedding comes from the captioning model's attentional pooler, not from "
            "patch tokens in the joint space, so ADDS cannot use it",
    "timm": "has a timm image tower ({timm}); ADDS needs open_clip's VisionTransformer, whose class and patch "
            "tokens share the joint space after its projection (timm trunks project only their pooled vector)",
    "resnet": "has a ResNet image tower; ADDS needs open_clip's VisionTransformer (class and patch tokens in the "
              "joint space), a ResNet's feature map is not",
    "vit-attn": "has an attention-pooled image tower (CoCa-style): its output tokens are pooler queries, not image "
                "patches, so ADDS cannot use them",
    "vit-pool": "has pool_type '{pool}': its image tower has no single global embedding to align with the text",
    "text-none": "has text pool_type 'none': its text tower gives no single embedding per label",
}


def reason_text(kind: str, **details: str) -> str:
    """The one-line reason (after the model name) for refusing towers of ``kind`` (see :func:`tower_kind`)."""
    key = kind if kind in _REASONS else "vit-pool"
    return _REASONS[key].format(timm=details.get("timm", "?"), pool=details.get("pool", kind.removeprefix("vit-")))


def refusal_reason(model_cfg: dict) -> str | None:
    """Why ADDS cannot use the towers of an open_clip model config (one line), or ``None`` when it can."""
    vision = model_cfg.get("vision_cfg", {}) or {}
    text = model_cfg.get("text_cfg", {}) or {}
    kind = tower_kind(model_cfg)
    if kind in ("coca", "timm", "resnet", "vit-attn"):
        return reason_text(kind, timm=str(vision.get("timm_model_name")))
    pool = vision.get("pool_type", "tok")
    if pool not in SUPPORTED_POOLS:
        return reason_text("vit-pool", pool=str(pool))
    if text.get("pool_type") == "none" and not text.get("hf_model_name"):
        return reason_text("text-none")
    return None


def missing_dependency(model_cfg: dict) -> str | None:
    """The optional package an open_clip model config needs and that is not installed, as a one-line hint."""
    text = model_cfg.get("text_cfg", {}) or {}
    if text.get("hf_model_name"):
        try:
            import transformers  # noqa: F401
        except ImportError:
            return (f"has a Hugging Face text tower ({text['hf_model_name']}), which needs the optional package "
                    f"transformers: pip install transformers")
    return None
