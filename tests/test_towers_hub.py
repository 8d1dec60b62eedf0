"""Offline without waiting: HF_HUB_OFFLINE honoured, an unreachable hub detected in seconds, cached weights loaded
without any request, then the placement message (issue 11.7). No test here touches the network."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import open_clip
import pytest
from PIL import Image

from adds.cli import main
from adds.towers import TINY_MODEL, TowerConfig, WeightsUnavailableError, hub, load_towers

TAG = ("ViT-B-32-quickgelu", "openai")


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """Any connection attempt or open_clip download fails the test; the Hugging Face cache is an empty folder."""
    from huggingface_hub import constants

    def forbidden(*args, **kwargs):
        raise AssertionError("a network request was made")

    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(open_clip, "create_model", forbidden)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_variable_fails_at_once_without_a_request(no_network, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    with pytest.raises(WeightsUnavailableError) as info:
        load_towers(TowerConfig(model=TAG[0], pretrained=TAG[1], cache_dir=str(no_network / "cache")))
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and "--pretrained /path/to/" in message and "'openai'" in message


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once closed: connections are refused at once


def test_unreachable_hub_fails_before_open_clip_retries(monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("open_clip was asked to download from an unreachable hub")

    monkeypatch.setattr(open_clip, "create_model", forbidden)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(WeightsUnavailableError, match="127.0.0.1 is unreachable"):
        load_towers(TowerConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path)))


def test_probe_gives_up_after_its_timeout_even_when_the_resolver_hangs(monkeypatch):
    release = threading.Event()

    def hanging(*args, **kwargs):
        release.wait(30)  # a DNS lookup or SYN that never answers
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hanging)
    monkeypatch.setenv("ADDS_HUB_PROBE_TIMEOUT", "0.2")
    start = time.monotonic()
    try:
        assert hub.host_reachable("huggingface.co", 443) is False
        assert time.monotonic() - start < 5  # not the ~60 s of retries open_clip's download would spend
    finally:
        release.set()


def test_cached_tag_is_loaded_with_the_hub_offline(monkeypatch, tmp_path):
    """A tag whose file is in the cache: open_clip is called with the hub offline (no revision check at all)."""
    from huggingface_hub import constants

    tag_cfg = open_clip.get_pretrained_cfg(*TAG)
    repo_id, filename = tag_cfg["hf_hub"].rstrip("/"), "open_clip_pytorch_model.bin"
    repo = tmp_path / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / filename).write_bytes(b"weights")
    assert hub.cached_tag_file(tag_cfg, str(tmp_path)) == str(repo / "snapshots" / "abc123" / filename)
    seen = {}
    real_create_model = open_clip.create_model

    def fake_create_model(name, pretrained=None, **kwargs):
        seen.update(offline=constants.HF_HUB_OFFLINE, pretrained=pretrained)
        return real_create_model(TINY_MODEL + "-quickgelu", pretrained=None)

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    monkeypatch.setattr(hub, "host_reachable", lambda *a, **k: pytest.fail("probed although the file is cached"))
    before = constants.HF_HUB_OFFLINE
    load_towers(TowerConfig(model=TAG[0], pretrained=TAG[1], cache_dir=str(tmp_path)))
    assert seen == {"offline": True, "pretrained": "openai"} and constants.HF_HUB_OFFLINE == before


def test_hf_text_tower_not_cached_fails_at_once_offline(no_network, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        load_towers(TowerConfig(model="xlm-roberta-base-ViT-B-32", pretrained=None))
    message = str(info.value)
    assert "xlm-roberta-base" in message and "HF_HUB_OFFLINE" in message and "\n" not in message


def test_adds_tag_offline_exits_2_with_the_placement_message(no_network, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = no_network / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    code = main(["tag", str(image), "--model", TAG[0], "--pretrained", TAG[1], "--labels", "a,b",
                 "--cache-dir", str(no_network / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "HF_HUB_OFFLINE is set" in err and str(no_network / "cache") in err


def _fake_hub_file(cache, repo_id: str, filename: str) -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("rev1")
    (repo / "snapshots" / "rev1").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / "rev1" / filename).write_text("{}")


def test_cached_hf_text_tower_is_built_with_the_hub_offline(no_network, monkeypatch):
    """xlm-roberta's config and tokenizer in the cache: built without a request; the tokenizer missing: at once."""
    from huggingface_hub import constants

    cfg = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    cache = no_network / "hf-cache"
    _fake_hub_file(cache, "xlm-roberta-base", "config.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="xlm-roberta-base"):
        hub.hf_text_context(cfg, "xlm-roberta-base-ViT-B-32")  # its tokenizer is not cached
    _fake_hub_file(cache, "xlm-roberta-base", "tokenizer_config.json")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    before = constants.HF_HUB_OFFLINE
    with hub.hf_text_context(cfg, "xlm-roberta-base-ViT-B-32"):
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE == before
