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
                           shape (rows, N, D) -- (rows, K, N, D) with ``ExtractConfig.views = K`` augmented views,
                           view 0 the plain image -- read with ``np.memmap`` (no copy until indexed)
    shard-00000.json       sidecar: the manifest key, stored dataset indices, failed images, byte size, sha256
    labels-<hash>.safetensors   label embeddings of one vocabulary (see :func:`label_embedding_cache`)

A shard's data file is written to ``shard-XXXXX.bin.partial``, flushed and fsynced, renamed, and only then is its
sidecar written (to a temporary file, then renamed). A shard is complete exactly when its sidecar exists and
carries the current manifest key, so a killed run leaves either a complete shard or one that is redone on the next
run. :meth:`FeatureStore.open` refuses a cache with a missing sidecar (unfinished), a data file of the wrong size
(truncated) or, with ``verify="full"``, a wrong SHA-256 (corrupted), naming the shard file.

Sharding across ``torchrun`` ranks needs no process group: rank ``r`` of ``w`` extracts shards ``r, r + w, ...``;
every rank writes the same (deterministic) manifest, and the cache is complete once every shard's sidecar is there.

Augmentation with the cache's speed: K views per image are extracted once (:mod:`adds.data.augment`: flip,
RandAugment, Cutout, seeded per image and view) and :class:`CachedFeatureDataset` with ``sample_views=True`` reads
one view per image per epoch, drawn from ``(seed, epoch)``.

Modules: :mod:`~adds.features.manifest` (identities, settings, bookkeeping), :mod:`~adds.features.writer`
(extraction), :mod:`~adds.features.store` (reading), :mod:`~adds.features.verification` (``--verify-data``),
:mod:`~adds.features.disposal` (crop disposal in training), :mod:`~adds.features.labels` (label embeddings).
"""

from adds.features.disposal import dispose_cached_crops
from adds.features.labels import label_embedding_cache
from adds.features.manifest import (
    MANIFEST_NAME,
    ExtractConfig,
    FeatureCacheError,
    build_manifest,
    images_fingerprint,
    one_line,
    pending_shards,
)
from adds.features.store import CachedFeatureDataset, FeatureStore
from adds.features.verification import verify_cache, verify_images
from adds.features.writer import extract_features

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
    "build_manifest",
    "MANIFEST_NAME",
    "verify_cache",
    "verify_images",
    "one_line",
]
