"""Label embeddings on disk: a repeated start pays a file read, not the text tower (issue 12, item 1).

Every start of ``adds tag`` / ``adds serve`` needs the prompt-ensembled embedding of every label (paper:
"Overview", Fig. 2; :class:`adds.prompts.LabelEmbedder`). For the built-in 4,585-tag vocabulary on ViT-B-32 that is
9,170 prompts through the text tower -- minutes on a CPU. :class:`LabelCache` keeps them on disk.

Layout (``root`` = ``$ADDS_CACHE_DIR``, default ``~/.cache/adds``)::

    root/label-embeddings-v1/<key>/key.json                 what the key stands for (for people; never read back)
    root/label-embeddings-v1/<key>/shard-<time>-<id>.safetensors   "embeddings" (n, D) float32, labels in metadata

* **Key.** ``<key>`` hashes the towers' identity (:meth:`adds.towers.Towers.identity`: model, weights source and
  fingerprint), the prompt templates, :data:`adds.prompts.EMBEDDING_VERSION` (the prompt-ensembling code) and the
  cache format. Other weights, other templates or changed ensembling code never see each other's vectors.
* **Per label.** A shard holds the labels one miss encoded; a lookup takes each label from whichever shard has it,
  so a vocabulary that shares most labels with an earlier one encodes only the new ones.
* **Concurrent writers.** A shard is written to a temporary file in the same folder and renamed into place
  (``os.replace``): readers see whole shards or none, and writers never write the same file (unique names). Two
  processes that miss the same label both encode it and both store it; the copies are identical and the first
  found is used.
* **Compaction.** With more than :attr:`LabelCacheConfig.max_shards` shards, a writer merges them into one new
  shard (written and renamed first) and then deletes the merged ones; a reader that finds a shard gone rescans.
* **Exactness.** Vectors are stored as float32, so a hit returns bit for bit what the miss computed.
* **Opt-out.** ``ADDS_LABEL_CACHE=0`` (or ``off``/``no``/``false``), ``adds tag --no-label-cache``,
  ``TaggerConfig(label_cache=False)``. An unwritable folder logs one warning and tagging goes on without it; an
  unreadable or foreign shard is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["CACHE_DIR_ENV", "FORMAT_VERSION", "LABEL_CACHE_ENV", "LabelCache", "LabelCacheConfig",
           "default_cache_root", "label_cache_enabled"]

logger = logging.getLogger(__name__)

#: Where the cache lives (default ``~/.cache/adds``).
CACHE_DIR_ENV = "ADDS_CACHE_DIR"
#: ``0`` / ``off`` / ``no`` / ``false`` turns the on-disk label cache off.
LABEL_CACHE_ENV = "ADDS_LABEL_CACHE"
#: The on-disk format; a change makes a new folder (``label-embeddings-v<N>``), old ones are simply not read.
FORMAT_VERSION = 1
_SHARD_GLOB = "shard-*.safetensors"
_STALE_TEMPORARY_S = 3600.0


def default_cache_root() -> Path:
    """``$ADDS_CACHE_DIR``, else ``$XDG_CACHE_HOME/adds``, else ``~/.cache/adds``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "adds"


def label_cache_enabled() -> bool:
    """False when ``$ADDS_LABEL_CACHE`` says off (``0``, ``off``, ``no``, ``false``)."""
    return os.environ.get(LABEL_CACHE_ENV, "1").strip().lower() not in ("0", "off", "no", "false")


@dataclass(frozen=True)
class LabelCacheConfig:
    """Where and how label embeddings are stored.

    Attributes:
        root: cache root (``None`` = :func:`default_cache_root`).
        max_shards: more shards than this under one key are merged into one by the next writer.
    """

    root: str | os.PathLike | None = None
    max_shards: int = 32


