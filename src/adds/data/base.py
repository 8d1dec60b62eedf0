"""The one dataset shape every reader produces: image files with label indices over a vocabulary.

Readers (MS-COCO, NUS-WIDE, ImageNet folders, CSV/JSONL manifests, the toy world) turn their on-disk format into
a list of :class:`Record` and a vocabulary; :class:`MultiLabelDataset` loads the images lazily. Labels are stored
sparsely (positive indices, plus optional "unknown" indices), so a 1.3M-image x 21k-label dataset costs a few
hundred MB, not a dense matrix.

Bad images never stop a job: ``__getitem__`` returns the item with ``image=None`` and the error message, and
:func:`collate_skip_failures` drops such items from the batch and reports them, so the caller can count and log
them by path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from adds.data.images import ImageLoadError, load_image

__all__ = ["Record", "MultiLabelDataset", "SquashResize", "collate_skip_failures", "dense_targets"]


@dataclass(frozen=True)
class Record:
    """One image: its file and its labels as indices into the dataset's vocabulary.

    Attributes:
        path: image file (absolute, or relative to the dataset's ``root``).
        positives: indices of labels present in the image.
        unknown: indices of labels whose ground truth is unknown (excluded from loss and metrics).
    """

    path: str
    positives: tuple[int, ...] = ()
    unknown: tuple[int, ...] = ()


class SquashResize:
    """Resize ``(3, H, W)`` to ``(3, size, size)`` without keeping the aspect ratio (ASL / ML-Decoder convention).

    Bicubic with antialiasing, clamped to [0, 1]. Multi-label training resizes rather than crops so that labelled
    objects near the border are not cut away; Pyramid-Forwarding then works from this size.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def __call__(self, image: Tensor) -> Tensor:
        if image.shape[-2:] == (self.size, self.size):
            return image
        resized = F.interpolate(image.unsqueeze(0), size=(self.size, self.size), mode="bicubic", antialias=True)
        return resized.squeeze(0).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"SquashResize({self.size})"


class MultiLabelDataset(Dataset):
    """Records over a vocabulary; images are loaded lazily with :func:`adds.data.images.load_image`.

    Args:
        records: the images and their labels.
        vocabulary: label words, index-aligned with ``Record.positives``.
        name: short name used in logs and cache manifests (e.g. ``"coco2014-val"``).
        root: directory that relative record paths are resolved against.
        transform: applied to the loaded ``(3, H, W)`` float image (e.g. :class:`SquashResize`).

    Items are dicts: ``index`` (int), ``path`` (str), ``image`` (``(3, H, W)`` tensor or ``None`` if the file
    could not be loaded), ``error`` (``None`` or the reason), ``target`` (``(C,)`` float 0/1), ``mask``
    (``(C,)`` bool, ``False`` for unknown entries).
    """

    def __init__(
        self,
        records: Sequence[Record],
        vocabulary: Sequence[str],
        name: str = "dataset",
        root: str | os.PathLike | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.records = list(records)
        self.vocabulary = list(vocabulary)
        self.name = name
        self.root = None if root is None else os.fspath(root)
        self.transform = transform
        size = len(self.vocabulary)
        for number, record in enumerate(self.records):
            bad = [i for i in (*record.positives, *record.unknown) if not 0 <= i < size]
            if bad:
                where = f"{name}: record #{number} ({record.path})"
                raise ValueError(f"{where} has label indices {bad} outside [0, {size})")

    def __len__(self) -> int:
        return len(self.records)

    def path(self, index: int) -> str:
        """Full path of record ``index``."""
        path = self.records[index].path
        return path if self.root is None or os.path.isabs(path) else os.path.join(self.root, path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        path = self.path(index)
        image, error = None, None
        try:
            image = load_image(path)
            if self.transform is not None:
                image = self.transform(image)
        except ImageLoadError as failure:
            error = failure.reason
        target, mask = dense_targets([record], len(self.vocabulary))
        return {"index": index, "path": path, "image": image, "error": error, "target": target[0], "mask": mask[0]}

    def targets(self, indices: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """Dense ``(N, C)`` targets and known-mask for ``indices`` (default: all records)."""
        chosen = self.records if indices is None else [self.records[i] for i in indices]
        return dense_targets(chosen, len(self.vocabulary))

    def fingerprint(self) -> str:
        """SHA-256 over vocabulary, paths and labels: identifies the dataset in cache manifests."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.vocabulary).encode())
        for record in self.records:
            digest.update(json.dumps([record.path, record.positives, record.unknown]).encode())
        return digest.hexdigest()


def dense_targets(records: Sequence[Record], num_labels: int) -> tuple[Tensor, Tensor]:
    """Records -> ``(N, C)`` float targets and ``(N, C)`` bool known-mask."""
    target = torch.zeros(len(records), num_labels)
    mask = torch.ones(len(records), num_labels, dtype=torch.bool)
    for row, record in enumerate(records):
        if record.positives:
            target[row, list(record.positives)] = 1.0
        if record.unknown:
            mask[row, list(record.unknown)] = False
    return target, mask


def collate_skip_failures(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the loadable items of a batch; ``failed`` lists ``(path, reason)`` of the others.

    Returns a dict with ``index`` (``(n,)`` long), ``path`` (list), ``image`` (``(n, 3, H, W)`` or ``None`` when
    every item failed), ``target`` / ``mask`` (``(n, C)``) and ``failed``.
    """
    good = [item for item in items if item["image"] is not None]
    failed = [(item["path"], item["error"]) for item in items if item["image"] is None]
    if not good:
        return {"index": torch.zeros(0, dtype=torch.long), "path": [], "image": None, "target": None, "mask": None,
                "failed": failed}
    return {
        "index": torch.tensor([item["index"] for item in good], dtype=torch.long),
        "path": [item["path"] for item in good],
        "image": torch.stack([item["image"] for item in good]),
        "target": torch.stack([item["target"] for item in good]),
        "mask": torch.stack([item["mask"] for item in good]),
        "failed": failed,
    }
