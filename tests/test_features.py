"""Frozen-feature cache: stored tokens equal the model's, resumption, integrity checks, ranks, label cache."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from adds.data.base import MultiLabelDataset, Record, SquashResize
from adds.data.images import load_image
from adds.decoder import DecoderConfig
from adds.features import (
    CachedFeatureDataset,
    ExtractConfig,
    FeatureCacheError,
    FeatureStore,
    build_manifest,
    dispose_cached_crops,
    extract_features,
    label_embedding_cache,
    pending_shards,
)
from adds.model import ADDS, ADDSConfig
from adds.pyramid import PyramidConfig
from adds.towers import TINY_MODEL, TowerConfig, load_towers

VOCAB = ["red", "green", "blue"]
# 64 px on the 32 px tiny tower: levels [0, 1] = 1 + 4 crops of 17 tokens, joint dim 32.
CONFIG = ExtractConfig(input_size=64, batch_size=3, shard_size=4)
N_TOKENS, DIM = 5 * 17, 32


def tiny_model(towers, levels=None) -> ADDS:
    config = ADDSConfig(towers=towers.config, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32),
                        pyramid=PyramidConfig(levels=levels))
    return ADDS(config, towers=towers)


@pytest.fixture()
def dataset(tmp_path) -> MultiLabelDataset:
    """10 records: 8 real PNGs of different sizes, a corrupt file at index 2 and a missing one at index 6."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for i in range(8):
        pixels = rng.integers(0, 256, (30 + 7 * i, 50 - 2 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i}.png")
        records.append(Record(f"img{i}.png", positives=(i % 3,), unknown=((i + 1) % 3,) if i == 4 else ()))
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    records.insert(2, Record("corrupt.png", positives=(0,)))
    records.insert(6, Record("missing.png", positives=(1,)))
    return MultiLabelDataset(records, VOCAB, name="fixture", root=images)


@pytest.fixture()
def model(tiny_towers) -> ADDS:
    return tiny_model(tiny_towers)


def reference_tokens(model, dataset, indices) -> torch.Tensor:
    images = torch.stack([SquashResize(64)(load_image(dataset.path(i))) for i in indices])
    return model.forward_features(images)  # (n, N, D)


def count_calls(model, monkeypatch, fail_after: int | None = None) -> list[int]:
    """Wrap ``model.forward_features``: returns the list of batch sizes it was called with; optionally crash."""
    calls: list[int] = []
    original = model.forward_features

    def wrapped(images):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("simulated kill")
        calls.append(images.shape[0])
        return original(images)

    monkeypatch.setattr(model, "forward_features", wrapped)
    return calls


def test_extract_stores_the_models_tokens_and_skips_bad_images(model, dataset, tmp_path):
    store = extract_features(model, dataset, tmp_path / "cache", CONFIG, progress=False)
    good = [i for i in range(10) if i not in (2, 6)]
    assert store.record_indices.tolist() == good
    assert len(store) == 8
    assert sorted(path.rsplit("/", 1)[-1] for path, _ in store.failed) == ["corrupt.png", "missing.png"]
    assert all(reason for _, reason in store.failed)
    assert store.failed_indices == [2, 6]
    tokens = store.tokens(torch.arange(len(store)))
    assert tokens.dtype == torch.float16 and tokens.shape == (8, N_TOKENS, DIM)
    expected = reference_tokens(model, dataset, good)
    torch.testing.assert_close(tokens.float(), expected, atol=2e-3, rtol=2e-3)
    # arbitrary row order and repeats, across shards
    torch.testing.assert_close(store.tokens([7, 0, 4, 4]), tokens[[7, 0, 4, 4]])
    manifest = store.manifest
    assert manifest["num_tokens"] == N_TOKENS and manifest["token_dim"] == DIM and manifest["dtype"] == "float16"
    assert manifest["pyramid"]["levels"] == [0, 1] and manifest["crop_levels"] == [0, 1, 1, 1, 1]
    assert manifest["input_size"] == 64 and manifest["vocabulary"] == VOCAB
    assert manifest["towers"]["fingerprint"] == model.towers.identity()["fingerprint"]
    assert manifest["dataset"]["fingerprint"] == dataset.fingerprint()
    assert [shard["name"] for shard in manifest["shards"]] == ["shard-00000", "shard-00001", "shard-00002"]
    with pytest.raises(IndexError):
        store.tokens([8])


def test_float32_cache_matches_exactly(model, dataset, tmp_path):
    store = extract_features(model, dataset, tmp_path / "cache32",
                             ExtractConfig(input_size=64, batch_size=4, shard_size=100, dtype="float32"),
                             progress=False)
    assert store.tokens([0]).dtype == torch.float32
    torch.testing.assert_close(store.tokens([0, 1]), reference_tokens(model, dataset, [0, 1]), atol=1e-5, rtol=1e-5)


def test_rerun_skips_finished_shards_and_redoes_unfinished(model, dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = extract_features(model, dataset, cache, CONFIG, progress=False)
    before = first.tokens(torch.arange(len(first)))
    calls = count_calls(model, monkeypatch)
    extract_features(model, dataset, cache, CONFIG, progress=False)
    assert calls == []  # nothing left to do
    (cache / "shard-00001.json").unlink()  # shard 1 (records 4..7, one missing image) looks unfinished
    assert pending_shards(cache) == ["shard-00001"]
    again = extract_features(model, dataset, cache, CONFIG, progress=False)
    assert sum(calls) == 4 - 1  # only shard 1's loadable images went through the towers again
    torch.testing.assert_close(again.tokens(torch.arange(len(again))), before)


def test_killed_run_is_detected_then_resumed_to_the_same_cache(model, dataset, tmp_path, monkeypatch):
    reference = extract_features(model, dataset, tmp_path / "whole", CONFIG, progress=False)
    cache = tmp_path / "killed"
    count_calls(model, monkeypatch, fail_after=3)  # dies in the middle of shard 1
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, dataset, cache, CONFIG, progress=False)
    assert (cache / "shard-00000.json").is_file() and not (cache / "shard-00001.json").exists()
    with pytest.raises(FeatureCacheError, match="unfinished.*shard-00001.json"):
        FeatureStore.open(cache)
    monkeypatch.undo()
    calls = count_calls(model, monkeypatch)
    resumed = extract_features(model, dataset, cache, CONFIG, progress=False)
    assert sum(calls) == 3 + 2  # shards 1 and 2 only
    assert resumed.record_indices.tolist() == reference.record_indices.tolist()
    assert resumed.failed_indices == reference.failed_indices
    torch.testing.assert_close(resumed.tokens(torch.arange(8)), reference.tokens(torch.arange(8)))
    for number in range(3):
        assert json.loads((cache / f"shard-0000{number}.json").read_text())["sha256"] == \
            json.loads((tmp_path / "whole" / f"shard-0000{number}.json").read_text())["sha256"]


def test_truncated_shard_is_rejected_naming_the_file(model, dataset, tmp_path):
    cache = tmp_path / "cache"
    extract_features(model, dataset, cache, CONFIG, progress=False)
    data = cache / "shard-00001.bin"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(FeatureCacheError, match=r"shard-00001\.bin is truncated"):
        FeatureStore.open(cache, verify="size")
    with pytest.raises(FeatureCacheError, match=r"shard-00001\.bin is truncated"):
        FeatureStore.open(cache, verify="full")


def test_flipped_bits_pass_the_size_check_but_not_the_full_check(model, dataset, tmp_path):
    cache = tmp_path / "cache"
    extract_features(model, dataset, cache, CONFIG, progress=False)
    data = cache / "shard-00002.bin"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    FeatureStore.open(cache, verify="size")  # same size: not detectable cheaply
    with pytest.raises(FeatureCacheError, match=r"shard-00002\.bin is corrupt: SHA-256"):
        FeatureStore.open(cache, verify="full")


def test_broken_sidecar_or_manifest_is_a_clear_error(model, dataset, tmp_path):
    cache = tmp_path / "cache"
    extract_features(model, dataset, cache, CONFIG, progress=False)
    (cache / "shard-00000.json").write_text('{"format": "adds-feature-shard", "key": ')
    with pytest.raises(FeatureCacheError, match=r"shard-00000\.json is corrupt: not valid JSON"):
        FeatureStore.open(cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["input_size"] = 128  # edited by hand: the key no longer matches
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureCacheError, match="manifest.json has been edited or is corrupt"):
        FeatureStore.open(cache)
    with pytest.raises(FeatureCacheError, match="not a feature cache"):
        FeatureStore.open(tmp_path / "nothing-here")


def test_other_settings_are_refused_unless_overwrite(model, dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    extract_features(model, dataset, cache, CONFIG, progress=False)
    other = ExtractConfig(input_size=48, batch_size=3, shard_size=4)
    with pytest.raises(FeatureCacheError, match=r"input_size: cache has 64, requested 48.*--overwrite"):
        extract_features(model, dataset, cache, other, progress=False)
    only_level_0 = tiny_model(model.towers, levels=(0,))
    with pytest.raises(FeatureCacheError, match=r"pyramid\.levels: cache has \[0, 1\], requested \[0\]"):
        extract_features(only_level_0, dataset, cache, CONFIG, progress=False)
    relabelled = MultiLabelDataset(dataset.records[:5], VOCAB, name="fixture", root=dataset.root)
    with pytest.raises(FeatureCacheError, match="dataset.fingerprint"):
        extract_features(model, relabelled, cache, CONFIG, progress=False)
    store = extract_features(only_level_0, dataset, cache, CONFIG, progress=False, overwrite=True)
    assert store.num_tokens == 17 and store.manifest["pyramid"]["levels"] == [0]
    assert store.tokens([0]).shape == (1, 17, DIM)


def test_two_ranks_write_one_cache_equal_to_a_single_process(model, dataset, tmp_path):
    single = extract_features(model, dataset, tmp_path / "single", CONFIG, progress=False)
    cache = tmp_path / "ranks"
    assert extract_features(model, dataset, cache, CONFIG, rank=1, world_size=2, progress=False) is None
    assert pending_shards(cache) == ["shard-00000", "shard-00002"]  # rank 1 did shard 1 only
    store = extract_features(model, dataset, cache, CONFIG, rank=0, world_size=2, progress=False)
    assert isinstance(store, FeatureStore) and pending_shards(cache) == []
    reopened = FeatureStore.open(cache, verify="full")
    assert reopened.manifest == single.manifest
    assert reopened.record_indices.tolist() == single.record_indices.tolist()
    torch.testing.assert_close(reopened.tokens(torch.arange(8)), single.tokens(torch.arange(8)))
    with pytest.raises(ValueError, match="rank"):
        extract_features(model, dataset, cache, CONFIG, rank=2, world_size=2, progress=False)


def test_check_compatible_names_each_mismatch(model, dataset, tmp_path):
    store = extract_features(model, dataset, tmp_path / "cache", CONFIG, progress=False)
    store.check_compatible(model, dataset, input_size=64)
    other_towers = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=1))
    with pytest.raises(FeatureCacheError, match=r"towers\.fingerprint"):
        store.check_compatible(tiny_model(other_towers))
    with pytest.raises(FeatureCacheError, match=r"input_size: cache 64, requested 448.*pyramid levels"):
        store.check_compatible(tiny_model(model.towers, levels=(1,)), input_size=448)
    stranger = MultiLabelDataset([Record("elsewhere.png")], VOCAB, name="stranger", root=dataset.root)
    with pytest.raises(FeatureCacheError, match=r"1 of the 1 images of 'stranger' are not in the feature cache"):
        store.check_compatible(model, stranger)


