"""Tower identity covers every weight: towers that differ anywhere -- also with equal projections -- get different
fingerprints, and a head or an explicitly named feature cache is refused on the wrong towers (issue 10.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adds.data.base import MultiLabelDataset, Record
from adds.decoder import DecoderConfig
from adds.features import ExtractConfig, FeatureCacheError, FeatureStore, extract_features
from adds.model import ADDS, ADDSConfig, CheckpointError
from adds.towers import TINY_MODEL, TowerConfig, load_towers
from adds.towers.identity import fingerprint, state_dict_sha256


def _towers(seed: int):
    return load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=seed))


def _same_projections_other_trunk():
    """Towers ``a`` and ``b``: equal visual and text projections, every other weight from another seed."""
    a, b = _towers(0), _towers(1)
    with torch.no_grad():
        b.clip.visual.proj.copy_(a.clip.visual.proj)
        b.clip.text_projection.copy_(a.clip.text_projection)
    return a, b


def _head(towers) -> ADDS:
    config = ADDSConfig(towers=towers.config, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32))
    return ADDS(config, towers=towers)


def test_every_weight_of_the_towers_changes_the_digest():
    towers = _towers(0)
    base = state_dict_sha256(towers.clip)
    state = towers.clip.state_dict()
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        flat = tensor.view(-1)
        before = flat[-1].item()
        flat[-1] += 1e-3  # the last element of each tensor: a trunk weight far from any projection
        assert state_dict_sha256(towers.clip) != base, name
        flat[-1] = before
    assert state_dict_sha256(towers.clip) == base


def test_equal_projections_different_trunks_get_different_fingerprints():
    a, b = _same_projections_other_trunk()
    assert a.legacy_fingerprint() == b.legacy_fingerprint()  # the old projection-only scheme could not tell them apart
    assert a.identity()["fingerprint"] != b.identity()["fingerprint"]
    pixels = torch.rand(1, 3, 32, 32)
    assert (a.encode_image_tokens(pixels) - b.encode_image_tokens(pixels)).abs().max() > 1e-2


def test_normalisation_is_part_of_the_fingerprint():
    digest = "0" * 64
    openai = {"mean": [0.481455, 0.457827, 0.408211], "std": [0.268630, 0.261303, 0.275777],
              "interpolation": "bicubic", "resize_mode": "shortest"}
    imagenet = {**openai, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert fingerprint(digest, openai) != fingerprint(digest, imagenet)


def test_head_is_refused_on_towers_with_the_same_projections(tmp_path):
    a, b = _same_projections_other_trunk()
    _head(a).save_pretrained(tmp_path / "head")
    with pytest.raises(CheckpointError, match="fingerprint") as info:
        ADDS.from_pretrained(tmp_path / "head", towers=b)
    assert "\n" not in str(info.value)
    ADDS.from_pretrained(tmp_path / "head", towers=a)  # the right towers load


def test_head_is_refused_on_a_weights_file_of_other_towers(tmp_path):
    from safetensors.torch import save_file

    a, b = _same_projections_other_trunk()
    _head(a).save_pretrained(tmp_path / "head")
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in b.clip.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="fingerprint"):
        ADDS.from_pretrained(tmp_path / "head", tower_weights=str(path))


def test_named_feature_cache_is_refused_on_towers_with_the_same_projections(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    dataset = MultiLabelDataset([Record(f"{i}.png", positives=(i % 2,)) for i in range(3)], ["red", "blue"],
                                name="identity", root=tmp_path / "images")
    a, b = _same_projections_other_trunk()
    config = ExtractConfig(input_size=32, batch_size=3, shard_size=4)
    extract_features(_head(a), dataset, tmp_path / "cache", config, progress=False)
    store = FeatureStore.open(tmp_path / "cache")
    store.check_compatible(_head(a), dataset, 32)
    with pytest.raises(FeatureCacheError, match=r"towers\.fingerprint"):
        store.check_compatible(_head(b), dataset, 32)