class LabelCache:
    """Label embeddings of one (towers, templates) pair on disk, per label (see the module docstring).

    Args:
        description: what the vectors depend on (towers identity, templates, code version); hashed into the key.
        config: root folder and compaction (:class:`LabelCacheConfig`).

    Build with :meth:`for_embedder`. :meth:`get` returns the stored vectors of the labels it has; :meth:`put`
    stores new ones. Both never raise for I/O problems: the cache then behaves as empty / read-only.
    """

    def __init__(self, description: Mapping[str, Any], config: LabelCacheConfig | None = None) -> None:
        self.config = config or LabelCacheConfig()
        self.description = {**description, "format": FORMAT_VERSION}
        text = json.dumps(self.description, sort_keys=True, ensure_ascii=False)
        self.key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
        root = Path(self.config.root).expanduser() if self.config.root is not None else default_cache_root()
        self.folder = root / f"label-embeddings-v{FORMAT_VERSION}" / self.key
        self._index: dict[str, tuple[str, int]] = {}  # label -> (shard file name, row)
        self._scanned: set[str] = set()
        self._lock = threading.Lock()
        self._writable = True
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_embedder(cls, towers, templates: Iterable[str], version: int,
                     config: LabelCacheConfig | None = None) -> LabelCache:
        """The cache of ``towers`` (its :meth:`~adds.towers.Towers.identity`), ``templates`` and code ``version``."""
        description = {"towers": towers.identity(), "templates": list(templates), "embedding_version": version,
                       "dtype": "float32"}
        return cls(description, config)

    # -- reading -----------------------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Index the shards not seen yet (labels only; vectors are read when asked for)."""
        from safetensors import safe_open

        try:
            names = sorted(path.name for path in self.folder.glob(_SHARD_GLOB))
        except OSError:
            return
        for name in names:
            if name in self._scanned:
                continue
            self._scanned.add(name)
            try:
                with safe_open(str(self.folder / name), framework="pt") as handle:
                    metadata = handle.metadata() or {}
                    labels = json.loads(metadata.get("labels", "null"))
                    rows = handle.get_slice("embeddings").get_shape()[0]
            except FileNotFoundError:  # merged away by another process: its labels are in the merged shard
                continue
            except Exception as error:  # safetensors raises its own types for truncated / corrupt files
                logger.warning("label cache: skipping unreadable %s (%s)", self.folder / name, error)
                continue
            if metadata.get("key") != self.key or not isinstance(labels, list) or len(labels) != rows:
                logger.warning("label cache: skipping %s (another key or a label count that does not match)",
                               self.folder / name)
                continue
            for row, label in enumerate(labels):
                self._index.setdefault(label, (name, row))

    def get(self, labels: Iterable[str]) -> dict[str, torch.Tensor]:
        """The stored ``(D,)`` float32 CPU vectors of those ``labels`` that are on disk (the others are left out)."""
        from safetensors import safe_open

        wanted = list(dict.fromkeys(labels))
        found: dict[str, torch.Tensor] = {}
        with self._lock:
            for attempt in range(2):
                if any(label not in self._index for label in wanted):
                    self._scan()
                by_shard: dict[str, list[tuple[str, int]]] = {}
                for label in wanted:
                    if label not in found and label in self._index:
                        name, row = self._index[label]
                        by_shard.setdefault(name, []).append((label, row))
                gone = False
                for name, items in by_shard.items():
                    try:
                        with safe_open(str(self.folder / name), framework="pt") as handle:
                            table = handle.get_tensor("embeddings")  # (n, D)
                    except FileNotFoundError:  # compacted meanwhile: forget it and rescan once
                        gone = True
                        self._index = {k: v for k, v in self._index.items() if v[0] != name}
                        continue
                    except Exception as error:
                        logger.warning("label cache: cannot read %s (%s)", self.folder / name, error)
                        continue
                    for label, row in items:
                        found[label] = table[row].clone()  # (D,), not a view that would keep the whole shard alive
                if not gone or attempt:
                    break
        self.hits += len(found)
        self.misses += len(wanted) - len(found)
        return found

    # -- writing -----------------------------------------------------------------------------------------------
    def put(self, vectors: Mapping[str, torch.Tensor]) -> None:
        """Store ``label -> (D,)`` vectors as one new shard (atomically); merge shards past ``max_shards``."""
        if not vectors or not self._writable:
            return
        labels = list(vectors)
        table = torch.stack([vectors[label].detach().float().cpu() for label in labels]).contiguous()  # (n, D)
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._write_key_file()
                name = self._write_shard(labels, table)
            except OSError as error:
                self._writable = False
                logger.warning("label cache: cannot write to %s (%s); label embeddings are not cached on disk",
                               self.folder, error.strerror or error)
                return
            self._scanned.add(name)
            for row, label in enumerate(labels):
                self._index.setdefault(label, (name, row))
            try:
                shards = sorted(self.folder.glob(_SHARD_GLOB))
                if len(shards) > self.config.max_shards:
                    self._compact(shards)
            except OSError as error:
                logger.warning("label cache: compaction in %s failed (%s)", self.folder, error)

    def _write_key_file(self) -> None:
        path = self.folder / "key.json"
        if path.exists():
            return
        self._atomic_write(path, json.dumps(self.description, indent=2, ensure_ascii=False).encode("utf-8"))

    def _write_shard(self, labels: list[str], table: torch.Tensor) -> str:
        from safetensors.torch import save

        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.safetensors"
        metadata = {"key": self.key, "labels": json.dumps(labels, ensure_ascii=False),
                    "format": str(FORMAT_VERSION)}
        self._atomic_write(self.folder / name, save({"embeddings": table}, metadata=metadata))
        return name

    def _atomic_write(self, path: Path, data: bytes) -> None:
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _compact(self, shards: list[Path]) -> None:
        """Merge ``shards`` into one new shard, then delete them (a concurrent reader rescans when one is gone)."""
        from safetensors import safe_open

        merged: dict[str, torch.Tensor] = {}
        merged_names = []
        for path in shards:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    metadata = handle.metadata() or {}
                    if metadata.get("key") != self.key:
                        continue
                    labels = json.loads(metadata.get("labels", "[]"))
                    table = handle.get_tensor("embeddings")
            except Exception:  # gone (another writer compacted) or unreadable: leave it to that writer / skip
                continue
            merged_names.append(path.name)
            for row, label in enumerate(labels):
                merged.setdefault(label, table[row])
        if len(merged_names) < 2:
            return
        labels = list(merged)
        name = self._write_shard(labels, torch.stack([merged[label] for label in labels]).contiguous())
        for old in merged_names:
            with contextlib.suppress(OSError):
                os.unlink(self.folder / old)
        self._index = {label: (name, row) for row, label in enumerate(labels)}
        self._scanned = {name}
        now = time.time()
        for temporary in self.folder.glob(".tmp-*"):  # left by killed writers
            with contextlib.suppress(OSError):
                if now - temporary.stat().st_mtime > _STALE_TEMPORARY_S:
                    temporary.unlink()
        logger.debug("label cache: merged %d shards (%d labels) into %s", len(merged_names), len(labels), name)