def test_cached_dataset_gives_tokens_and_targets_by_dataset_index(model, dataset, tmp_path):
    store = extract_features(model, dataset, tmp_path / "cache", CONFIG, progress=False)
    cached = CachedFeatureDataset(store, dataset)
    assert len(cached) == 8 and cached.skipped == [2, 6]
    item = cached[4]  # fifth stored record: dataset index 5 = img4.png, positive 1, unknown 2
    assert item["index"] == 5 and dataset.records[5].path == "img4.png"
    assert item["target"].tolist() == [0.0, 1.0, 0.0] and item["mask"].tolist() == [True, True, False]
    torch.testing.assert_close(item["tokens"].float(), reference_tokens(model, dataset, [5])[0], atol=2e-3, rtol=2e-3)
    batch = next(iter(DataLoader(cached, batch_size=8)))
    assert batch["tokens"].shape == (8, N_TOKENS, DIM) and batch["index"].tolist() == cached.indices.tolist()
    targets, mask = cached.targets()
    torch.testing.assert_close(batch["target"], targets)
    torch.testing.assert_close(batch["mask"], mask)


def test_subset_with_another_vocabulary_reuses_the_cache(model, dataset, tmp_path):
    store = extract_features(model, dataset, tmp_path / "cache", CONFIG, progress=False)
    # the "≥ 1 positive"-style subset, in another order, with another label set (ZSL vs GZSL)
    picked = [dataset.records[i] for i in (9, 3, 2)]
    subset = MultiLabelDataset([Record(r.path, positives=(0,)) for r in picked], ["x", "y"], name="subset",
                               root=dataset.root)
    store.check_compatible(model, subset)
    cached = CachedFeatureDataset(store, subset)
    assert cached.indices.tolist() == [0, 1] and cached.skipped == [2]  # corrupt.png has no tokens
    torch.testing.assert_close(cached[0]["tokens"], store.tokens([7])[0])  # img7 = dataset index 9 = row 7
    assert cached[1]["target"].tolist() == [1.0, 0.0]


