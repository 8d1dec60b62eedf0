"""One entry point for every dataset reader: ``load_dataset(DatasetConfig(kind, root, split, ...))``.

Readers turn a dataset *as users download it* into a :class:`adds.data.base.MultiLabelDataset`; nothing is
fetched at run time and no image is decoded at construction (MS-COCO and NUS-WIDE have 100k+ images):

==========  ======================================================  ==========================================
kind        ``root``                                                reader
==========  ======================================================  ==========================================
coco        the MS-COCO 2014 root (``annotations/``, ``train2014/``)  :func:`adds.data.coco.read_coco`
nuswide     the NUS-WIDE release root (``ImageList/``, ...)          :func:`adds.data.nuswide.read_nuswide`
imagenet    the ImageNet root (``train/``, ``val/`` of wnid folders)  :func:`adds.data.imagenet.read_imagenet`
manifest    a ``.csv`` / ``.jsonl`` file of (image, labels)          :func:`adds.data.manifest.read_manifest`
==========  ======================================================  ==========================================

The on-disk layouts are documented in ``docs/datasets.md``. This module also holds the two pieces of plumbing
every reader shares: :func:`keep_existing` (the cheap ``os.path.exists`` pass that skips missing files and logs
how many) and :func:`resource_lines` (package data files under ``adds/resources``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources

from torch import Tensor

from adds.data.base import MultiLabelDataset, Record

__all__ = ["DatasetConfig", "load_dataset", "DATASET_KINDS", "keep_existing", "resource_lines", "resource_table"]

logger = logging.getLogger(__name__)

#: valid ``split`` values per ``kind`` (``manifest`` ignores the split).
DATASET_KINDS: dict[str, tuple[str, ...]] = {
    "coco": ("train", "val"),
    "nuswide": ("train", "test"),
    "imagenet": ("train", "val"),
    "manifest": (),
}

_EXAMPLES_SHOWN = 5


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset to read and how.

    Attributes:
        kind: ``"coco"`` | ``"nuswide"`` | ``"imagenet"`` | ``"manifest"``.
        root: dataset root directory; for ``"manifest"`` the ``.csv`` / ``.jsonl`` file itself.
        split: coco ``"train"`` | ``"val"`` (2014); nuswide ``"train"`` | ``"test"``; imagenet ``"train"`` |
            ``"val"``; ignored for manifests.
        labels: label-set variant. nuswide: ``"seen925"`` (default for train), ``"unseen81"`` (default for test,
            ZSL) or ``"all1006"`` (GZSL: 925 seen then 81 unseen, the BiAM/MKT order). imagenet: ``"1k"``
            (default) or a class-list file (e.g. written by :func:`adds.data.imagenet.build_imagenet21k_subset`).
            manifest: optional vocabulary file (one label per line) fixing the label order. coco: unused.
        require_positive: keep only images with at least one positive label (the "filtered" variant some papers
            evaluate NUS-WIDE on; reported separately, the dataset name gets a ``-filtered`` suffix).
        limit: keep only the first ``limit`` usable records (debugging).
    """

    kind: str
    root: str
    split: str = "train"
    labels: str | None = None
    require_positive: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"unknown dataset kind {self.kind!r}; expected one of {sorted(DATASET_KINDS)}")
        splits = DATASET_KINDS[self.kind]
        if splits and self.split not in splits:
            raise ValueError(f"{self.kind} has no split {self.split!r}; expected one of {list(splits)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")


def load_dataset(config: DatasetConfig, transform: Callable[[Tensor], Tensor] | None = None) -> MultiLabelDataset:
    """Read the dataset ``config`` describes (no image is decoded; missing files are skipped and counted).

    Args:
        config: kind, root, split and label variant.
        transform: applied to each loaded ``(3, H, W)`` image, e.g. :class:`adds.data.base.SquashResize`.
    """
    if config.kind == "coco":
        from adds.data.coco import read_coco as reader
    elif config.kind == "nuswide":
        from adds.data.nuswide import read_nuswide as reader
    elif config.kind == "imagenet":
        from adds.data.imagenet import read_imagenet as reader
    else:
        from adds.data.manifest import read_manifest as reader
    dataset = reader(config)
    dataset.transform = transform
    logger.info("%s: %d images, %d labels (root %s)", dataset.name, len(dataset), len(dataset.vocabulary),
                dataset.root)
    return dataset


def keep_existing(
    records: Iterable[Record],
    root: str | os.PathLike | None,
    name: str,
    limit: int | None = None,
    require_positive: bool = False,
) -> list[Record]:
    """Records whose image file exists, in order; skipped files are counted and logged (never raised).

    Only ``os.path.exists`` is called: corrupt files are found later, when loading yields ``image=None``
    (see :func:`adds.data.base.collate_skip_failures`).

    Args:
        records: candidate records (paths absolute or relative to ``root``).
        root: directory that relative paths are resolved against.
        name: dataset name for the log line.
        limit: stop after this many usable records.
        require_positive: also drop records without a positive label (counted separately).
    """
    kept: list[Record] = []
    missing: list[str] = []
    unlabelled = 0
    base = None if root is None else os.fspath(root)
    for record in records:
        if limit is not None and len(kept) >= limit:
            break
        if require_positive and not record.positives:
            unlabelled += 1
            continue
        path = record.path if base is None or os.path.isabs(record.path) else os.path.join(base, record.path)
        if not os.path.exists(path):
            missing.append(path)
            continue
        kept.append(record)
    if missing:
        logger.warning("%s: skipped %d missing image file(s), e.g. %s", name, len(missing),
                       ", ".join(missing[:_EXAMPLES_SHOWN]))
    if unlabelled:
        logger.info("%s: dropped %d image(s) without a positive label (require_positive)", name, unlabelled)
    return kept


def resource_lines(filename: str) -> list[str]:
    """Non-empty lines of a package data file in ``adds/resources`` (e.g. ``"nuswide_concepts81.txt"``)."""
    text = resources.files("adds.resources").joinpath(filename).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def resource_table(filename: str) -> list[dict[str, str]]:
    """Rows of a tab-separated package data file with a header row, as dicts keyed by column name."""
    lines = resources.files("adds.resources").joinpath(filename).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        if not line.strip():
            continue
        cells = line.split("\t")
        cells = (cells + [""] * len(header))[: len(header)]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows
