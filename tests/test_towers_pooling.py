"""Every pooling variant of open_clip's VisionTransformer: token 0 is ``encode_image``, or the tower is refused."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from adds.towers import TowerConfig, load_towers


def _tiny_config(tmp_path, name: str, **vision) -> str:
    """Register a tiny open_clip config ``name`` (2 layers, width 64, 32 px) with extra ``vision_cfg`` entries."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, **vision},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
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
}


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