def test_store_pickles_without_its_memory_maps(model, dataset, tmp_path):
    store = extract_features(model, dataset, tmp_path / "cache", CONFIG, progress=False)
    expected = store.tokens(torch.arange(8))
    payload = pickle.dumps(store)
    assert len(payload) < 20_000  # 8 x 85 x 32 fp16 tokens would be 43 kB
    torch.testing.assert_close(pickle.loads(payload).tokens(torch.arange(8)), expected)


def test_dispose_cached_crops_keeps_level_0_and_whole_crops():
    batch, crops, per_crop, dim = 3, 5, 17, 4
    crop_id = torch.arange(crops).repeat_interleave(per_crop).float()  # (N,) which crop each token came from
    tokens = crop_id.view(1, -1, 1).expand(batch, -1, dim).clone()  # (B, N, D)
    out = dispose_cached_crops(tokens, [0, 1, 1, 1, 1], 0.5, torch.Generator().manual_seed(0))
    assert out.shape == (batch, 3 * per_crop, dim)  # 1 + (4 - floor(0.5 * 4))
    for image in out:
        kept = image[::per_crop, 0].tolist()
        assert kept[0] == 0 and kept == sorted(kept) and len(set(kept)) == 3
        assert torch.equal(image[:, 0].view(3, per_crop), torch.tensor(kept).unsqueeze(1).expand(3, per_crop))
    assert dispose_cached_crops(tokens, [0, 1, 1, 1, 1], 0.0) is tokens
    with pytest.raises(ValueError):
        dispose_cached_crops(tokens, [0, 1, 1], 0.5)


