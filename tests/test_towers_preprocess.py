"""Weights from a local file keep (or are told) the normalisation they need, and checkpoints record it (issue 10.2)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.towers import TINY_MODEL, TowerConfig, load_towers
from adds.towers.preprocess import resolve_file_preprocess

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
OPENAI_MEAN = (0.481455, 0.457827, 0.408211)


@pytest.fixture()
def weights_file(tiny_towers, tmp_path):
    path = tmp_path / "weights" / "tiny.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in tiny_towers.clip.state_dict().items()}, str(path))
    return path


def test_clipa_file_gets_the_imagenet_statistics_its_tags_share(tmp_path):
    """A CLIPA weights file used to be normalised with OpenAI's statistics; every CLIPA tag uses ImageNet's."""
    path = tmp_path / "clipa.safetensors"
    for model in ("ViT-L-14-CLIPA", "ViT-H-14-CLIPA-336"):
        preprocess, where = resolve_file_preprocess(model, None, path, False)
        assert preprocess["mean"] == IMAGENET["mean"] and preprocess["std"] == IMAGENET["std"], model
        assert "shared by all tags" in where


def test_file_of_a_model_whose_tags_disagree_warns_and_can_be_told(tmp_path, caplog):
    path = tmp_path / "vit-l.safetensors"
    with caplog.at_level(logging.WARNING, logger="adds.towers.preprocess"):
        preprocess, where = resolve_file_preprocess("ViT-L-14", None, path, False)
    assert tuple(preprocess["mean"]) == OPENAI_MEAN and where == "open_clip default"
    assert "laion2b_s32b_b82k" in caplog.text and "preprocess_from" in caplog.text
    told, where = resolve_file_preprocess("ViT-L-14", "laion2b_s32b_b82k", path, False)
    assert told["mean"] == [0.5, 0.5, 0.5] and where == "tag laion2b_s32b_b82k"


@pytest.mark.parametrize("how", ["inline", "json-file", "sidecar"])
def test_file_weights_take_the_given_normalisation_into_model_and_checkpoint(weights_file, tmp_path, how):
    spec = None
    if how == "inline":
        spec = json.dumps(IMAGENET)
    elif how == "json-file":
        spec = str(tmp_path / "preprocess.json")
        (tmp_path / "preprocess.json").write_text(json.dumps({"preprocess_cfg": IMAGENET}))
    else:  # what open_clip's hub repositories ship next to the weights
        (weights_file.parent / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": IMAGENET}))
    towers = load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(weights_file), preprocess_from=spec))
    assert list(towers.mean) == IMAGENET["mean"] and list(towers.std) == IMAGENET["std"]
    assert towers.identity()["preprocess"]["mean"] == IMAGENET["mean"]
    model = ADDS(ADDSConfig(towers=towers.config, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32)),
                 towers=towers).eval()
    assert tuple(model.pyramid.mean.flatten().tolist()) == pytest.approx(IMAGENET["mean"])
    model.save_pretrained(tmp_path / "head")
    meta = json.loads((tmp_path / "head" / "config.json").read_text())
    assert meta["towers"]["preprocess"]["mean"] == IMAGENET["mean"]
    assert json.loads(meta["config"]["towers"]["preprocess_from"])["mean"] == IMAGENET["mean"]  # inline, no path
    for leftover in (tmp_path / "preprocess.json", weights_file.parent / "open_clip_config.json"):
        leftover.unlink(missing_ok=True)  # the checkpoint must not depend on them
    loaded = ADDS.from_pretrained(tmp_path / "head")
    assert list(loaded.towers.mean) == IMAGENET["mean"]
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images, ["a", "b"]), model(images, ["a", "b"]))


def test_other_normalisation_changes_the_fingerprint_and_is_refused_for_a_head(weights_file, tmp_path):
    from adds.model import CheckpointError

    plain = load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(weights_file)))
    spec = json.dumps(IMAGENET)
    told = load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(weights_file), preprocess_from=spec))
    assert plain.identity()["fingerprint"] != told.identity()["fingerprint"]
    ADDS(ADDSConfig(towers=told.config), towers=told).save_pretrained(tmp_path / "head")
    with pytest.raises(CheckpointError, match="preprocess"):
        ADDS.from_pretrained(tmp_path / "head", towers=plain)


def test_random_towers_preprocess_file_is_recorded_inline_not_as_a_path(tmp_path):
    (tmp_path / "pre.json").write_text(json.dumps(IMAGENET))
    towers = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, preprocess_from=str(tmp_path / "pre.json")))
    ADDS(ADDSConfig(towers=towers.config), towers=towers).save_pretrained(tmp_path / "head")
    text = (tmp_path / "head" / "config.json").read_text()
    assert str(tmp_path) not in text
    (tmp_path / "pre.json").unlink()
    assert list(ADDS.from_pretrained(tmp_path / "head").towers.mean) == IMAGENET["mean"]


@pytest.mark.parametrize(("spec", "message"), [
    ('{"mean": [0.5, 0.5]}', "list of 3 numbers"),
    ('{"mean": [0.5, 0.5, 0.5], "std": [0, 1, 1]}', "positive"),
    ('{"average": [0.5, 0.5, 0.5]}', "unknown preprocessing key"),
    ("no-such-tag", "neither a JSON file nor a pretrained tag"),
])
def test_bad_preprocess_from_is_one_line(weights_file, spec, message):
    with pytest.raises(ValueError, match=message) as info:
        load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(weights_file), preprocess_from=spec))
    assert "\n" not in str(info.value)
