"""Frozen-feature cache: run the image tower (with Pyramid-Forwarding) once per image, store the tokens on disk.

ADDS keeps both CLIP towers frozen (paper, "Visual-Textual Embedding Alignment", Eq. 3), so the visual tokens an
image produces never change during training: only the DM-decoder and the shared classifier learn (Fig. 2). The
expensive part -- up to ``1 + 2^2 + 4^2`` tower calls per image with Pyramid-Forwarding (Table 7) -- is done once
by :func:`extract_features` and the 40 epochs of training (and every evaluation) read the stored tokens through
:class:`CachedFeatureDataset`. Label embeddings are cached per vocabulary the same way
(:func:`label_embedding_cache`).

On-disk layout (``out_dir``)::

    manifest.json          what was extracted: towers identity, pyramid levels, input size, dataset fingerprint,
                           vocabulary, tokens per image N, token dim D, dtype, shard list, and a ``key`` hashing it
    images.json            the dataset's record paths in dataset order (lets a subset dataset reuse the cache)
    shard-00000.bin        raw little-endian tokens of the stored records of dataset indices [0, shard_size),
                           shape (rows, N, D), read with ``np.memmap`` (no copy until indexed)
    shard-00000.json       sidecar: the manifest key, stored dataset indices, failed images, byte size, sha256
    labels-<hash>.safetensors   label embeddings of one vocabulary (see :func:`label_embedding_cache`)

A shard's data file is written to ``shard-XXXXX.bin.partial``, flushed and fsynced, renamed, and only then is its
sidecar written (to a temporary file, then renamed). A shard is complete exactly when its sidecar exists and
carries the current manifest key, so a killed run leaves either a complete shard or one that is redone on the next
run. :meth:`FeatureStore.open` refuses a cache with a missing sidecar (unfinished), a data file of the wrong size
(truncated) or, with ``verify="full"``, a wrong SHA-256 (corrupted), naming the shard file.

Sharding across ``torchrun`` ranks needs no process group: rank ``r`` of ``w`` extracts shards ``r, r + w, ...``;
every rank writes the same (deterministic) manifest, and the cache is complete once every shard's sidecar is there.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from adds import __version__
from adds.data.base import MultiLabelDataset, SquashResize, collate_skip_failures, dense_targets
from adds.pyramid import plan

if TYPE_CHECKING:
    from adds.model import ADDS

__all__ = [
    "FeatureCacheError",
    "ExtractConfig",
    "extract_features",
    "FeatureStore",
    "CachedFeatureDataset",
    "label_embedding_cache",
    "pending_shards",
    "dispose_cached_crops",
    "images_fingerprint",
    "MANIFEST_NAME",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
IMAGES_NAME = "images.json"
_FORMAT = "adds-feature-cache"
_SHARD_FORMAT = "adds-feature-shard"
_FORMAT_VERSION = 1
#: stored dtype name -> numpy dtype (explicitly little-endian, so a cache is portable between machines).
_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
#: tower properties that decide the features (the same ones a checkpoint is checked against in ``adds.model``).
_TOWER_KEYS = ("model", "aligned", "embed_dim", "token_dim", "image_size", "quick_gelu", "fingerprint")
_EXAMPLES_SHOWN = 5


class FeatureCacheError(RuntimeError):
    """A feature cache is corrupt, truncated, unfinished or does not fit the model / dataset; the message says which
    file and what is wrong."""


@dataclass(frozen=True)
class ExtractConfig:
    """How :func:`extract_features` runs.

    Attributes:
        input_size: images are squash-resized (:class:`~adds.data.base.SquashResize`) to this square size before
            Pyramid-Forwarding (paper: 224 / 448 / 640 / 1344; with a 224 px tower 448 gives levels 0 and 1).
        batch_size: images per tower batch (each image is ``crops`` tower inputs).
        num_workers: DataLoader worker processes that decode images.
        shard_size: dataset records per shard (the unit of resumption and of work split across ranks).
        dtype: stored dtype, ``"float16"`` (default, half the disk) or ``"float32"``.
        amp: on CUDA, run the towers under ``torch.autocast(dtype=float16)``; ignored on CPU.
    """

    input_size: int
    batch_size: int = 32
    num_workers: int = 0
    shard_size: int = 1024
    dtype: str = "float16"
    amp: bool = True

    def __post_init__(self) -> None:
        for name in ("input_size", "batch_size", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ExtractConfig.{name} must be a positive int, got {value!r}")
        if self.num_workers < 0:
            raise ValueError(f"ExtractConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"ExtractConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")


# -- identities and the manifest ---------------------------------------------------------------------------------
def images_fingerprint(dataset: MultiLabelDataset) -> str:
    """SHA-256 of the dataset's record paths in order (labels excluded): two datasets over the same images -- e.g.
    NUS-WIDE test with the 81 unseen labels (ZSL) and with all 1006 (GZSL) -- share one feature cache."""
    return hashlib.sha256(_images_json(dataset).encode("utf-8")).hexdigest()


def _images_json(dataset: MultiLabelDataset) -> str:
    return json.dumps([record.path for record in dataset.records], ensure_ascii=False)


def _tower_identity(model: ADDS) -> dict[str, Any]:
    identity = model.towers.identity()
    return {key: identity.get(key) for key in _TOWER_KEYS}


def _resolved_levels(model: ADDS, input_size: int) -> list[int]:
    levels = plan(input_size, input_size, model.towers.image_size, model.config.pyramid.levels)
    return [level.index for level in levels]


def _crop_levels(model: ADDS, input_size: int) -> list[int]:
    levels = plan(input_size, input_size, model.towers.image_size, model.config.pyramid.levels)
    return [level.index for level in levels for _ in level.crops]


def _settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest entries that decide the stored bytes; the manifest ``key`` hashes exactly these."""
    return {
        "format_version": manifest.get("format_version"),
        **{f"towers.{key}": manifest.get("towers", {}).get(key) for key in _TOWER_KEYS},
        "pyramid.levels": manifest.get("pyramid", {}).get("levels"),
        "pyramid.antialias": manifest.get("pyramid", {}).get("antialias"),
        "input_size": manifest.get("input_size"),
        "num_tokens": manifest.get("num_tokens"),
        "token_dim": manifest.get("token_dim"),
        "dtype": manifest.get("dtype"),
        "amp": manifest.get("amp"),
        "shard_size": manifest.get("shard_size"),
        "dataset.fingerprint": manifest.get("dataset", {}).get("fingerprint"),
        "dataset.num_records": manifest.get("dataset", {}).get("num_records"),
    }


