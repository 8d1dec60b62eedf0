"""Custom-text towers (open_clip ``CustomTextCLIP``): the built-in custom text config and Hugging Face text encoders
(xlm-roberta, roberta, mt5: open_clip's multilingual models) load, encode labels and round-trip an ADDS checkpoint.

Hugging Face models cannot be downloaded here: each test builds a tiny random text model and a tiny word-level
tokenizer in a local folder and names that folder as ``hf_model_name`` (open_clip reads it like a hub repository).
The tests that need ``transformers`` (an optional dependency) skip when it is not installed.
"""

from __future__ import annotations

import json
import sys

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from adds.model import ADDS, ADDSConfig
from adds.towers import TowerConfig, load_towers
from adds.towers.support import missing_dependency

WORDS = "a photo of the dog cat bird chien chat oiseau hund katze vogel un une le la ein eine foto".split()
VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8}
LABELS = ["dog", "chien", "hund", "cat", "chat", "katze"]


def _register(tmp_path, name: str, text_cfg: dict, **top) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"embed_dim": 32, "vision_cfg": VISION, "text_cfg": text_cfg, **top}))
    open_clip.add_model_config(path)
    return name


def _hf_text_model(folder, arch: str) -> str:
    """A tiny random Hugging Face text model of ``arch`` and a word-level tokenizer, saved in ``folder``."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                            special_tokens=[("<s>", 0), ("</s>", 2)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                         pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                         ).save_pretrained(str(folder))
    sizes = {"vocab_size": len(vocab), "pad_token_id": 1}
    if arch == "mt5":
        config = transformers.MT5Config(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                                        d_kv=16, decoder_start_token_id=0, eos_token_id=2, **sizes)
    else:
        kind = {"xlm-roberta": transformers.XLMRobertaConfig, "roberta": transformers.RobertaConfig}[arch]
        config = kind(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=40, **sizes)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(str(folder))
    return str(folder)


HF_ARCHS = {  # open_clip's own text_cfg entries for these towers (xlm-roberta-base-ViT-B-32, roberta-ViT-B-32...)
    "xlm-roberta": {"hf_pooler_type": "mean_pooler"},
    "roberta": {"hf_pooler_type": "mean_pooler", "hf_proj_type": "mlp"},
    "mt5": {"hf_pooler_type": "mean_pooler"},
}


@pytest.fixture(scope="module", params=sorted(HF_ARCHS))
def hf_model(request, tmp_path_factory):
    """``(open_clip model name, folder)`` of a tiny CustomTextCLIP with a Hugging Face text tower."""
    arch = request.param
    tmp = tmp_path_factory.mktemp(f"hf-{arch}")
    folder = _hf_text_model(tmp / arch, arch)
    text_cfg = {"hf_model_name": folder, "hf_tokenizer_name": folder, "context_length": 16, **HF_ARCHS[arch]}
    return _register(tmp, f"adds-test-{arch}-vit", text_cfg), folder


@pytest.fixture(scope="module")
def builtin_custom_text(tmp_path_factory):
    text_cfg = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
    return _register(tmp_path_factory.mktemp("custom"), "adds-test-custom-text-vit", text_cfg, custom_text=True)


def _check_towers(towers) -> None:
    assert isinstance(towers.clip, open_clip.CustomTextCLIP)
    embeddings = towers.encode_text(LABELS)  # (6, 32)
    with torch.no_grad():
        reference = towers.clip.encode_text(towers.tokenizer(LABELS))
    assert embeddings.shape == (len(LABELS), 32)
    torch.testing.assert_close(embeddings, reference)
    assert len({tuple(row.tolist()) for row in embeddings}) == len(LABELS)  # each language's word its own vector
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(towers.encode_image_tokens(pixels)[:, 0], towers.clip.encode_image(pixels),
                                   rtol=1e-5, atol=1e-5)
    identity = towers.identity()  # used to crash: CustomTextCLIP has no clip.text_projection
    assert len(identity["fingerprint"]) == 16 and towers.legacy_fingerprint() is None


def _round_trip(model: ADDS, tmp_path, **load) -> None:
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        expected = model(images, LABELS)  # (2, 6)
    model.save_pretrained(tmp_path / "head")
    loaded = ADDS.from_pretrained(tmp_path / "head", **load).eval()
    assert isinstance(loaded.towers.clip, open_clip.CustomTextCLIP)
    assert loaded.towers.identity()["fingerprint"] == model.towers.identity()["fingerprint"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, LABELS), expected)


def test_builtin_custom_text_tower_loads_encodes_and_round_trips(builtin_custom_text, tmp_path):
    towers = load_towers(TowerConfig(model=builtin_custom_text, pretrained=None, seed=4))
    _check_towers(towers)
    _round_trip(ADDS(ADDSConfig(towers=towers.config), towers=towers), tmp_path)


def test_hf_text_tower_loads_encodes_multilingual_labels_and_round_trips(hf_model, tmp_path):
    name, _ = hf_model
    towers = load_towers(TowerConfig(model=name, pretrained=None, seed=5))
    _check_towers(towers)
    model = ADDS(ADDSConfig(towers=towers.config), towers=towers)
    assert model.encode_labels(["chien", "Hund", "dog"]).shape == (3, 32)
    _round_trip(model, tmp_path)


def test_hf_text_tower_weights_from_a_local_file_round_trip(hf_model, tmp_path):
    """A trained multilingual CLIP shipped as one state-dict file (what open_clip's hub repositories hold)."""
    name, _ = hf_model
    source = load_towers(TowerConfig(model=name, pretrained=None, seed=6))
    path = tmp_path / "weights" / "open_clip_model.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in source.clip.state_dict().items()}, str(path))
    towers = load_towers(TowerConfig(model=name, pretrained=str(path)))
    torch.testing.assert_close(towers.encode_text(LABELS), source.encode_text(LABELS))
    assert towers.identity()["fingerprint"] == source.identity()["fingerprint"]
    _round_trip(ADDS(ADDSConfig(towers=towers.config), towers=towers), tmp_path)


def test_random_hf_text_towers_are_random_and_reproducible(hf_model):
    """pretrained=None builds the text model from its config (seeded), not with the folder's saved weights."""
    name, _ = hf_model
    first = load_towers(TowerConfig(model=name, pretrained=None, seed=7)).encode_text(LABELS)
    torch.testing.assert_close(load_towers(TowerConfig(model=name, pretrained=None, seed=7)).encode_text(LABELS),
                               first)
    assert not torch.allclose(load_towers(TowerConfig(model=name, pretrained=None, seed=8)).encode_text(LABELS),
                              first)


def test_hf_text_tower_without_transformers_is_refused_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    cfg = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    assert "pip install transformers" in missing_dependency(cfg)
    with pytest.raises(ValueError, match="pip install transformers") as info:
        load_towers(TowerConfig(model="xlm-roberta-base-ViT-B-32", pretrained=None))
    assert "xlm-roberta-base-ViT-B-32" in str(info.value)


def test_tagger_tags_with_multilingual_labels(hf_model):
    from adds.tagger import Tagger

    name, _ = hf_model
    tagger = Tagger.clip_baseline(name, None, device="cpu", labels=["chien", "Hund", "dog", "chat"], seed=2)
    (tags,) = tagger([torch.rand(3, 48, 40)], threshold=0.0)
    assert sorted(tag["label"] for tag in tags) == ["Hund", "chat", "chien", "dog"]
