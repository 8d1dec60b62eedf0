"""Checkpoints refer to tower weights portably (name + SHA-256 + relative path), never by an absolute path, and the
reference is resolved on load (issue 11.10)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig, CheckpointError
from adds.towers import TINY_MODEL, TowerConfig, load_towers


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.fixture()
def trained(tiny_towers, tmp_path):
    """``(project folder, scores)``: weights in project/weights/, a head trained on them in project/runs/head."""
    project = tmp_path / "project"
    weights = project / "weights" / "tiny-vit.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tiny_towers.clip.state_dict().items()}, str(weights))
    towers = load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(weights)))
    config = ADDSConfig(towers=towers.config, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32))
    model = ADDS(config, towers=towers).eval()
    model.save_pretrained(project / "runs" / "head")
    with torch.no_grad():
        scores = model(IMAGES, LABELS)
    return project, scores


IMAGES = torch.rand(2, 3, 32, 32)
LABELS = ["red", "blue"]


def _scores(directory, **kwargs):
    with torch.no_grad():
        return ADDS.from_pretrained(directory, **kwargs).eval()(IMAGES, LABELS)


def test_checkpoint_holds_no_absolute_path(trained, tmp_path):
    project, _ = trained
    meta = json.loads((project / "runs" / "head" / "config.json").read_text())
    assert not [text for text in _strings(meta) if text.startswith("/") or str(tmp_path) in text]
    record = meta["towers"]["weights_file"]
    assert record["name"] == "tiny-vit.safetensors" and len(record["sha256"]) == 64
    assert record["relative_path"] == "../../weights/tiny-vit.safetensors"
    assert meta["config"]["towers"]["pretrained"] == "tiny-vit.safetensors"


def test_moved_project_loads_through_the_relative_path(trained, tmp_path):
    project, scores = trained
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(project, moved)
    shutil.rmtree(project)
    torch.testing.assert_close(_scores(moved / "runs" / "head"), scores)


def test_weights_next_to_the_checkpoint_or_on_the_search_path(trained, tmp_path, monkeypatch):
    project, scores = trained
    alone = tmp_path / "shipped" / "head"
    shutil.copytree(project / "runs" / "head", alone)
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    shutil.move(str(project / "weights" / "tiny-vit.safetensors"), str(shelf / "tiny-vit.safetensors"))
    monkeypatch.setenv("ADDS_WEIGHTS_PATH", str(shelf))
    torch.testing.assert_close(_scores(alone), scores)
    monkeypatch.delenv("ADDS_WEIGHTS_PATH")
    shutil.copy(shelf / "tiny-vit.safetensors", alone / "tiny-vit.safetensors")
    torch.testing.assert_close(_scores(alone), scores)


def test_explicit_tower_weights_path_is_used(trained, tmp_path):
    project, scores = trained
    renamed = tmp_path / "renamed.safetensors"
    shutil.move(str(project / "weights" / "tiny-vit.safetensors"), str(renamed))
    torch.testing.assert_close(_scores(project / "runs" / "head", tower_weights=str(renamed)), scores)


def test_missing_or_changed_weights_are_one_line_errors(trained, tmp_path):
    project, _ = trained
    weights = project / "weights" / "tiny-vit.safetensors"
    other = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=9))
    save_file({k: v.contiguous() for k, v in other.clip.state_dict().items()}, str(weights))  # same name, other file
    with pytest.raises(CheckpointError) as info:
        ADDS.from_pretrained(project / "runs" / "head")
    message = str(info.value)
    assert "tiny-vit.safetensors" in message and "--tower-weights" in message and "\n" not in message
    weights.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        ADDS.from_pretrained(project / "runs" / "head")


def test_legacy_checkpoint_with_an_absolute_path_still_loads(trained):
    """Checkpoints written before portable references recorded ``pretrained`` as an absolute path."""
    project, scores = trained
    path = project / "runs" / "head" / "config.json"
    meta = json.loads(path.read_text())
    del meta["towers"]["weights_file"]
    meta["config"]["towers"]["pretrained"] = str(project / "weights" / "tiny-vit.safetensors")
    path.write_text(json.dumps(meta))
    torch.testing.assert_close(_scores(project / "runs" / "head"), scores)


def test_recorded_cache_dir_of_another_machine_falls_back_to_the_default_cache(tmp_path):
    towers = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, cache_dir=str(tmp_path / "alice-cache")))
    ADDS(ADDSConfig(towers=towers.config), towers=towers).save_pretrained(tmp_path / "head")
    (tmp_path / "alice-cache").mkdir()
    assert ADDS.from_pretrained(tmp_path / "head").towers.config.cache_dir == str(tmp_path / "alice-cache")
    (tmp_path / "alice-cache").rmdir()  # this machine has no such folder: the default cache, not a mkdir there
    assert ADDS.from_pretrained(tmp_path / "head").towers.config.cache_dir is None
