"""Pretrained tags without waiting: use the local cache offline, and fail in seconds when the hub is unreachable.

open_clip downloads a tag's weights through ``huggingface_hub`` (or a plain URL). Without a network, that spends
about a minute in retries before failing. Here, before open_clip is asked for a tag:

1. the tag's file is looked up in the local cache (:func:`cached_tag_file`); if it is there, open_clip loads it
   with the hub in offline mode (:func:`hub_offline`), so not even an "is there a newer revision?" request is made;
2. otherwise, with ``HF_HUB_OFFLINE`` set (or ``TRANSFORMERS_OFFLINE``), loading fails at once;
3. otherwise a TCP connection to the download host is tried with a short timeout (:func:`host_reachable`,
   ``ADDS_HUB_PROBE_TIMEOUT`` seconds, default 3); if it fails, loading fails at once.

Each failure is a :class:`~adds.towers.config.WeightsUnavailableError` whose message says how to place the weights
locally.

Hugging Face text towers (``CustomTextCLIP`` with ``hf_model_name``: xlm-roberta, mt5, nllb, roberta) also read the
text model's ``config.json`` and tokenizer from the hub whenever the towers are built, whatever ``pretrained`` is.
:func:`hf_text_context` applies the same three rules to that repository: a local folder or a cached ``config.json``
is used with the hub offline, otherwise an offline or unreachable hub fails at once with a placement message.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from urllib.parse import urlparse

__all__ = ["cached_tag_file", "hf_text_context", "hub_is_offline", "hub_offline", "host_reachable", "offline_help",
           "tag_host"]

_TRUE = {"1", "on", "yes", "true"}


def hub_is_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set now (read at call time, unlike huggingface_hub's constant)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip then downloads by URL only
        return False
    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def hub_offline():
    """Put ``huggingface_hub`` in offline mode for the duration (cached files are returned without any request)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _hf_hub_parts(tag_cfg: dict) -> tuple[str, list[str]] | None:
    """``(repo_id, candidate file names)`` of a tag that open_clip fetches from the Hugging Face hub."""
    entry = tag_cfg.get("hf_hub", "")
    if not entry:
        return None
    repo_id, filename = os.path.split(entry)
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def cached_tag_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    """The local file open_clip would load for this tag without a download, or ``None`` if it is not cached."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    hub = _hf_hub_parts(tag_cfg)
    if hub is not None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            hub = None
        else:
            repo_id, names = hub
            for name in names:
                found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
            return None
    url = tag_cfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        return target if os.path.isfile(target) else None
    return None


def tag_host(tag_cfg: dict) -> tuple[str, int]:
    """``(host, port)`` the tag would be downloaded from."""
    if tag_cfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    else:
        endpoint = tag_cfg.get("url", "") or "https://huggingface.co"
    parsed = urlparse(endpoint)
    return parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)


def host_reachable(host: str, port: int, timeout: float | None = None) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS lookup included).

    The lookup runs in a daemon thread, so a resolver that hangs cannot hold the caller past the timeout.
    """
    timeout = float(os.environ.get("ADDS_HUB_PROBE_TIMEOUT", "3")) if timeout is None else timeout
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="adds-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def offline_help(model: str, tag: str, cache_dir: str | None, reason: str = "") -> str:
    """The message of a :class:`WeightsUnavailableError`: what failed and how to place the weights locally."""
    hf_cache = cache_dir or os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    why = f" ({reason})" if reason else ""
    return (
        f"Could not obtain pretrained weights '{tag}' for open_clip model '{model}'{why}. If this machine is offline, "
        f"fetch them on a connected machine, e.g.\n"
        f"    python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{tag}')\"\n"
        f"then either copy that machine's Hugging Face cache into {hf_cache} (or point HF_HOME / --cache-dir at a "
        f"copy), or pass the weights file itself: --pretrained /path/to/open_clip_model.safetensors "
        f"(a .bin/.pt state dict or an original OpenAI TorchScript .pt works too)."
    )


def hf_text_context(model_cfg: dict, model: str) -> contextlib.AbstractContextManager:
    """How to build the Hugging Face text tower of ``model_cfg`` without waiting (see the module doc).

    Returns a context manager to build the model / tokenizer in: the hub put offline when everything needed is
    local, a no-op for built-in text towers or a reachable hub. Raises ``WeightsUnavailableError`` at once when the
    text model is not local and the hub is offline or unreachable.
    """
    text = model_cfg.get("text_cfg", {}) or {}
    needed = [(text.get("hf_model_name"), "config.json"), (text.get("hf_tokenizer_name"), "tokenizer_config.json")]
    needed = [(repo, filename) for repo, filename in needed if repo]
    if not needed:
        return contextlib.nullcontext()
    remote = list(dict.fromkeys(repo for repo, filename in needed
                                if not os.path.isdir(repo) and not _hf_file_cached(repo, filename)))
    if not remote:
        return hub_offline()
    from adds.towers.config import WeightsUnavailableError

    if hub_is_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        host, port = tag_host({"hf_hub": remote[0] + "/"})
        if host_reachable(host, port):
            return contextlib.nullcontext()
        reason = f"{host} is unreachable"
    raise WeightsUnavailableError(
        f"'{model}' has a Hugging Face text tower ({', '.join(remote)}) that is not in the local Hugging Face cache "
        f"and {reason}: on a connected machine run python -c \"import open_clip; open_clip.get_tokenizer('{model}'); "
        f"open_clip.create_model('{model}')\" and copy its Hugging Face cache here (or point HF_HOME at a copy)"
    )


def _hf_file_cached(repo_id: str, filename: str) -> bool:
    """Whether a hub repository's ``filename`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    found = try_to_load_from_cache(repo_id, filename)
    return isinstance(found, str) and os.path.isfile(found)
