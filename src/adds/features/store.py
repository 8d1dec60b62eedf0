"""Reading a feature cache: :class:`FeatureStore` (checked on open, memory-mapped) and :class:`CachedFeatureDataset`
(cached tokens with a dataset's targets: what training and evaluation iterate instead of images).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from adds.data.base import MultiLabelDataset, dense_targets
from adds.features.manifest import (
    _DTYPES,
    _EXAMPLES_SHOWN,
    _SHARD_FORMAT,
    _TOWER_KEYS,
    IMAGES_NAME,
    MANIFEST_NAME,
    FeatureCacheError,
    _data_file,
    _read_json,
    _read_manifest,
    _resolved_levels,
    _sidecar,
    _tower_identity,
    images_fingerprint,
    manifest_views,
)

if TYPE_CHECKING:
    from adds.model import ADDS

__all__ = ["FeatureStore", "CachedFeatureDataset"]

logger = logging.getLogger(__name__)


# -- reading -------------------------------------------------------------------------------------------------------
class FeatureStore:
    """A finished feature cache, opened read-only; tokens are read through memory maps.

    Rows are in storage order: shard by shard, inside a shard in dataset-index order; ``record_indices[row]`` is the
    dataset index of a row. Images that failed to load have no row and are listed in ``failed``. A row holds
    ``views`` token sets (``ExtractConfig.views``; view 0 is the plain image), stored as ``(rows, V, N, D)``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], sidecars: list[dict[str, Any]]) -> None:
        self.path = path
        self.manifest = manifest
        self.num_tokens: int = int(manifest["num_tokens"])
        self.token_dim: int = int(manifest["token_dim"])
        self.dtype: np.dtype = _DTYPES[manifest["dtype"]]
        self.views: int = manifest_views(manifest)
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
        row_bytes = (manifest_views(manifest) * manifest["num_tokens"] * manifest["token_dim"]
                     * _DTYPES[manifest["dtype"]].itemsize)
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
            shape = (self._rows[shard], self.views, self.num_tokens, self.token_dim)  # (rows, V, N, D)
            self._maps[shard] = np.memmap(_data_file(self.path, shard), dtype=self.dtype, mode="r", shape=shape)
        return self._maps[shard]

    def tokens(self, rows: Sequence[int] | Tensor, views: Sequence[int] | Tensor | None = None) -> Tensor:
        """Tokens of storage ``rows`` -> ``(len(rows), N, D)`` in the stored dtype (only those rows are read).

        ``views`` picks the view of each row (default: view 0, the plain image); each must be in ``[0, views)``.
        """
        rows_np = torch.as_tensor(rows, dtype=torch.long).reshape(-1).numpy()
        if rows_np.size and (rows_np.min() < 0 or rows_np.max() >= len(self)):
            raise IndexError(f"rows must be in [0, {len(self)}), got min {rows_np.min()} max {rows_np.max()}")
        if views is None:
            views_np = np.zeros(rows_np.size, dtype=np.int64)
        else:
            views_np = torch.as_tensor(views, dtype=torch.long).reshape(-1).numpy()
            if views_np.size != rows_np.size:
                raise ValueError(f"got {views_np.size} views for {rows_np.size} rows")
            if views_np.size and (views_np.min() < 0 or views_np.max() >= self.views):
                raise IndexError(f"views must be in [0, {self.views}), got min {views_np.min()} max {views_np.max()}")
        out = np.empty((rows_np.size, self.num_tokens, self.token_dim), dtype=self.dtype)  # (n, N, D)
        shard_of = np.searchsorted(self._offsets, rows_np, side="right") - 1  # (n,)
        for shard in np.unique(shard_of):
            selected = shard_of == shard
            out[selected] = self._map(int(shard))[rows_np[selected] - self._offsets[shard], views_np[selected]]
        finite = np.isfinite(out.reshape(out.shape[0], -1)).all(axis=1)  # (n,)
        if not finite.all():
            raise self.corrupt_row_error(int(rows_np[np.flatnonzero(~finite)[0]]))
        return torch.from_numpy(out)

    def corrupt_row_error(self, row: int) -> FeatureCacheError:
        """The error for storage ``row`` holding NaN / infinite values: names the shard file and the image."""
        shard = int(np.searchsorted(self._offsets, row, side="right") - 1)
        index = int(self.record_indices[row])
        try:
            image = self.image_paths()[index]
        except (FeatureCacheError, IndexError):
            image = f"record {index}"
        return FeatureCacheError(
            f"{_data_file(self.path, shard)} is corrupt: row {row - int(self._offsets[shard])} (image {image}) holds "
            f"NaN or infinite values, which extraction never writes; check the cache with --verify-data and "
            f"re-extract it (adds extract --overwrite)")

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

        sample_views: with a multi-view cache (``ExtractConfig.views > 1``), draw one view per item each epoch
            (training); otherwise (the default, evaluation) every item reads view 0, the plain image.
        seed: the run's seed; epoch ``e``'s views are a function of ``(seed, e)`` only (:meth:`set_epoch`), so a
            resumed run reads the same views.

    Items: ``index`` (dataset index), ``tokens`` ``(N, D)`` in the stored dtype, ``target`` ``(C,)`` float,
    ``mask`` ``(C,)`` bool.
    """

    def __init__(self, store: FeatureStore, dataset: MultiLabelDataset, sample_views: bool = False,
                 seed: int = 0) -> None:
        self.store = store
        self.dataset = dataset
        self.sample_views = sample_views and store.views > 1
        self.seed = seed
        self.indices, self.rows = store.dataset_rows(dataset)  # (n,), (n,)
        self.views = torch.zeros(len(self.rows), dtype=torch.long)  # (n,) the view read for each item
        if self.sample_views:
            self.set_epoch(0)
        kept = set(self.indices.tolist())
        self.skipped: list[int] = [index for index in range(len(dataset)) if index not in kept]
        if self.skipped:
            logger.info("%s: %d image(s) have no cached tokens (failed to load at extraction) and are left out",
                        dataset.name, len(self.skipped))

    def __len__(self) -> int:
        return int(self.indices.numel())

    def set_epoch(self, epoch: int) -> None:
        """Draw the view of every item for ``epoch`` (uniform over the stored views, from ``(seed, epoch)``);
        without ``sample_views`` nothing changes (view 0)."""
        if not self.sample_views:
            return
        from adds.data.augment import augmentation_seed

        generator = torch.Generator().manual_seed(augmentation_seed(self.seed, epoch))
        self.views = torch.randint(self.store.views, (len(self.rows),), generator=generator)  # (n,)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = int(self.indices[item])
        tokens = self.store.tokens([int(self.rows[item])], [int(self.views[item])])[0]  # (N, D)
        target, mask = dense_targets([self.dataset.records[index]], len(self.dataset.vocabulary))
        return {"index": index, "tokens": tokens, "target": target[0], "mask": mask[0]}

    def __getitems__(self, items: Sequence[int]) -> list[dict[str, Any]]:
        """Batched ``__getitem__`` (used by ``DataLoader``): one memory-mapped read per shard for the whole batch."""
        items = list(items)
        tokens = self.store.tokens(self.rows[items], self.views[items])  # (b, N, D)
        indices = self.indices[items].tolist()
        target, mask = dense_targets([self.dataset.records[i] for i in indices], len(self.dataset.vocabulary))
        return [{"index": index, "tokens": tokens[j], "target": target[j], "mask": mask[j]}
                for j, index in enumerate(indices)]

    def targets(self) -> tuple[Tensor, Tensor]:
        """Dense ``(n, C)`` targets and known-mask of the items, in item order (for evaluation)."""
        return self.dataset.targets(self.indices.tolist())