def _key(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_settings(manifest), sort_keys=True).encode()).hexdigest()


def _shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def build_manifest(model: ADDS, dataset: MultiLabelDataset, config: ExtractConfig, amp: bool) -> dict[str, Any]:
    """The manifest :func:`extract_features` writes for these inputs (deterministic: every rank writes the same)."""
    towers = model.towers
    crop_levels = _crop_levels(model, config.input_size)
    count = len(dataset)
    shards = [
        {"name": _shard_name(number), "start": start, "stop": min(start + config.shard_size, count)}
        for number, start in enumerate(range(0, count, config.shard_size))
    ]
    manifest = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "adds_version": __version__,
        "towers": {**towers.identity()},
        "pyramid": {"levels": _resolved_levels(model, config.input_size), "antialias": model.config.pyramid.antialias},
        "input_size": config.input_size,
        "resize": "SquashResize (bicubic, antialias) to input_size x input_size",
        "crops": len(crop_levels),
        "crop_levels": crop_levels,
        "tokens_per_crop": towers.tokens_per_image,
        "num_tokens": len(crop_levels) * towers.tokens_per_image,
        "token_dim": towers.token_dim,
        "dtype": config.dtype,
        "amp": amp,
        "shard_size": config.shard_size,
        "dataset": {
            "name": dataset.name,
            "fingerprint": dataset.fingerprint(),
            "images_fingerprint": images_fingerprint(dataset),
            "num_records": count,
            "root": dataset.root,
        },
        "vocabulary": list(dataset.vocabulary),
        "shards": shards,
    }
    manifest["key"] = _key(manifest)
    return manifest


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file + ``os.replace`` (readers never see a partial file)."""
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeatureCacheError(f"{path} is missing ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FeatureCacheError(f"{path} is corrupt: not valid JSON ({error}) ({what})") from None


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise FeatureCacheError(f"{path} not found: {directory} is not a feature cache (create one with adds extract)")
    manifest = _read_json(path, "the feature-cache manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise FeatureCacheError(f"{path} is not an adds feature-cache manifest (no \"format\": \"{_FORMAT}\")")
    if manifest.get("format_version") != _FORMAT_VERSION:
        raise FeatureCacheError(
            f"{path} has format_version {manifest.get('format_version')}, this adds reads {_FORMAT_VERSION}; "
            "re-extract with --overwrite"
        )
    for key in ("key", "towers", "pyramid", "dataset", "shards", "num_tokens", "token_dim", "dtype", "vocabulary"):
        if key not in manifest:
            raise FeatureCacheError(f"{path} lacks the '{key}' entry")
    if manifest["dtype"] not in _DTYPES:
        raise FeatureCacheError(f"{path}: unknown dtype {manifest['dtype']!r}")
    if manifest["key"] != _key(manifest):
        raise FeatureCacheError(f"{path} has been edited or is corrupt: its 'key' does not match its settings")
    return manifest


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    before, after = _settings(old), _settings(new)
    return [f"{name}: cache has {before[name]!r}, requested {after[name]!r}" for name in after
            if before[name] != after[name]]


# -- shard sidecars ------------------------------------------------------------------------------------------------
def _sidecar(directory: Path, number: int) -> Path:
    return directory / f"{_shard_name(number)}.json"


def _data_file(directory: Path, number: int) -> Path:
    return directory / f"{_shard_name(number)}.bin"


def _shard_complete(directory: Path, number: int, key: str) -> bool:
    """True when shard ``number`` has a readable sidecar of this extraction and a data file of the recorded size."""
    try:
        side = json.loads(_sidecar(directory, number).read_text(encoding="utf-8"))
        return (isinstance(side, dict) and side.get("key") == key
                and os.path.getsize(_data_file(directory, number)) == side.get("bytes"))
    except (OSError, ValueError):
        return False


def _remove_shard(directory: Path, number: int) -> None:
    for path in (_sidecar(directory, number), _data_file(directory, number),
                 directory / f"{_shard_name(number)}.bin.partial"):
        path.unlink(missing_ok=True)


def pending_shards(directory: str | os.PathLike) -> list[str]:
    """Names of the shards of the cache in ``directory`` that are not finished yet (``[]`` when complete)."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    return [shard["name"] for number, shard in enumerate(manifest["shards"])
            if not _shard_complete(directory, number, manifest["key"])]


