"""Writing a feature cache: :func:`extract_features` runs the frozen towers once per image, shard by shard.

A shard's data file is written to ``shard-XXXXX.bin.partial``, flushed and fsynced, renamed, and only then is its
sidecar written, so a killed run leaves either a complete shard or one that is redone on the next run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from adds.data.augment import AugmentedViews
from adds.data.base import MultiLabelDataset, SquashResize, collate_skip_failures
from adds.features.manifest import (
    _DTYPES,
    _EXAMPLES_SHOWN,
    _SHARD_FORMAT,
    IMAGES_NAME,
    MANIFEST_NAME,
    ExtractConfig,
    FeatureCacheError,
    _data_file,
    _differences,
    _images_json,
    _read_manifest,
    _remove_shard,
    _shard_complete,
    _shard_name,
    _sidecar,
    _write_atomic,
    build_manifest,
    pending_shards,
)
from adds.features.store import FeatureStore

if TYPE_CHECKING:
    from adds.model import ADDS

__all__ = ["extract_features"]

logger = logging.getLogger(__name__)


class _ShardWriter:
    """Appends token rows to ``shard-XXXXX.bin.partial`` while hashing them; :meth:`finish` commits the shard."""

    def __init__(self, directory: Path, number: int, start: int, stop: int, manifest: dict[str, Any]) -> None:
        self.directory, self.number, self.start, self.stop = directory, number, start, stop
        self.manifest = manifest
        self.dtype = _DTYPES[manifest["dtype"]]
        views = int(manifest.get("views", 1))
        self.row_shape = ((views,) if views > 1 else ()) + (manifest["num_tokens"], manifest["token_dim"])
        _remove_shard(directory, number)
        self.partial = directory / f"{_shard_name(number)}.bin.partial"
        self.handle = open(self.partial, "wb")  # noqa: SIM115 - closed in finish()
        self.digest = hashlib.sha256()
        self.indices: list[int] = []
        self.failed: list[tuple[int, str, str]] = []
        self.bytes = 0

    def write(self, indices: Sequence[int], tokens: Tensor) -> None:
        """Append ``tokens`` ``(n, N, D)`` (``(n, V, N, D)`` with views) of dataset ``indices`` (ascending, following
        the previous ones)."""
        array = np.ascontiguousarray(tokens.numpy().astype(self.dtype, copy=False))  # (n, [V,] N, D)
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
            ``config.input_size`` (and, with ``config.views > 1``, augmented into views 1..K-1,
            :class:`adds.data.augment.AugmentedViews`). Images that cannot be loaded are skipped and recorded as
            failed.
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
    views = config.views
    if views > 1:
        source = AugmentedViews(source, config.input_size, views, config.augment)  # image (V, 3, S, S)
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
                images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S) or (B, V, 3, S, S)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    tokens = model.forward_features(images.flatten(0, 1) if views > 1 else images)  # (B*V, N, D)
                if tuple(tokens.shape[1:]) != expected:
                    raise FeatureCacheError(f"tokens of shape {tuple(tokens.shape[1:])} do not match the manifest's "
                                            f"(num_tokens, token_dim) = {expected}")
                tokens = tokens.float().cpu()  # (B*V, N, D)
                if views > 1:
                    tokens = tokens.unflatten(0, (len(good), views))  # (B, V, N, D)
                bad = (~torch.isfinite(tokens)).flatten(1).any(dim=1)
                if manifest["dtype"] == "float16":
                    bad |= (tokens.abs() > torch.finfo(torch.float16).max).flatten(1).any(dim=1)  # (B,)
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


