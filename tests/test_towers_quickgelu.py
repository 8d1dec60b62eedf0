"""OpenAI weights need QuickGELU: detected from the file where possible (TorchScript, known release hashes, the hub
cache folder, a sidecar, OpenAI's extra entries), warned about loudly where not (issue 10.6)."""

from __future__ import annotations

import json
import logging
import re

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from adds.towers import TINY_MODEL, TowerConfig, load_towers, weights

QUICK = TINY_MODEL + "-quickgelu"


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def _quick_gelu_used(towers) -> bool:
    return any(isinstance(module, open_clip.model.QuickGELU) for module in towers.clip.modules())


@pytest.fixture()
def openai_like():
    """Towers trained with QuickGELU (as OpenAI's are), seed 3."""
    return load_towers(TowerConfig(model=QUICK, pretrained=None, seed=3))


def _state(towers) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in towers.clip.state_dict().items()}


def _save(path, state) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
    return str(path)


def _assert_same_tokens(loaded, source) -> None:
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image_tokens(pixels), source.encode_image_tokens(pixels))


def test_known_openai_release_hashes_come_from_open_clip():
    known = weights.openai_release_hashes()
    assert all(re.fullmatch(r"[0-9a-f]{64}", sha) for sha in known)
    assert {"RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"} <= set(known.values())
    assert weights._has_openai_release("ViT-B-32") and not weights._has_openai_release("ViT-L-14-CLIPA")


def test_file_with_an_openai_release_hash_gets_quick_gelu_under_a_gelu_name(openai_like, tmp_path, monkeypatch,
                                                                            caplog):
    path = _save(tmp_path / "ViT-B-32.pt", _state(openai_like))
    sha = weights.file_sha256(path)
    monkeypatch.setattr(weights, "openai_release_hashes", lambda: {sha: "ViT-B-32"})  # as if it were OpenAI's file
    with caplog.at_level(logging.WARNING, logger="adds.towers.weights"):
        loaded = load_towers(TowerConfig(model=TINY_MODEL, pretrained=path))
    assert _quick_gelu_used(loaded) and loaded.source["quick_gelu"] is True
    assert "OpenAI's ViT-B-32 release" in loaded.source["quick_gelu_reason"] and "QuickGELU" in caplog.text
    _assert_same_tokens(loaded, openai_like)


def test_file_in_the_hub_cache_of_an_openai_tag_gets_quick_gelu(openai_like, tmp_path):
    folder = next(name for name, tag in weights._quick_gelu_hub_folders().items() if tag == "ViT-B-32/openai")
    path = _save(tmp_path / "hub" / folder / "snapshots" / "abc" / "open_clip_pytorch_model.bin", _state(openai_like))
    loaded = load_towers(TowerConfig(model=TINY_MODEL, pretrained=path))
    assert _quick_gelu_used(loaded) and "ViT-B-32/openai" in loaded.source["quick_gelu_reason"]
    _assert_same_tokens(loaded, openai_like)


def test_sidecar_config_decides_quick_gelu(openai_like, tmp_path):
    path = _save(tmp_path / "repo" / "open_clip_model.safetensors", _state(openai_like))
    (tmp_path / "repo" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    loaded = load_towers(TowerConfig(model=TINY_MODEL, pretrained=path))
    assert _quick_gelu_used(loaded) and "open_clip_config.json" in loaded.source["quick_gelu_reason"]


def test_state_dict_with_openai_entries_gets_quick_gelu_and_loads(openai_like, tmp_path):
    """A state dict saved from OpenAI's own model keeps input_resolution/context_length/vocab_size entries."""
    state = {**_state(openai_like), "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
             "vocab_size": torch.tensor(49408)}
    loaded = load_towers(TowerConfig(model=TINY_MODEL, pretrained=_save(tmp_path / "openai-state.pt", state)))
    assert _quick_gelu_used(loaded) and "input_resolution" in loaded.source["quick_gelu_reason"]
    _assert_same_tokens(loaded, openai_like)


def test_plain_state_dict_under_a_gelu_name_warns_loudly(openai_like, tmp_path, monkeypatch, caplog):
    """Nothing in the file tells: GELU (what the name says), and a warning naming both ways to choose QuickGELU."""
    monkeypatch.setattr(weights, "_has_openai_release", lambda name: True)  # as ViT-B-32, ViT-L-14...
    path = _save(tmp_path / "fine-tune.safetensors", _state(openai_like))
    with caplog.at_level(logging.WARNING, logger="adds.towers.weights"):
        loaded = load_towers(TowerConfig(model=TINY_MODEL, pretrained=path))
    assert not _quick_gelu_used(loaded) and loaded.source["quick_gelu_reason"] is None
    (message,) = _warnings(caplog)
    assert message.startswith("WARNING") and f"{TINY_MODEL}-quickgelu" in message
    assert "quick_gelu=True" in message and "silently wrong" in message
    caplog.clear()
    told = load_towers(TowerConfig(model=TINY_MODEL, pretrained=path, quick_gelu=True))  # the user chose: no warning
    assert _quick_gelu_used(told) and not _warnings(caplog)
    _assert_same_tokens(told, openai_like)
    load_towers(TowerConfig(model=QUICK, pretrained=path))  # a -quickgelu name: no warning either
    assert not _warnings(caplog)


def test_no_warning_for_models_openai_never_released(openai_like, tmp_path, caplog):
    path = _save(tmp_path / "tiny.safetensors", _state(openai_like))
    with caplog.at_level(logging.WARNING, logger="adds.towers.weights"):
        load_towers(TowerConfig(model=TINY_MODEL, pretrained=path))
    assert not _warnings(caplog)


def test_torchscript_file_with_quick_gelu_false_is_refused(openai_like, tmp_path):
    openai_like.clip.half().float()
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(openai_like.clip), str(path))
    with pytest.raises(ValueError, match="TorchScript.*QuickGELU"):
        load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(path), quick_gelu=False))
    loaded = load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(path)))
    assert _quick_gelu_used(loaded) and "TorchScript" in loaded.source["quick_gelu_reason"]


def test_gelu_and_quick_gelu_give_different_tokens(openai_like, tmp_path):
    """Why all this matters: the wrong activation changes every token without any error."""
    path = _save(tmp_path / "tiny.safetensors", _state(openai_like))
    gelu = load_towers(TowerConfig(model=TINY_MODEL, pretrained=path, quick_gelu=False))
    pixels = torch.randn(2, 3, 32, 32)
    assert (gelu.encode_image_tokens(pixels) - openai_like.encode_image_tokens(pixels)).abs().max() > 1e-3