class _ShardWriter:
    """Appends token rows to ``shard-XXXXX.bin.partial`` while hashing them; :meth:`finish` commits the shard."""

    def __init__(self, directory: Path, number: int, start: int, stop: int, manifest: dict[str, Any]) -> None:
        self.directory, self.number, self.start, self.stop = directory, number, start, stop
        self.manifest = manifest
        self.dtype = _DTYPES[manifest["dtype"]]
        self.row_shape = (manifest["num_tokens"], manifest["token_dim"])
        _remove_shard(directory, number)
        self.partial = directory / f"{_shard_name(number)}.bin.partial"
        self.handle = open(self.partial, "wb")  # noqa: SIM115 - closed in finish()
        self.digest = hashlib.sha256()
        self.indices: list[int] = []
        self.failed: list[tuple[int, str, str]] = []
        self.bytes = 0

    def write(self, indices: Sequence[int], tokens: Tensor) -> None:
        """Append ``tokens`` ``(n, N, D)`` of dataset ``indices`` (ascending, following the previous ones)."""
        array = np.ascontiguousarray(tokens.numpy().astype(self.dtype, copy=False))  # (n, N, D)
        data = array.tobytes()
        self.handle.write(data)
        self.digest.update(data)
        self.bytes += len(data)
        self.indices.extend(int(i) for i in indices)

    def finish(self) -> None:
        """Flush, fsync and rename the data file, then write the sidecar atomically: the shard is now complete."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.partial, _data_file(self.directory, self.number))
        sidecar = {
            "format": _SHARD_FORMAT,
            "key": self.manifest["key"],
            "shard": self.number,
            "start": self.start,
            "stop": self.stop,
            "rows": len(self.indices),
            "row_shape": list(self.row_shape),
            "dtype": self.manifest["dtype"],
            "bytes": self.bytes,
            "sha256": self.digest.hexdigest(),
            "indices": self.indices,
            "failed": [list(item) for item in self.failed],
        }
        _write_atomic(_sidecar(self.directory, self.number), json.dumps(sidecar) + "\n")

    def abort(self) -> None:
        self.handle.close()


# -- extraction --------------------------------------------------------------------------------------------------
def extract_features(
    model: ADDS,
    dataset: MultiLabelDataset,
    out_dir: str | os.PathLike,
    config: ExtractConfig,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> FeatureStore | None:
    """Run ``model.forward_features`` (frozen towers + Pyramid-Forwarding) once per image and store the tokens.

    Resumable: shards already finished by an earlier run with the same settings are skipped, unfinished ones are
    redone. A cache in ``out_dir`` made with other settings (towers, pyramid, input size, dtype, shard size, dataset)
    is refused with :class:`FeatureCacheError` listing the differences, unless ``overwrite``.

    Args:
        model: the ADDS model whose towers and ``config.pyramid`` (levels, antialias) produce the tokens; it is put in
            eval mode for the extraction (no random crop disposal) and restored afterwards.
        dataset: the images; its own ``transform`` is ignored, each image is squash-resized to
            ``config.input_size``. Images that cannot be loaded are skipped and recorded as failed.
        out_dir: the cache directory (created).
        config: input size, batch size, workers, shard size, dtype.
        rank, world_size: this process's share: shards ``rank, rank + world_size, ...`` (``torchrun``'s ``RANK`` and
            ``WORLD_SIZE``); no process group is needed.
        progress: show a tqdm progress bar on stderr.
        overwrite: discard an incompatible existing cache (this rank's shards are redone in any case).

    Returns:
        The opened :class:`FeatureStore` when every shard of the cache is complete; ``None`` when shards of other
        ranks are still missing (only possible with ``world_size > 1``; open the cache once they are done).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} and world_size {world_size}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no records: nothing to extract")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    device = model.classifier.fc.weight.device
    amp = bool(config.amp and device.type == "cuda")
    manifest = build_manifest(model, dataset, config, amp)
    key = manifest["key"]
    shards = manifest["shards"]
    mine = list(range(rank, len(shards), world_size))

    existing_path = directory / MANIFEST_NAME
    if existing_path.exists():
        try:
            existing = _read_manifest(directory)
            diffs = [] if existing["key"] == key else _differences(existing, manifest) or ["manifest key differs"]
        except FeatureCacheError as error:
            diffs = [str(error)]
        if diffs and not overwrite:
            raise FeatureCacheError(
                f"{existing_path} describes a different extraction: " + "; ".join(diffs)
                + ". Use another output directory, or --overwrite (overwrite=True) to replace it."
            )
        if diffs:
            logger.warning("overwriting the feature cache in %s (%s)", directory, "; ".join(diffs))
    if overwrite:
        for number in mine:
            _remove_shard(directory, number)
        if rank == 0:  # shards beyond the new shard list belong to nobody any more
            for stale in directory.glob("shard-*"):
                number_text = stale.name[len("shard-"):].split(".")[0]
                if number_text.isdigit() and int(number_text) >= len(shards):
                    stale.unlink(missing_ok=True)
    _write_atomic(directory / IMAGES_NAME, _images_json(dataset) + "\n")
    _write_atomic(existing_path, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")

    pending = [number for number in mine if not _shard_complete(directory, number, key)]
    if len(pending) < len(mine):
        logger.info("%s: %d of this rank's %d shards already complete, skipped", directory, len(mine) - len(pending),
                    len(mine))
    if pending:
        _extract_shards(model, dataset, directory, manifest, config, pending, amp, progress)
    missing = pending_shards(directory)
    if missing:
        logger.info("%s: rank %d done; %d shard(s) of other ranks not finished yet (e.g. %s)", directory, rank,
                    len(missing), ", ".join(missing[:_EXAMPLES_SHOWN]))
        return None
    store = FeatureStore.open(directory, verify="size")
    if store.failed:
        examples = "; ".join(f"{path}: {reason}" for path, reason in store.failed[:_EXAMPLES_SHOWN])
        logger.warning("%s: %d image(s) could not be loaded and are not in the cache, e.g. %s", directory,
                       len(store.failed), examples)
    return store


def _extract_shards(
    model: ADDS,
    dataset: MultiLabelDataset,
    directory: Path,
    manifest: dict[str, Any],
    config: ExtractConfig,
    pending: list[int],
    amp: bool,
    progress: bool,
) -> None:
    from tqdm import tqdm

    shards = manifest["shards"]
    source = copy.copy(dataset)  # shallow: shares the records, only the transform differs
    source.transform = SquashResize(config.input_size)
    batches: list[list[int]] = []
    batch_shard: list[int] = []
    for number in pending:
        start, stop = shards[number]["start"], shards[number]["stop"]
        for first in range(start, stop, config.batch_size):
            batches.append(list(range(first, min(first + config.batch_size, stop))))
            batch_shard.append(number)
    device = model.classifier.fc.weight.device
    loader = DataLoader(source, batch_sampler=batches, num_workers=config.num_workers,
                        collate_fn=collate_skip_failures, pin_memory=device.type == "cuda")
    expected = (manifest["num_tokens"], manifest["token_dim"])
    total = sum(shards[number]["stop"] - shards[number]["start"] for number in pending)
    was_training = model.training
    model.eval()
    writer: _ShardWriter | None = None
    stored = failed = 0
    bar = tqdm(total=total, unit="img", desc=f"extract {directory.name}", disable=not progress, file=sys.stderr)
    try:
        for number, indices, batch in zip(batch_shard, batches, loader, strict=True):
            if writer is None or writer.number != number:
                if writer is not None:
                    writer.finish()
                writer = _ShardWriter(directory, number, shards[number]["start"], shards[number]["stop"], manifest)
            good = batch["index"].tolist()
            lost = sorted(set(indices) - set(good))  # failed items keep batch order, as in collate_skip_failures
            for index, (path, reason) in zip(lost, batch["failed"], strict=True):
                writer.failed.append((index, path, reason))
                logger.debug("skipping %s: %s", path, reason)
            failed += len(lost)
            if good:
                images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    tokens = model.forward_features(images)  # (B, N, D)
                if tuple(tokens.shape[1:]) != expected:
                    raise FeatureCacheError(f"tokens of shape {tuple(tokens.shape[1:])} do not match the manifest's "
                                            f"(num_tokens, token_dim) = {expected}")
                tokens = tokens.float().cpu()  # (B, N, D)
                bad = (~torch.isfinite(tokens)).flatten(1).any(dim=1)
                if manifest["dtype"] == "float16":
                    bad |= (tokens.abs() > torch.finfo(torch.float16).max).flatten(1).any(dim=1)
                if bad.any():
                    where = [batch["path"][i] for i in bad.nonzero().flatten().tolist()]
                    raise FeatureCacheError(f"non-finite tokens (or values outside {manifest['dtype']}) for "
                                            f"{where[:_EXAMPLES_SHOWN]}; check the weights, or use dtype float32")
                writer.write(good, tokens)
                stored += len(good)
            bar.update(len(indices))
        if writer is not None:
            writer.finish()
            writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.abort()  # the .partial file stays behind without a sidecar: the shard is redone next time
        model.train(was_training)
    logger.info("%s: extracted %d shard(s): %d image(s) stored, %d failed to load", directory, len(pending), stored,
                failed)


# -- reading -------------------------------------------------------------------------------------------------------
class FeatureStore:
    """A finished feature cache, opened read-only; tokens are read through memory maps.

    Rows are in storage order: shard by shard, inside a shard in dataset-index order; ``record_indices[row]`` is the
    dataset index of a row. Images that failed to load have no row and are listed in ``failed``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], sidecars: list[dict[str, Any]]) -> None:
        self.path = path
        self.manifest = manifest
        self.num_tokens: int = int(manifest["num_tokens"])
        self.token_dim: int = int(manifest["token_dim"])
        self.dtype: np.dtype = _DTYPES[manifest["dtype"]]
        self.vocabulary: list[str] = list(manifest["vocabulary"])
        self._rows = [int(side["rows"]) for side in sidecars]
        self._offsets = np.concatenate([[0], np.cumsum(self._rows)]).astype(np.int64)  # (shards + 1,)
        indices = [index for side in sidecars for index in side["indices"]]
        self.record_indices: Tensor = torch.tensor(indices, dtype=torch.long)  # (n,)
        self.failed: list[tuple[str, str]] = [(path, reason) for side in sidecars for _, path, reason in side["failed"]]
        self.failed_indices: list[int] = [index for side in sidecars for index, _, _ in side["failed"]]
        self._maps: dict[int, np.memmap] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, verify: str = "size") -> FeatureStore:
        """Open the cache in ``path`` after checking it.

        Args:
            path: the cache directory written by :func:`extract_features`.
            verify: ``"size"`` (fast: every shard finished, its sidecar consistent, its data file of the exact
                expected byte size -- detects unfinished and truncated shards) or ``"full"`` (also the SHA-256 of
                every data file -- detects corrupted bytes; reads the whole cache).

        Raises:
            FeatureCacheError: naming the file and the problem.
        """
        if verify not in ("size", "full"):
            raise ValueError(f"verify must be 'size' or 'full', got {verify!r}")
        directory = Path(path)
        manifest = _read_manifest(directory)
        images = directory / IMAGES_NAME
        if not images.is_file():
            raise FeatureCacheError(f"{images} is missing (the cache's list of image paths)")
        if verify == "full":
            digest = hashlib.sha256(images.read_text(encoding="utf-8").rstrip("\n").encode("utf-8")).hexdigest()
            if digest != manifest["dataset"]["images_fingerprint"]:
                raise FeatureCacheError(f"{images} is corrupt: its SHA-256 does not match the manifest")
        unfinished = [number for number in range(len(manifest["shards"])) if not _sidecar(directory, number).is_file()]
        if unfinished:
            raise FeatureCacheError(
                f"feature cache {directory} is unfinished: {len(unfinished)} of {len(manifest['shards'])} shard(s) "
                f"have no sidecar, e.g. {_sidecar(directory, unfinished[0])} (extraction was interrupted or other "
                "ranks are still running); re-run adds extract with the same arguments to finish it"
            )
        row_bytes = manifest["num_tokens"] * manifest["token_dim"] * _DTYPES[manifest["dtype"]].itemsize
        sidecars = [_check_shard(directory, number, shard, manifest, row_bytes, verify)
                    for number, shard in enumerate(manifest["shards"])]
        return cls(directory, manifest, sidecars)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, rows={len(self)}, failed={len(self.failed)}, "
                f"tokens=({self.num_tokens}, {self.token_dim}), dtype={self.dtype.name})")

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the memory maps instead of copying them
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            shape = (self._rows[shard], self.num_tokens, self.token_dim)
            self._maps[shard] = np.memmap(_data_file(self.path, shard), dtype=self.dtype, mode="r", shape=shape)
        return self._maps[shard]

    def tokens(self, rows: Sequence[int] | Tensor) -> Tensor:
        """Tokens of storage ``rows`` -> ``(len(rows), N, D)`` in the stored dtype (only those rows are read)."""
        rows_np = torch.as_tensor(rows, dtype=torch.long).reshape(-1).numpy()
        if rows_np.size and (rows_np.min() < 0 or rows_np.max() >= len(self)):
            raise IndexError(f"rows must be in [0, {len(self)}), got min {rows_np.min()} max {rows_np.max()}")
        out = np.empty((rows_np.size, self.num_tokens, self.token_dim), dtype=self.dtype)  # (n, N, D)
        shard_of = np.searchsorted(self._offsets, rows_np, side="right") - 1  # (n,)
        for shard in np.unique(shard_of):
            selected = shard_of == shard
            out[selected] = self._map(int(shard))[rows_np[selected] - self._offsets[shard]]
        return torch.from_numpy(out)

    def image_paths(self) -> list[str]:
        """Record paths of the extracted dataset, in dataset order (``images.json``)."""
        return _read_json(self.path / IMAGES_NAME, "the cache's list of image paths")

    def check_compatible(
        self,
        model: ADDS,
        dataset: MultiLabelDataset | None = None,
        input_size: int | None = None,
    ) -> None:
        """Raise :class:`FeatureCacheError` naming every mismatch between this cache and ``model`` (towers, pyramid
        levels for the cache's input size, antialiasing, token width), ``input_size`` and ``dataset`` (each of its
        images must be in the cache)."""
        manifest = self.manifest
        problems: list[str] = []
        tower = _tower_identity(model)
        for key in _TOWER_KEYS:
            if manifest["towers"].get(key) != tower[key]:
                problems.append(f"towers.{key}: cache {manifest['towers'].get(key)!r}, model {tower[key]!r}")
        if input_size is not None and input_size != manifest["input_size"]:
            problems.append(f"input_size: cache {manifest['input_size']}, requested {input_size}")
        try:
            levels = _resolved_levels(model, manifest["input_size"])
        except ValueError as error:
            levels = [f"invalid ({error})"]
        if levels != manifest["pyramid"]["levels"]:
            problems.append(f"pyramid levels: cache {manifest['pyramid']['levels']}, model {levels} "
                            f"at input size {manifest['input_size']}")
        if model.config.pyramid.antialias != manifest["pyramid"]["antialias"]:
            problems.append(f"pyramid antialias: cache {manifest['pyramid']['antialias']}, "
                            f"model {model.config.pyramid.antialias}")
        if dataset is not None:
            try:
                self.dataset_rows(dataset)
            except FeatureCacheError as error:
                problems.append(str(error))
        if problems:
            raise FeatureCacheError(f"feature cache {self.path} does not fit: " + "; ".join(problems))

    def dataset_rows(self, dataset: MultiLabelDataset) -> tuple[Tensor, Tensor]:
        """Map ``dataset`` onto this cache: ``(indices, rows)`` -- the dataset indices with stored tokens and their
        storage rows. Images that failed at extraction are left out; an image not in the cache at all is an error.

        A dataset over the same images in the same order (whatever its labels) maps index to index; another dataset
        (e.g. the "≥ 1 positive" subset of NUS-WIDE test) is matched by record path.
        """
        num_records = self.manifest["dataset"]["num_records"]
        row_of = np.full(num_records, -1, dtype=np.int64)  # cache index -> row
        row_of[self.record_indices.numpy()] = np.arange(len(self))
        if images_fingerprint(dataset) == self.manifest["dataset"]["images_fingerprint"]:
            cache_index = np.arange(num_records)
        else:
            position: dict[str, int] = {}
            for index, image in enumerate(self.image_paths()):
                position.setdefault(image, index)
            cache_index = np.array([position.get(record.path, -1) for record in dataset.records], dtype=np.int64)
            absent = np.flatnonzero(cache_index < 0)
            if absent.size:
                examples = [dataset.records[i].path for i in absent[:_EXAMPLES_SHOWN]]
                raise FeatureCacheError(
                    f"{absent.size} of the {len(dataset)} images of {dataset.name!r} are not in the feature cache "
                    f"{self.path} (extracted from {self.manifest['dataset']['name']!r}), e.g. {examples}; "
                    "extract features for this dataset"
                )
        rows = row_of[cache_index] if len(dataset) else np.zeros(0, dtype=np.int64)  # (len(dataset),)
        kept = np.flatnonzero(rows >= 0)
        return torch.from_numpy(kept), torch.from_numpy(rows[kept])


def _check_shard(
    directory: Path, number: int, shard: dict[str, Any], manifest: dict[str, Any], row_bytes: int, verify: str
) -> dict[str, Any]:
    side_path = _sidecar(directory, number)
    side = _read_json(side_path, f"sidecar of {shard['name']}")
    data_path = _data_file(directory, number)

    def fail(problem: str) -> FeatureCacheError:
        return FeatureCacheError(f"{problem}; re-run adds extract with the same arguments to redo this shard "
                                 f"(delete {side_path.name} first) or --overwrite to rebuild the cache")

    if not isinstance(side, dict) or side.get("format") != _SHARD_FORMAT:
        raise fail(f"{side_path} is not a feature-shard sidecar")
    if side.get("key") != manifest["key"]:
        raise fail(f"{side_path} belongs to another extraction (its key differs from {MANIFEST_NAME}'s)")
    try:
        indices, failed = [int(i) for i in side["indices"]], [int(f[0]) for f in side["failed"]]
        rows, size = int(side["rows"]), int(side["bytes"])
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise fail(f"{side_path} is corrupt ({error!r})") from None
    start, stop = shard["start"], shard["stop"]
    if (side.get("start"), side.get("stop")) != (start, stop) or sorted(indices + failed) != list(range(start, stop)):
        raise fail(f"{side_path} is corrupt: its stored and failed indices do not cover records [{start}, {stop})")
    if indices != sorted(indices) or rows != len(indices) or size != rows * row_bytes:
        raise fail(f"{side_path} is corrupt: {rows} rows, {len(indices)} indices and {size} bytes do not agree")
    if not data_path.is_file():
        raise fail(f"{data_path} is missing")
    actual = data_path.stat().st_size
    if actual != size:
        state = "truncated" if actual < size else "too long"
        raise fail(f"{data_path} is {state}: {actual} bytes, expected {size} ({rows} rows of {row_bytes} bytes)")
    if verify == "full":
        digest = hashlib.sha256()
        with open(data_path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        if digest.hexdigest() != side.get("sha256"):
            raise fail(f"{data_path} is corrupt: SHA-256 {digest.hexdigest()[:16]}... does not match the "
                       f"{str(side.get('sha256'))[:16]}... recorded in {side_path.name}")
    return side


class CachedFeatureDataset(Dataset):
    """Cached tokens with the targets of ``dataset``: what training and evaluation iterate instead of images.

    Args:
        store: an opened :class:`FeatureStore`.
        dataset: supplies labels (its vocabulary may differ from the one the cache was extracted with, e.g. ZSL vs
            GZSL label sets on the same images); every one of its images must be in the cache (see
            :meth:`FeatureStore.dataset_rows`). Images that failed at extraction are left out and listed in
            ``skipped``.

    Items: ``index`` (dataset index), ``tokens`` ``(N, D)`` in the stored dtype, ``target`` ``(C,)`` float,
    ``mask`` ``(C,)`` bool.
    """

    def __init__(self, store: FeatureStore, dataset: MultiLabelDataset) -> None:
        self.store = store
        self.dataset = dataset
        self.indices, self.rows = store.dataset_rows(dataset)  # (n,), (n,)
        kept = set(self.indices.tolist())
        self.skipped: list[int] = [index for index in range(len(dataset)) if index not in kept]
        if self.skipped:
            logger.info("%s: %d image(s) have no cached tokens (failed to load at extraction) and are left out",
                        dataset.name, len(self.skipped))

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = int(self.indices[item])
        tokens = self.store.tokens([int(self.rows[item])])[0]  # (N, D)
        target, mask = dense_targets([self.dataset.records[index]], len(self.dataset.vocabulary))
        return {"index": index, "tokens": tokens, "target": target[0], "mask": mask[0]}

    def __getitems__(self, items: Sequence[int]) -> list[dict[str, Any]]:
        """Batched ``__getitem__`` (used by ``DataLoader``): one memory-mapped read per shard for the whole batch."""
        items = list(items)
        tokens = self.store.tokens(self.rows[items])  # (b, N, D)
        indices = self.indices[items].tolist()
        target, mask = dense_targets([self.dataset.records[i] for i in indices], len(self.dataset.vocabulary))
        return [{"index": index, "tokens": tokens[j], "target": target[j], "mask": mask[j]}
                for j, index in enumerate(indices)]

    def targets(self) -> tuple[Tensor, Tensor]:
        """Dense ``(n, C)`` targets and known-mask of the items, in item order (for evaluation)."""
        return self.dataset.targets(self.indices.tolist())


# -- training-time helpers -----------------------------------------------------------------------------------------
def dispose_cached_crops(
    tokens: Tensor,
    crop_levels: Sequence[int],
    ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pyramid-Forwarding's random crop disposal applied to cached tokens (paper: "randomly disposing the image
    patches from the non-bottom levels"; same rule as :class:`~adds.pyramid.PyramidForwarding`).

    Args:
        tokens: ``(B, N, D)`` cached tokens, ``N = len(crop_levels) * T``.
        crop_levels: the pyramid level of each crop in order (``manifest["crop_levels"]``).
        ratio: fraction of the crops of levels ``>= 1`` dropped per image (``floor(ratio * m)``), in ``[0, 1)``.
        generator: optional CPU RNG.

    Returns:
        ``(B, N', D)``: level-0 crops kept, the same number of other crops kept for every image, crop order kept.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    batch, count, dim = tokens.shape
    crops = len(crop_levels)
    if crops == 0 or count % crops:
        raise ValueError(f"tokens of length {count} cannot be split into {crops} crops")
    bottom = sum(1 for level in crop_levels if level == 0)
    movable = crops - bottom
    keep = movable - math.floor(ratio * movable)
    if keep == movable:
        return tokens
    per_crop = tokens.view(batch, crops, count // crops, dim)  # (B, n, T, D)
    scores = torch.rand(batch, movable, generator=generator)  # (B, m)
    chosen = scores.argsort(dim=1)[:, :keep].sort(dim=1).values.to(tokens.device)  # (B, keep)
    rows = torch.arange(batch, device=tokens.device).unsqueeze(1)  # (B, 1)
    kept = per_crop[:, bottom:][rows, chosen]  # (B, keep, T, D)
    return torch.cat([per_crop[:, :bottom], kept], dim=1).reshape(batch, -1, dim)  # (B, (bottom + keep) * T, D)


def label_embedding_cache(model: ADDS, vocabulary: Sequence[str], out_dir: str | os.PathLike) -> Tensor:
    """Prompt-ensembled label embeddings ``(k, D)`` of ``vocabulary``, stored once per vocabulary on disk.

    The file ``labels-<hash>.safetensors`` in ``out_dir`` is keyed by the towers' identity, the prompt templates and
    the vocabulary (in order); a later call with the same three reloads it instead of running the text tower
    (21k ImageNet labels x 2 templates is minutes on a CPU). An unreadable file is recomputed with a warning.
    Returned float32 on the towers' device.
    """
    from safetensors.torch import load_file, save_file

    from adds.prompts import validate_labels

    labels = validate_labels(vocabulary)
    identity = _tower_identity(model)
    description = {"towers": identity, "templates": list(model.config.templates), "vocabulary": labels}
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    directory = Path(out_dir)
    path = directory / f"labels-{digest[:16]}.safetensors"
    device = next(model.towers.parameters()).device
    expected = (len(labels), model.towers.embed_dim)
    if path.is_file():
        try:
            embeddings = load_file(str(path))["embeddings"]
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                stored_key = (handle.metadata() or {}).get("key")
            if stored_key == digest and tuple(embeddings.shape) == expected:
                logger.debug("label embeddings of %d labels loaded from %s", len(labels), path)
                return embeddings.float().to(device)
            logger.warning("%s does not match its name (key or shape); recomputing", path)
        except Exception as error:  # safetensors raises its own types for truncated / corrupt files
            logger.warning("%s is unreadable (%s); recomputing", path, error)
    embeddings = model.encode_labels(labels).float().cpu().contiguous()  # (k, D)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    metadata = {"key": digest, "templates": json.dumps(list(model.config.templates)), "num_labels": str(len(labels)),
                "towers": json.dumps(identity)}
    save_file({"embeddings": embeddings}, str(temporary), metadata=metadata)
    os.replace(temporary, path)
    logger.info("label embeddings of %d labels cached in %s", len(labels), path)
    return embeddings.to(device)