def test_label_embeddings_are_cached_per_vocabulary(model, tmp_path, monkeypatch):
    first = label_embedding_cache(model, ["cat", "dog"], tmp_path)
    torch.testing.assert_close(first, model.encode_labels(["cat", "dog"]))
    files = sorted(tmp_path.glob("labels-*.safetensors"))
    assert len(files) == 1

    def refuse(labels):
        raise AssertionError("the text tower should not run for a cached vocabulary")

    monkeypatch.setattr(model, "encode_labels", refuse)
    torch.testing.assert_close(label_embedding_cache(model, ["cat", "dog"], tmp_path), first)
    monkeypatch.undo()
    swapped = label_embedding_cache(model, ["dog", "cat"], tmp_path)  # order matters: another file
    torch.testing.assert_close(swapped, first.flip(0))
    assert len(list(tmp_path.glob("labels-*.safetensors"))) == 2
    files[0].write_bytes(files[0].read_bytes()[:40])  # truncated: recomputed, not trusted
    torch.testing.assert_close(label_embedding_cache(model, ["cat", "dog"], tmp_path), first)
    with pytest.raises(ValueError, match="Duplicate"):
        label_embedding_cache(model, ["cat", "cat"], tmp_path)


def test_extract_config_is_validated():
    with pytest.raises(ValueError, match="input_size"):
        ExtractConfig(input_size=0)
    with pytest.raises(ValueError, match="dtype"):
        ExtractConfig(input_size=64, dtype="bfloat16")
    with pytest.raises(ValueError, match="shard_size"):
        ExtractConfig(input_size=64, shard_size=0)


# -- augmented views (issue 10.8) ----------------------------------------------------------------------------------
def _views_config(views: int = 3, seed: int = 0, **changes) -> ExtractConfig:
    from adds.data.augment import AugmentConfig

    return ExtractConfig(input_size=64, batch_size=3, shard_size=4, dtype="float32", views=views,
                         augment=AugmentConfig(seed=seed, **changes))


def _all_views(store) -> torch.Tensor:
    rows = torch.arange(len(store))
    return torch.stack([store.tokens(rows, torch.full_like(rows, view)) for view in range(store.views)], 1)


