"""Tower identity: a hash of every weight, computed once and cached, and portable references to weights files.

``Towers.identity()["fingerprint"]`` is the SHA-256 of the whole state dict of the CLIP model (names, shapes and
float32 bytes of every tensor, in name order) together with the image normalisation -- everything that decides the
tokens. Two towers that differ in any trunk weight get different fingerprints (the earlier scheme hashed only the
two projection matrices; checkpoints written with it carry no ``fingerprint_scheme`` and are checked against
:func:`legacy_fingerprint`).

Hashing runs at about 0.5 GB/s on one core (ViT-B-32: ~1 s), so it is done lazily, once per :class:`Towers`, and
for weights read from a large file (a tag's cached file or a local one, >= ``DISK_CACHE_MIN_BYTES``) the digest is
also kept on disk, keyed by the file's real path, size and modification time plus the model settings, in
``$ADDS_CACHE_DIR/tower-fingerprints.json`` (default ``~/.cache/adds``). The file SHA-256 used for portable
references is cached the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["FINGERPRINT_SCHEME", "file_sha256", "legacy_fingerprint", "state_dict_sha256", "fingerprint"]

logger = logging.getLogger(__name__)

FINGERPRINT_SCHEME = 2
DISK_CACHE_MIN_BYTES = 64 << 20
_CACHE_NAME = "tower-fingerprints.json"


def _cache_path() -> Path:
    root = os.environ.get("ADDS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "adds")
    return Path(root) / _CACHE_NAME


def _stat_key(path: Path, extra: str) -> str | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    if stat.st_size < DISK_CACHE_MIN_BYTES:
        return None
    return f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{extra}"


def _cache_get(key: str | None) -> str | None:
    if key is None:
        return None
    try:
        value = json.loads(_cache_path().read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _cache_put(key: str | None, value: str) -> None:
    if key is None:
        return
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[key] = value
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as out:
            json.dump(data, out, indent=0)
        os.replace(out.name, path)
    except OSError as error:  # a read-only home only costs the next load a re-hash
        logger.debug("could not write the fingerprint cache %s: %s", path, error)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (cached on disk for large files, see the module doc)."""
    path = Path(path)
    key = _stat_key(path, "file-sha256")
    cached = _cache_get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    value = digest.hexdigest()
    _cache_put(key, value)
    return value


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module.state_dict()``: name, shape and float32 (or raw) bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach()
        if value.is_floating_point():
            value = value.float()
        value = value.cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{value.dtype}\n".encode())
        digest.update(value.view(torch.uint8).numpy())
    return digest.hexdigest()


def weights_sha256(module: nn.Module, source_file: str | None, settings: str) -> str:
    """:func:`state_dict_sha256`, read from / written to the disk cache when the weights came from a large file."""
    key = None if source_file is None else _stat_key(Path(source_file), f"state-sha256|{settings}")
    cached = _cache_get(key)
    if cached is not None:
        return cached
    value = state_dict_sha256(module)
    _cache_put(key, value)
    return value


def fingerprint(weights_digest: str, preprocess: dict) -> str:
    """The 16-hex-digit tower fingerprint: weights digest + normalisation (both change the tokens)."""
    mixed = hashlib.sha256(f"{weights_digest}|{json.dumps(preprocess, sort_keys=True)}".encode())
    return mixed.hexdigest()[:16]


def legacy_fingerprint(clip: nn.Module) -> str | None:
    """The fingerprint of checkpoints written before scheme 2 (the two projection matrices only)."""
    text_proj = getattr(clip, "text_projection", None)
    visual_proj = getattr(getattr(clip, "visual", None), "proj", None)
    if not isinstance(text_proj, torch.Tensor) or not isinstance(visual_proj, torch.Tensor):
        return None
    digest = hashlib.sha256()
    for tensor in (visual_proj, text_proj):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
