"""Every pooling variant of open_clip's VisionTransformer: token 0 is ``encode_image``, or the tower is refused."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from adds.towers import TowerConfig, core, load_towers, weights
from adds.towers.support import refusal_reason, tower_kind

TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
COCA = {"custom_text": True, "multimodal_cfg": {"context_length": 16, "width": 64, "heads": 1, "layers": 1,
                                                "vocab_size": 49408}}


def _tiny_config(tmp_path, name: str, text: dict | None = None, top: dict | None = None, **vision) -> str:
    """Register a tiny open_clip config ``name`` (2 layers, width 64, 32 px) with extra ``vision_cfg`` entries."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, **vision},
        "text_cfg": {**TEXT_CFG, **(text or {})},
        **(top or {}),
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


SUPPORTED = {
    "tok": {},
    "tok-final-ln": {"final_ln_after_pool": True},
    "tok-no-ln-pre": {"no_ln_pre": True},
    "avg": {"pool_type": "avg"},
    "avg-final-ln": {"pool_type": "avg", "final_ln_after_pool": True},
    "clipa-like": {"pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True},  # ViT-*-CLIPA's vision_cfg
    "sincos-pos": {"pos_embed_type": "sin_cos_2d"},
    "layer-scale": {"ls_init_value": 0.1},
    "mlp-ratio-head-width": {"mlp_ratio": 2.0, "head_width": 32},
}
#: ``vision_cfg`` keys of open_clip's ViT configs that only size the tower (the tiny configs set their own).
SIZE_KEYS = {"image_size", "layers", "width", "patch_size"}
#: ``vision_cfg`` keys the supported variants above exercise.
VARIANT_KEYS = {key for vision in SUPPORTED.values() for key in vision}


@pytest.mark.parametrize("variant", sorted(SUPPORTED))
def test_token_zero_is_encode_image_for_every_supported_pooling(tmp_path, variant):
    name = _tiny_config(tmp_path, f"adds-test-pool-{variant}", **SUPPORTED[variant])
    towers = load_towers(TowerConfig(model=name, pretrained=None, seed=1))
    pixels = torch.randn(3, 3, 32, 32)
    tokens = towers.encode_image_tokens(pixels)  # (3, 17, 32)
    with torch.no_grad():
        reference = towers.clip.encode_image(pixels)  # (3, 32)
    assert tokens.shape == (3, 17, 32)
    cosine = torch.nn.functional.cosine_similarity(tokens[:, 0], reference, dim=-1)
    torch.testing.assert_close(cosine, torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(tokens[:, 0], reference, rtol=1e-5, atol=1e-5)
    # patch tokens: ln_post of the last block's patch outputs, projected (also for final_ln_after_pool towers)
    visual = towers.clip.visual
    out = visual.forward_intermediates(pixels, indices=1, intermediates_only=True, output_fmt="NLC")
    torch.testing.assert_close(tokens[:, 1:], visual.ln_post(out["image_intermediates"][-1]) @ visual.proj,
                               rtol=1e-5, atol=1e-5)


def test_avg_pooled_token_zero_is_not_the_untrained_class_token(tmp_path):
    name = _tiny_config(tmp_path, "adds-test-pool-avg-cls", pool_type="avg", final_ln_after_pool=True)
    towers = load_towers(TowerConfig(model=name, pretrained=None, seed=2))
    pixels = torch.randn(2, 3, 32, 32)
    visual = towers.clip.visual
    out = visual.forward_intermediates(pixels, indices=1, intermediates_only=True, output_fmt="NLC",
                                       output_extra_tokens=True, normalize_intermediates=True)
    class_token = out["image_intermediates_prefix"][-1][:, 0] @ visual.proj  # what the old code returned
    with torch.no_grad():
        reference = towers.clip.encode_image(pixels)
    old = torch.nn.functional.cosine_similarity(class_token, reference, dim=-1)
    assert (old < 0.99).all()  # the class token of an avg-pooled tower is not its image embedding
    assert towers.identity()["pool"] == "avg"


@pytest.mark.parametrize(
    ("variant", "vision", "reason"),
    [
        ("none", {"pool_type": "none"}, "pool_type 'none'"),
        ("attn", {"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 1}, "attention-pooled"),
        ("attn-parallel", {"attentional_pool": "parallel", "attn_pooler_queries": 4, "attn_pooler_heads": 1},
         "attention-pooled"),
        ("resnet", {"layers": [1, 1, 1, 1], "width": 16, "head_width": 16}, "ResNet"),
    ],
)
def test_unsupported_poolings_are_refused_naming_model_and_reason(tmp_path, variant, vision, reason):
    name = _tiny_config(tmp_path, f"adds-test-pool-{variant}", **vision)
    with pytest.raises(ValueError, match=reason) as info:
        load_towers(TowerConfig(model=name, pretrained=None))
    message = str(info.value)
    assert name in message and "\n" not in message


def test_timm_and_coca_towers_are_refused_naming_model_and_reason(tmp_path):
    timm_name = _tiny_config(tmp_path, "adds-test-pool-timm", timm_model_name="test_vit", timm_pool="map",
                             timm_proj="none")
    coca_name = _tiny_config(tmp_path, "adds-test-pool-coca", text={"embed_cls": True},
                             top=COCA)
    for name, reason in ((timm_name, "timm image tower"), (coca_name, "CoCa model")):
        with pytest.raises(ValueError, match=reason) as info:
            load_towers(TowerConfig(model=name, pretrained=None))
        assert name in str(info.value) and "\n" not in str(info.value)


def test_built_timm_resnet_and_coca_modules_are_refused_too(tmp_path):
    """The same rules on built modules (towers made outside load_towers, e.g. meta_towers)."""
    pytest.importorskip("timm")
    cases = {
        _tiny_config(tmp_path, "adds-test-built-timm", timm_model_name="test_vit", timm_pool="avg",
                     timm_proj="linear"): "timm image tower",
        _tiny_config(tmp_path, "adds-test-built-resnet", layers=[1, 1, 1, 1], width=16, head_width=16): "ResNet",
        _tiny_config(tmp_path, "adds-test-built-coca", text={"embed_cls": True},
                     top=COCA): "CoCa model",
    }
    for name, reason in cases.items():
        clip = open_clip.create_model(name, pretrained=None, pretrained_image=False)
        with pytest.raises(ValueError, match=reason):
            core._check_visual(clip, name)


def test_every_open_clip_config_is_classified_and_each_variant_is_tested():
    """Every model config open_clip ships builds a tower kind this file tests: a supported ViT pooling whose
    ``vision_cfg`` keys the tiny configs above exercise, or a refused kind with its reason."""
    refused_kinds = {"resnet", "timm", "coca", "vit-attn", "vit-none"}
    seen = set()
    for name in open_clip.list_models():
        if name.startswith("adds-test-"):
            continue  # the tiny configs tests register (this file's refused ones among them)
        cfg = open_clip.get_model_config(name)
        kind = tower_kind(cfg)
        seen.add(kind)
        reason = refusal_reason(cfg)
        if kind in ("vit-tok", "vit-avg"):
            assert reason is None, (name, reason)
            extra = set(cfg["vision_cfg"]) - SIZE_KEYS - VARIANT_KEYS
            assert not extra, f"{name}: vision_cfg keys {extra} not exercised by a tiny supported variant"
            text_pool = cfg.get("text_cfg", {}).get("pool_type", "argmax")
            assert text_pool in TEXT_POOLS or "hf_model_name" in cfg["text_cfg"], (name, text_pool)
        else:
            assert kind in refused_kinds, (name, kind)
            assert reason and "\n" not in reason, name
    assert {"vit-tok", "vit-avg", "resnet", "timm", "coca"} <= seen


@pytest.mark.parametrize(("model", "tag"), [
    ("ViT-B-16-SigLIP", "webli"), ("RN50", "openai"), ("coca_ViT-B-32", "laion2b_s13b_b90k"),
    ("EVA02-B-16", "merged2b_s8b_b131k"), ("convnext_base_w", "laion2b_s13b_b82k"),
])
def test_refused_towers_are_refused_before_any_download(monkeypatch, model, tag):
    def no_download(*args, **kwargs):
        raise AssertionError("weights were requested for towers that are refused anyway")

    monkeypatch.setattr(open_clip, "create_model", no_download)
    monkeypatch.setattr(weights.hub, "host_reachable", no_download)
    monkeypatch.setattr(weights.hub, "cached_tag_file", no_download)
    with pytest.raises(ValueError) as info:
        load_towers(TowerConfig(model=model, pretrained=tag))
    assert f"'{model}'" in str(info.value) and "\n" not in str(info.value)


#: text-tower pool types of open_clip's built-in text transformer, with the config entries that go with them.
TEXT_POOLS = {
    "argmax": {},
    "eos": {"eos_id": 49407},
    "last": {"no_causal_mask": True, "proj_bias": True},
    "first": {"no_causal_mask": True},
}


@pytest.mark.parametrize("pool", sorted(TEXT_POOLS))
def test_text_embedding_equals_open_clip_for_every_text_pooling(tmp_path, pool):
    name = _tiny_config(tmp_path, f"adds-test-text-{pool}", text={"pool_type": pool, **TEXT_POOLS[pool]})
    towers = load_towers(TowerConfig(model=name, pretrained=None, seed=3))
    prompts = ["a", "a photo of a dog on a sofa", "x y z"]
    with torch.no_grad():
        reference = towers.clip.encode_text(towers.tokenizer(prompts))  # (3, 32)
    torch.testing.assert_close(towers.encode_text(prompts), reference, rtol=1e-5, atol=1e-5)
    assert reference.shape == (3, 32)


def test_text_pool_none_is_refused(tmp_path):
    name = _tiny_config(tmp_path, "adds-test-text-none", text={"pool_type": "none"})
    with pytest.raises(ValueError, match="text pool_type 'none'") as info:
        load_towers(TowerConfig(model=name, pretrained=None))
    assert name in str(info.value)


def test_meta_towers_apply_the_same_rules_without_weights():
    """Benchmarks build real-size towers on the meta device: CLIPA is avg-pooled there too, ResNets are refused."""
    assert core.meta_towers("ViT-L-14-CLIPA").pool == "avg"
    with pytest.raises(ValueError, match="'RN50' has a ResNet image tower"):
        core.meta_towers("RN50")
