"""The feature cache's manifest and shard bookkeeping: identities, settings key, sidecar paths, atomic writes.

Layout and guarantees: :mod:`adds.features` (package docstring) and ``docs/feature-cache.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adds import __version__
from adds.data.augment import AugmentConfig
from adds.data.base import MultiLabelDataset
from adds.pyramid import plan

if TYPE_CHECKING:
    from adds.model import ADDS

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


def one_line(error: BaseException) -> str:
    """``error``'s message on one line. A :class:`FeatureCacheError` raised in a DataLoader worker comes back with
    the worker's traceback in its message ("Caught ... Original Traceback ..."); this keeps its last line only."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") and ": " in last else last
    return " ".join(text.split())


@dataclass(frozen=True)
class ExtractConfig:
    """How :func:`extract_features` runs.

    Attributes:
        input_size: images are squash-resized (:class:`~adds.data.base.SquashResize`) to this square size before
            Pyramid-Forwarding (paper: 224 / 448 / 640 / 1344; with a 224 px tower 448 gives levels 0 and 1).
        batch_size: images per tower batch (each image is ``crops x views`` tower inputs).
        num_workers: DataLoader worker processes that decode images.
        shard_size: dataset records per shard (the unit of resumption and of work split across ranks).
        dtype: stored dtype, ``"float16"`` (default, half the disk) or ``"float32"``.
        amp: on CUDA, run the towers under ``torch.autocast(dtype=float16)``; ignored on CPU.
        views: tokens stored per image: view 0 of the plain image, views 1..K-1 of augmented copies
            (:mod:`adds.data.augment`; training draws one view per image per epoch). ``1`` = no augmentation. The
            towers run ``views`` times per image and the cache is ``views`` times larger.
        augment: how views 1..K-1 are augmented (flip, RandAugment, Cutout) and their seed; ignored with one view.
    """

    input_size: int
    batch_size: int = 32
    num_workers: int = 0
    shard_size: int = 1024
    dtype: str = "float16"
    amp: bool = True
    views: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name in ("input_size", "batch_size", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ExtractConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 1:
            raise ValueError(f"ExtractConfig.views must be a positive int, got {self.views!r}")
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


def manifest_views(manifest: dict[str, Any]) -> int:
    """Views stored per image (1 for caches written before views existed)."""
    return int(manifest.get("views", 1))


def _settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest entries that decide the stored bytes; the manifest ``key`` hashes exactly these (the views and
    their augmentation only for a multi-view cache, so one-view caches keep the key they had before views)."""
    views = manifest_views(manifest)
    extra = {"views": views, "augment": manifest.get("augment")} if views > 1 else {}
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
        **extra,
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
        "views": config.views,
        "augment": config.augment.settings() if config.views > 1 else None,
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
    return [f"{name}: cache has {before.get(name)!r}, requested {after.get(name)!r}" for name in {**before, **after}
            if before.get(name) != after.get(name)]


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


