from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from adds import towers as towers_module
from adds.towers import TINY_MODEL, TowerConfig, WeightsUnavailableError, load_towers


def test_projected_cls_token_equals_open_clip_encode_image(tiny_towers):
    pixels = torch.randn(3, 3, 32, 32)
    tokens = tiny_towers.encode_image_tokens(pixels)
    assert tokens.shape == (3, tiny_towers.tokens_per_image, tiny_towers.embed_dim) == (3, 17, 32)
    with torch.no_grad():
        reference = tiny_towers.clip.encode_image(pixels)
    torch.testing.assert_close(tokens[:, 0], reference, rtol=1e-5, atol=1e-5)


def test_patch_tokens_are_open_clips_output_tokens_projected(tiny_towers):
    pixels = torch.randn(2, 3, 32, 32)
    visual = tiny_towers.clip.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, patch = visual(pixels)  # (B, P, W), after ln_post, unprojected
    finally:
        visual.output_tokens = False
    tokens = tiny_towers.encode_image_tokens(pixels)
    torch.testing.assert_close(tokens[:, 1:], patch @ visual.proj, rtol=1e-5, atol=1e-5)


def test_batch_axis_is_kept(tiny_towers):
    pixels = torch.randn(4, 3, 32, 32)
    together = tiny_towers.encode_image_tokens(pixels)
    alone = tiny_towers.encode_image_tokens(pixels[2:3])
    torch.testing.assert_close(together[2:3], alone, rtol=1e-5, atol=1e-5)


def test_unaligned_tokens_have_raw_width(tiny_towers_unaligned):
    tokens = tiny_towers_unaligned.encode_image_tokens(torch.randn(1, 3, 32, 32))
    assert tokens.shape == (1, 17, tiny_towers_unaligned.visual_width) == (1, 17, 64)
    assert tiny_towers_unaligned.token_dim == 64


def test_towers_are_frozen(tiny_towers):
    assert all(not p.requires_grad for p in tiny_towers.parameters())
    tiny_towers.train()
    assert not tiny_towers.training and not tiny_towers.clip.training
    out = tiny_towers.encode_image_tokens(torch.randn(1, 3, 32, 32, requires_grad=True))
    assert not out.requires_grad


def test_seeded_random_towers_are_reproducible(tiny_towers):
    again = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=0))
    other = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=1))
    assert again.identity() == tiny_towers.identity()
    assert other.identity()["fingerprint"] != tiny_towers.identity()["fingerprint"]


def _quick_gelu_used(towers) -> bool:
    return any(isinstance(m, open_clip.model.QuickGELU) for m in towers.clip.modules())


def test_quick_gelu_follows_model_name():
    assert _quick_gelu_used(load_towers(TowerConfig(model=TINY_MODEL + "-quickgelu", pretrained=None)))
    assert not _quick_gelu_used(load_towers(TowerConfig(model=TINY_MODEL, pretrained=None)))
    assert _quick_gelu_used(load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, quick_gelu=True)))


def test_openai_tag_forces_quick_gelu_on_a_gelu_model_name(monkeypatch):
    seen = {}
    real_create_model = open_clip.create_model

    def fake_create_model(name, pretrained=None, force_quick_gelu=False, **kwargs):
        seen.update(name=name, pretrained=pretrained, quick_gelu=force_quick_gelu)
        return real_create_model(TINY_MODEL, pretrained=None, force_quick_gelu=force_quick_gelu)

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    monkeypatch.setattr(towers_module.hub, "host_reachable", lambda host, port: True)  # nothing is downloaded
    towers = load_towers(TowerConfig(model="ViT-B-32", pretrained="openai"))
    assert seen == {"name": "ViT-B-32", "pretrained": "openai", "quick_gelu": True}
    assert _quick_gelu_used(towers)
    load_towers(TowerConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert seen["quick_gelu"] is False


def test_offline_tag_fails_with_placement_instructions(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    monkeypatch.setattr(towers_module.hub, "host_reachable", lambda host, port: True)  # the failure comes later
    with pytest.raises(WeightsUnavailableError) as info:
        load_towers(TowerConfig(model="ViT-B-32-quickgelu", pretrained="openai", cache_dir=str(tmp_path)))
    message = str(info.value)
    assert "'openai'" in message and "ViT-B-32-quickgelu" in message
    assert str(tmp_path) in message and "--pretrained /path/to/" in message


def test_unknown_tag_and_unknown_model_are_named():
    with pytest.raises(ValueError, match="not-a-tag"):
        load_towers(TowerConfig(model=TINY_MODEL, pretrained="not-a-tag"))
    with pytest.raises(ValueError, match="No-Such-Model"):
        load_towers(TowerConfig(model="No-Such-Model", pretrained=None))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_state_dict_file_loads_the_same_weights(tiny_towers, tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in tiny_towers.clip.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    loaded = load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(path)))
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image_tokens(pixels), tiny_towers.encode_image_tokens(pixels))
    assert loaded.identity()["fingerprint"] == tiny_towers.identity()["fingerprint"]
    assert len(loaded.identity()["file_sha256"]) == 64


def test_weights_file_for_another_model_is_refused(tmp_path):
    path = tmp_path / "b32.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="does not fit open_clip model"):
        load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(path)))


def test_openai_torchscript_file_loads_with_quick_gelu(tmp_path):
    # An OpenAI release file is a TorchScript archive of a QuickGELU model stored in fp16.
    source = load_towers(TowerConfig(model=TINY_MODEL + "-quickgelu", pretrained=None, seed=3))
    source.clip.half().float()  # make the weights fp16-representable, as OpenAI's are
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(source.clip), str(path))
    assert towers_module._is_torchscript_archive(path)
    # The model name says GELU; the TorchScript file must still be loaded with QuickGELU.
    loaded = load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(path)))
    assert loaded.source["quick_gelu"] is True and _quick_gelu_used(loaded)
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image_tokens(pixels), source.encode_image_tokens(pixels))
    torch.testing.assert_close(loaded.encode_text(["a red circle"]), source.encode_text(["a red circle"]))


def test_encode_text_shape(tiny_towers):
    assert tiny_towers.encode_text(["a", "b c"]).shape == (2, 32)


def test_truncated_text_encoding_equals_open_clips_full_context(tiny_towers):
    prompts = ["a", "This photo contains a red circle on a striped background.", "x y"]
    full = tiny_towers.encode_text(prompts, truncate=False)
    with torch.no_grad():
        reference = tiny_towers.clip.encode_text(tiny_towers.tokenizer(prompts))
    torch.testing.assert_close(full, reference)
    torch.testing.assert_close(tiny_towers.encode_text(prompts), reference, rtol=1e-5, atol=1e-5)
