"""Checking data before a run (``adds train --verify-data``, ``adds eval --verify-data``, ``data.verify: true``).

* :func:`verify_cache`: every shard finished, of its recorded size and SHA-256 (:meth:`FeatureStore.open` with
  ``verify="full"``), and every stored value finite; the first problem is a :class:`FeatureCacheError` naming the
  shard file (and, for non-finite values, the image).
* :func:`verify_images`: every image of a dataset decodes (:func:`adds.data.images.load_image`); returns the
  failures, which training and evaluation skip and count.

Without verification a run still detects a truncated or unfinished shard when it opens the cache, and non-finite
tokens when it reads them; verification finds a flipped byte (SHA-256) before hours of training, not after.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from adds.data.base import MultiLabelDataset
from adds.features.store import FeatureStore

__all__ = ["verify_cache", "verify_images"]

logger = logging.getLogger(__name__)

_ROWS_PER_READ = 256


def verify_cache(path: str | os.PathLike) -> FeatureStore:
    """Open the cache in ``path`` with full checks (sizes, checksums, finite values of every view); returns the
    opened store."""
    store = FeatureStore.open(Path(path), verify="full")
    for first in range(0, len(store), _ROWS_PER_READ):
        rows = np.arange(first, min(first + _ROWS_PER_READ, len(store)))
        for view in range(store.views):
            store.tokens(rows, np.full(rows.size, view))  # raises FeatureCacheError naming the shard and image
    logger.info("verified feature cache %s: %d rows x %d view(s), sizes, SHA-256 and values OK", store.path,
                len(store), store.views)
    return store


def verify_images(dataset: MultiLabelDataset) -> list[tuple[str, str]]:
    """``(path, reason)`` of every image of ``dataset`` that cannot be decoded (logged; runs skip and count them)."""
    from adds.data.images import ImageLoadError, load_image

    failures: list[tuple[str, str]] = []
    for index in range(len(dataset)):
        path = dataset.path(index)
        try:
            load_image(path)
        except ImageLoadError as error:  # what the run would skip and count
            failures.append((path, error.reason))
    if failures:
        logger.warning("%s: %d of %d image(s) cannot be decoded and will be skipped, e.g. %s", dataset.name,
                       len(failures), len(dataset), "; ".join(f"{p}: {r}" for p, r in failures[:5]))
    else:
        logger.info("verified %s: all %d images decode", dataset.name, len(dataset))
    return failures
