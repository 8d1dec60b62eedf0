"""The on-disk label-embedding cache (adds.label_cache) and the bounded in-memory LRU (adds.prompts)."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

from adds.label_cache import LabelCache, LabelCacheConfig, default_cache_root
from adds.prompts import EMBEDDING_VERSION, LabelEmbedder, LabelMemoryCache, memory_cache
from adds.tagger import Tagger, TaggerConfig
from adds.towers import TINY_MODEL, TowerConfig, load_towers

WORDS = [f"thing {i}" for i in range(40)]


def _towers(seed: int = 0):
    return load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=seed))


def _embedder(towers, root, templates=("a photo of {}.", "{} here"), **config) -> LabelEmbedder:
    embedder = LabelEmbedder(towers, templates)
    embedder.use_disk_cache(config=LabelCacheConfig(root=root, **config))
    return embedder


def test_a_fresh_process_gets_the_exact_vectors_back_without_the_text_tower(tmp_path, monkeypatch):
    first = _embedder(_towers(), tmp_path)
    computed = first(WORDS)  # (k, D)
    assert first.encoded == len(WORDS)
    towers = _towers()  # new towers object: empty memory cache, same identity (= a new process)
    monkeypatch.setattr(towers, "encode_text", lambda prompts: pytest.fail("the text tower ran on a cache hit"))
    second = _embedder(towers, tmp_path)
    loaded = second(WORDS)
    assert second.encoded == 0 and second.disk_hits == len(WORDS)
    assert torch.equal(loaded, computed)  # bit for bit


def test_a_vocabulary_sharing_most_labels_encodes_only_the_new_ones(tmp_path, monkeypatch):
    _embedder(_towers(), tmp_path)(WORDS)
    towers = _towers()
    prompts_seen: list[str] = []
    real = towers.encode_text
    monkeypatch.setattr(towers, "encode_text", lambda prompts: prompts_seen.extend(prompts) or real(prompts))
    embedder = _embedder(towers, tmp_path)
    vocabulary = WORDS[5:] + ["new one", "new two"]
    out = embedder(vocabulary)
    assert embedder.disk_hits == len(WORDS) - 5 and embedder.encoded == 2
    assert sorted(prompts_seen) == sorted(["a photo of new one.", "new one here",
                                           "a photo of new two.", "new two here"])
    reference = LabelEmbedder(_towers(), ("a photo of {}.", "{} here"))(vocabulary)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)


def test_other_weights_or_templates_never_share_vectors(tmp_path):
    base = _embedder(_towers(0), tmp_path)
    base(WORDS)
    other_weights = _embedder(_towers(1), tmp_path)
    other_weights(WORDS)
    other_templates = _embedder(_towers(0), tmp_path, templates=("{}",))
    other_templates(WORDS)
    assert other_weights.disk_hits == 0 and other_templates.disk_hits == 0
    folders = {base.disk.folder, other_weights.disk.folder, other_templates.disk.folder}
    assert len(folders) == 3
    assert base.disk.description["embedding_version"] == EMBEDDING_VERSION
    assert base.disk.description["towers"]["fingerprint"] == _towers(0).identity()["fingerprint"]


def test_concurrent_writers_and_compaction_lose_nothing(tmp_path):
    """Eight independent writers (own LabelCache objects, as separate processes would be) store overlapping label
    sets at once with compaction after every second shard, while readers read; every label ends up readable with
    the value written for it."""
    towers = _towers()
    description = {"towers": towers.identity(), "templates": ["t {}"], "embedding_version": 1}
    config = LabelCacheConfig(root=tmp_path, max_shards=2)
    truth = {f"w{i}": torch.full((4,), float(i)) for i in range(120)}
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            cache = LabelCache(description, config)
            labels = list(truth)[index * 10:index * 10 + 40]  # overlaps its neighbours
            for start in range(0, len(labels), 8):
                cache.put({label: truth[label] for label in labels[start:start + 8]})
                got = LabelCache(description, config).get(labels[:start + 8])
                assert all(torch.equal(got[label], truth[label]) for label in got)
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    final = LabelCache(description, config).get(truth)
    assert set(final) == set(truth)
    assert all(torch.equal(final[label], truth[label]) for label in truth)
    assert len(list(final_folder(tmp_path).glob("shard-*.safetensors"))) <= 2 + 9  # compacted
    assert not list(final_folder(tmp_path).glob(".tmp-*"))


def final_folder(root):
    (folder,) = list((root / "label-embeddings-v1").iterdir())
    return folder


def test_a_corrupt_shard_is_skipped_with_a_warning_and_recomputed(tmp_path, caplog):
    _embedder(_towers(), tmp_path)(WORDS)
    (shard,) = list(final_folder(tmp_path).glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated by a crash of a non-atomic writer
    embedder = _embedder(_towers(), tmp_path)
    with caplog.at_level(logging.WARNING, logger="adds.label_cache"):
        out = embedder(WORDS)
    assert "unreadable" in caplog.text and embedder.encoded == len(WORDS)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(WORDS)))


def test_an_unwritable_cache_folder_warns_once_and_tagging_goes_on(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    embedder = _embedder(_towers(), blocker / "cache")
    with caplog.at_level(logging.WARNING, logger="adds.label_cache"):
        embedder(WORDS[:3])
        embedder(WORDS[3:6])
    assert caplog.text.count("cannot write") == 1
    assert embedder.encoded == 6


def test_cache_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADDS_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_root() == tmp_path / "here"
    monkeypatch.delenv("ADDS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "adds"


def test_taggers_use_the_disk_cache_by_default_and_can_opt_out(tmp_path, monkeypatch):
    monkeypatch.setenv("ADDS_CACHE_DIR", str(tmp_path))
    first = Tagger.clip_baseline(TINY_MODEL, None, labels=WORDS)
    first.set_labels(WORDS)
    assert first.model.label_embedder.encoded == len(WORDS)
    second = Tagger.clip_baseline(TINY_MODEL, None, labels=WORDS)
    second.set_labels(WORDS)
    assert second.model.label_embedder.encoded == 0 and second.model.label_embedder.disk_hits == len(WORDS)
    off = Tagger.clip_baseline(TINY_MODEL, None, labels=WORDS, config=TaggerConfig(label_cache=False))
    assert off.model.label_embedder.disk is None
    monkeypatch.setenv("ADDS_LABEL_CACHE", "0")
    assert Tagger.clip_baseline(TINY_MODEL, None, labels=WORDS).model.label_embedder.disk is None


def test_memory_cache_is_a_bounded_lru():
    cache = LabelMemoryCache(3)
    for key in "abcd":
        cache[key] = torch.zeros(1)
    assert list(cache) == ["b", "c", "d"]
    cache.lookup("b")
    cache["e"] = torch.zeros(1)
    assert list(cache) == ["d", "b", "e"]  # "c" was the least recently used
    with pytest.raises(ValueError, match="positive"):
        LabelMemoryCache(0)


def test_a_server_fed_new_labels_stays_within_the_bound_and_scores_stay_right(tiny_towers):
    towers = _towers()
    memory_cache(towers, max_labels=25)
    embedder = LabelEmbedder(towers)
    reference = LabelEmbedder(tiny_towers)
    for request in range(4):
        labels = [f"request {request} label {i}" for i in range(30)]  # each request more than the bound
        torch.testing.assert_close(embedder(labels), reference(labels), rtol=0, atol=1e-6)
        assert len(towers.text_cache) <= 25
    assert Tagger.clip_baseline(TINY_MODEL, None, labels=WORDS,
                                config=TaggerConfig(max_cached_labels=7)).towers.text_cache.max_labels == 7