def test_augmented_views_differ_per_view_and_are_deterministic_per_seed(model, dataset, tmp_path):
    plain = extract_features(model, dataset, tmp_path / "plain", _views_config(1), progress=False)
    first = extract_features(model, dataset, tmp_path / "a", _views_config(3, seed=0), progress=False)
    again = extract_features(model, dataset, tmp_path / "b", _views_config(3, seed=0), progress=False)
    other = extract_features(model, dataset, tmp_path / "c", _views_config(3, seed=1), progress=False)
    assert first.views == 3 and plain.views == 1 and first.record_indices.tolist() == plain.record_indices.tolist()
    tokens = _all_views(first)  # (8, 3, N, D)
    assert tokens.shape == (8, 3, N_TOKENS, DIM)
    # view 0 is the plain image: the one-view cache's tokens, and what a reader gets by default
    torch.testing.assert_close(tokens[:, 0], plain.tokens(torch.arange(8)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.tokens(torch.arange(8)), tokens[:, 0])
    # every augmented view of every image differs from the plain one and from the other view
    for view_a, view_b in ((0, 1), (0, 2), (1, 2)):
        assert ((tokens[:, view_a] - tokens[:, view_b]).flatten(1).abs().amax(1) > 1e-3).all(), (view_a, view_b)
    assert torch.equal(_all_views(again), tokens)  # same seed: the same bytes
    assert torch.equal(_all_views(other)[:, 0], tokens[:, 0])
    assert ((_all_views(other)[:, 1:] - tokens[:, 1:]).flatten(2).abs().amax(2) > 1e-3).all()
    # batching and shard size do not change the views (each is seeded by its image index and view number)
    rebatched = extract_features(model, dataset, tmp_path / "d",
                                 replace(_views_config(3, seed=0), batch_size=2, shard_size=100), progress=False)
    torch.testing.assert_close(_all_views(rebatched), tokens, atol=1e-5, rtol=1e-5)
    assert first.manifest["views"] == 3 and first.manifest["augment"]["seed"] == 0
    with pytest.raises(IndexError, match="views must be in"):
        first.tokens([0], [3])


def test_views_and_augmentation_are_part_of_the_cache_settings(model, dataset, tmp_path):
    extract_features(model, dataset, tmp_path / "cache", _views_config(3), progress=False)
    with pytest.raises(FeatureCacheError, match="views: cache has 3, requested 2"):
        extract_features(model, dataset, tmp_path / "cache", _views_config(2), progress=False)
    with pytest.raises(FeatureCacheError, match="augment"):
        extract_features(model, dataset, tmp_path / "cache", _views_config(3, flip=False), progress=False)
    # a one-view cache keeps the key it had before views existed (no views / augment in its settings)
    from adds.features.manifest import _key

    manifest = build_manifest(model, dataset, CONFIG, amp=False)
    legacy = {key: value for key, value in manifest.items() if key not in ("views", "augment")}
    assert _key(legacy) == manifest["key"]


def test_cached_dataset_samples_one_view_per_item_per_epoch(model, dataset, tmp_path):
    store = extract_features(model, dataset, tmp_path / "cache", _views_config(4), progress=False)
    evaluation = CachedFeatureDataset(store, dataset)
    evaluation.set_epoch(3)
    assert evaluation.views.tolist() == [0] * 8  # evaluation reads the plain image, whatever the epoch
    training = CachedFeatureDataset(store, dataset, sample_views=True, seed=5)
    drawn = {}
    for epoch in range(6):
        training.set_epoch(epoch)
        drawn[epoch] = training.views.clone()
        items = training.__getitems__(list(range(len(training))))
        expected = store.tokens(training.rows, drawn[epoch])
        assert all(torch.equal(item["tokens"], expected[j]) for j, item in enumerate(items))
    assert len({tuple(views.tolist()) for views in drawn.values()}) > 1  # the views change between epochs
    assert set(torch.cat(list(drawn.values())).tolist()) == {0, 1, 2, 3}
    again = CachedFeatureDataset(store, dataset, sample_views=True, seed=5)
    for epoch in (4, 1):  # any order: epoch e's views are a function of (seed, e)
        again.set_epoch(epoch)
        assert torch.equal(again.views, drawn[epoch])
    other = CachedFeatureDataset(store, dataset, sample_views=True, seed=6)
    other_views = []
    for epoch in range(6):
        other.set_epoch(epoch)
        other_views.append(other.views.clone())
    assert any(not torch.equal(other_views[epoch], drawn[epoch]) for epoch in range(6))  # another seed, other views
